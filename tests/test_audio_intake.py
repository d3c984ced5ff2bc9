"""Audio intake limits, unit-tested on `media.audio` (the same functions the API and the worker call)."""

from __future__ import annotations

import pytest

from contract.errors import InvalidAudio
from media.audio import decode, probe
from tests.audio import spoken


def test_a_file_declared_longer_than_the_cap_is_refused_from_its_header() -> None:
    with pytest.raises(InvalidAudio) as caught:
        probe(spoken("fox"), max_seconds=1.0)
    assert caught.value.code == "audio_too_long" and "MAX_AUDIO_SECONDS" in str(caught.value)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg"])
def test_decoding_stops_at_the_cap(fmt: str) -> None:
    with pytest.raises(InvalidAudio) as caught:
        decode(spoken("report", fmt), max_seconds=1.0, time_limit=30)
    assert caught.value.code == "audio_too_long"


def test_decoding_gives_16k_mono_float32() -> None:
    pcm = decode(spoken("fox", "flac"), max_seconds=60, time_limit=30)
    assert pcm.dtype.name == "float32" and pcm.ndim == 1
    assert 2.0 < pcm.size / 16_000 < 5.0
    assert 0.01 < float(abs(pcm).max()) <= 1.0
