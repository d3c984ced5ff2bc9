"""What the default sampling chain costs against greedy, on the same engine, in the same run.

Two measures, each a median over alternating runs:
- per generated token, end to end in speechq's engine (decode + sampling + text): the seed routes'
  defaults (temperature 0.7, top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.1) ÷ greedy with no penalty;
- per sampling call alone, on one set of logits (what a GPU, where decoding is ~20× faster, would see),
  for speechq's sampler and for llama.cpp's own chain with its penalties sampler (the old engine's).

    python -m bench.sampling [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.harness import median
from contract.generation import GenerationParams
from workers.llm import LlmEngine, Prompt

PROMPT = Prompt("Once upon a time, in a small village by the sea,", (), add_bos=True)
DEFAULTS = GenerationParams(temperature=0.7, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.1, seed=1)
GREEDY = GenerationParams(temperature=0.0, repeat_penalty=1.0)


def per_token(engine: LlmEngine, params: GenerationParams, tokens: int) -> float:
    generation = engine.generate(PROMPT, params.model_copy(update={"max_tokens": tokens}), lambda _: None)
    return generation.seconds / max(1, generation.completion_tokens)


def per_sample(engine: LlmEngine, params: GenerationParams, *, native_penalties: bool, calls: int = 200) -> float:
    """Seconds per sampling call on the logits of one decoded prompt, with a 64-token penalty window."""
    from llama_cpp import llama_cpp as native

    from workers.llm_sampling import SequenceSampler

    context, model = engine._context, engine._model
    tokens = model.tokenize(PROMPT.text.encode(), add_bos=True, special=True)
    context.clear()
    for pos, token in enumerate(tokens):
        index = context.add(token, pos, 0, pos == len(tokens) - 1)
    assert context.decode() == 0
    sampler = SequenceSampler(params, model.n_vocab)
    if native_penalties:  # llama.cpp's penalties sampler first in the chain, as `Llama` builds it
        chain = native.llama_sampler_chain_init(native.llama_sampler_chain_default_params())
        native.llama_sampler_chain_add(
            chain, native.llama_sampler_init_penalties(model.n_vocab, 64, params.repeat_penalty, 0.0, 0.0)
        )
        native.llama_sampler_chain_add(chain, sampler.chain)
        sampler.chain, sampler.penalties.off = chain, True
    for token in range(1000, 1064):  # a full window of history
        native.llama_sampler_accept(sampler.chain, token)
        sampler.penalties.accept(token)
    started = time.perf_counter()
    for _ in range(calls):
        sampler.sample(context.ctx, index, context.logits(index))
    seconds = (time.perf_counter() - started) / calls
    sampler.close()
    context.forget(0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    from contract.catalog import CATALOG
    from workers.weights import locate

    path = locate(CATALOG["gemma-3-270m"], Path("var/models"))
    engine = LlmEngine("gemma-3-270m", path, n_ctx=2048, n_threads=2, n_gpu_layers=0, n_batch=512, parallel=1)
    per_token(engine, GREEDY, 8)  # warm-up
    greedy, defaults = [], []
    sample_greedy, sample_defaults, sample_native = [], [], []
    for _ in range(args.runs):
        greedy.append(per_token(engine, GREEDY, args.tokens))
        defaults.append(per_token(engine, DEFAULTS, args.tokens))
        sample_greedy.append(per_sample(engine, GREEDY, native_penalties=False))
        sample_defaults.append(per_sample(engine, DEFAULTS, native_penalties=False))
        sample_native.append(per_sample(engine, DEFAULTS, native_penalties=True))
    engine.close()

    g, d = median(greedy), median(defaults)
    print(f"gemma-3-270m Q4_K_M (262,144-token vocabulary), 2 threads, median of {args.runs} alternating runs")
    print("| sampling | ms per generated token | ms per sampling call |")
    print("| --- | ---: | ---: |")
    print(f"| greedy, no penalty | {g * 1000:.2f} | {median(sample_greedy) * 1000:.3f} |")
    print(f"| seed defaults, speechq's penalties | {d * 1000:.2f} | {median(sample_defaults) * 1000:.3f} |")
    print(f"| seed defaults, llama.cpp's penalties sampler | | {median(sample_native) * 1000:.3f} |")
    print(f"| cost of the defaults (per token ÷ greedy) | **{d / g:.3f}** | |")


if __name__ == "__main__":
    main()
