"""The batching LLM engine on its own (no Celery, no Redis): same text as before, sequences that join and
leave, and every way a generation can be stopped."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from llama_cpp import Llama, StoppingCriteriaList

from contract.catalog import CATALOG
from contract.errors import ContextOverflow
from contract.generation import ChatMessage, GenerationParams
from workers.cores import SHARE, CoreShare
from workers.llm import GEMMA_START_OF_TURN, Generation, LlmEngine, Prompt
from workers.weights import locate

ROOT = Path(__file__).resolve().parents[1]
GEMMA = locate(CATALOG["gemma-3-270m"], ROOT / "var" / "models")
STORY = Prompt("Once upon a time, in a small village by the sea,", (), add_bos=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[LlmEngine]:
    engine = LlmEngine("gemma-3-270m", GEMMA, n_ctx=1024, n_threads=2, n_gpu_layers=0, n_batch=512, parallel=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference() -> Iterator[Llama]:
    """llama-cpp-python's high-level `Llama`, called as speechq's engine called it before batching."""
    llm = Llama(model_path=str(GEMMA), n_ctx=1024, n_threads=2, n_gpu_layers=0, n_batch=512, verbose=False)
    yield llm
    llm.close()


def reference_text(llm: Llama, prompt: Prompt, params: GenerationParams) -> str:
    # No prefix reuse from the previous call: each generation starts clean, as in a slot.
    llm.reset()  # type: ignore[no-untyped-call]  # llama_cpp leaves reset() unannotated
    tokens = llm.tokenize(prompt.text.encode(), add_bos=prompt.add_bos, special=True)
    [turn] = llm.tokenize(GEMMA_START_OF_TURN.encode(), add_bos=False, special=True)
    stopping = StoppingCriteriaList([lambda ids, _logits: ids[-1] == turn]) if prompt.gemma_turns else None
    chunks = llm.create_completion(
        tokens,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        typical_p=params.typical_p,
        repeat_penalty=params.repeat_penalty,
        stop=[*prompt.stop, *params.stop] or None,
        seed=params.seed,
        stopping_criteria=stopping,
        stream=True,
    )
    assert not isinstance(chunks, dict), "stream=True yields chunks, not one completion"
    return "".join(chunk["choices"][0]["text"] for chunk in chunks)


@pytest.mark.parametrize(
    ("prompt", "params"),
    [
        (STORY, GenerationParams(temperature=0.0, max_tokens=96)),
        (STORY, GenerationParams(temperature=0.0, max_tokens=96, repeat_penalty=1.0)),
        (Prompt("Fruits: apple, banana,", (), add_bos=True), GenerationParams(temperature=0.0, stop=["\n", "grape"])),
        (STORY, GenerationParams(temperature=0.8, max_tokens=64, seed=42)),
        (None, GenerationParams(temperature=0.0, max_tokens=64)),
    ],
    ids=["greedy-default-penalty", "greedy-no-penalty", "stop-strings", "seeded-sampling", "gemma-turns"],
)
def test_one_generation_matches_the_high_level_api(
    engine: LlmEngine, reference: Llama, prompt: Prompt | None, params: GenerationParams
) -> None:
    prompt = prompt or engine.chat_prompt([ChatMessage(role="user", content="Name three colours.")])
    deltas: list[str] = []
    generation = engine.generate(prompt, params, deltas.append)
    expected = reference_text(reference, prompt, params)
    assert generation.text == "".join(deltas) == expected
    assert generation.finish_reason == ("length" if generation.completion_tokens == params.max_tokens else "stop")


Finished = dict[str, Generation | BaseException]


def generate_in_thread(
    engine: LlmEngine, prompt: Prompt, params: GenerationParams, log: list[tuple[int, float]], n: int
) -> tuple[threading.Thread, Finished]:
    result: Finished = {}

    def on_text(_: str) -> None:
        log.append((n, time.monotonic()))

    def body() -> None:
        try:
            result["value"] = engine.generate(prompt, params, on_text)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, which asserts on it
            result["value"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    return thread, result


def test_four_sequences_decode_together(engine: LlmEngine) -> None:
    params = GenerationParams(temperature=0.9, seed=3, max_tokens=48)
    log: list[tuple[int, float]] = []
    steps = engine._scheduler.steps
    runs = [generate_in_thread(engine, STORY, params.model_copy(update={"seed": n}), log, n) for n in range(4)]
    for thread, _ in runs:
        thread.join(60)
    generations = [result["value"] for _, result in runs]
    assert all(isinstance(g, Generation) for g in generations)
    tokens = sum(g.completion_tokens for g in generations if isinstance(g, Generation))
    # Four sequences took about as many decode steps as the longest one, not the sum of all four.
    assert engine._scheduler.steps - steps < tokens / 2
    first_of = {n: min(t for m, t in log if m == n) for n in range(4)}
    last_of = {n: max(t for m, t in log if m == n) for n in range(4)}
    assert max(first_of.values()) < min(last_of.values())


def test_a_sequence_that_raises_leaves_the_batch_and_the_others_finish(engine: LlmEngine) -> None:
    params = GenerationParams(temperature=0.9, max_tokens=64)
    others = [generate_in_thread(engine, STORY, params.model_copy(update={"seed": n}), [], n) for n in range(3)]
    seen: list[str] = []

    def hang_up(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        engine.generate(STORY, params, hang_up)
    for thread, _ in others:
        thread.join(60)
    results = [result["value"] for _, result in others]
    assert all(isinstance(g, Generation) and g.completion_tokens == 64 for g in results), results
    assert wait_for(lambda: engine._scheduler.active == 0), "the stopped sequence left its slot"


def test_a_check_that_raises_stops_a_generation_that_emits_nothing(engine: LlmEngine) -> None:
    calls = 0

    def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):
        engine.generate(STORY, GenerationParams(temperature=0.0, max_tokens=512), lambda _: None, cancelled, 0.05)
    assert calls == 1
    assert wait_for(lambda: engine._scheduler.active == 0)


def test_a_prompt_longer_than_a_slot_is_refused(engine: LlmEngine) -> None:
    with pytest.raises(ContextOverflow, match="1024 tokens per sequence"):
        engine.generate(Prompt("word " * 1200, (), add_bos=True), GenerationParams(max_tokens=8), lambda _: None)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_unset_threads_follow_what_else_runs_in_the_worker() -> None:
    """LLM_N_THREADS unset: llama.cpp decodes on every core while it runs alone, on half while a transcription
    or synthesis runs in the same worker (`workers/cores.py`), and the text is the same either way."""
    share = CoreShare(4)
    assert share.llm_threads() == 4
    with share.other_engine():
        assert share.llm_threads() == 2
        with share.other_engine():
            assert share.llm_threads() == 2
    assert share.llm_threads() == 4 and CoreShare(1).llm_threads() == 1

    engine = LlmEngine("gemma-3-270m", GEMMA, n_ctx=512, n_threads=None, n_gpu_layers=0, n_batch=512, parallel=1)
    try:
        params = GenerationParams(temperature=0.0, max_tokens=16)
        alone = engine.generate(STORY, params, lambda _: None)
        assert engine._context.threads == SHARE.cores
        with SHARE.other_engine():
            beside = engine.generate(STORY, params, lambda _: None)
            assert engine._context.threads == max(1, SHARE.cores // 2)
        assert beside.text == alone.text
        engine.generate(STORY, params, lambda _: None)
        assert engine._context.threads == SHARE.cores
    finally:
        engine.close()

    fixed = LlmEngine("gemma-3-270m", GEMMA, n_ctx=512, n_threads=1, n_gpu_layers=0, n_batch=512, parallel=1)
    try:
        fixed.generate(STORY, GenerationParams(temperature=0.0, max_tokens=4), lambda _: None)
        assert fixed._context.threads == 1, "LLM_N_THREADS fixes them"
    finally:
        fixed.close()
