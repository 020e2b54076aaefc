# SPIRAL: `make demo` and `make test` work on a fresh clone (they create .venv and install into it).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned: this version installs as a CPU build; a bare `torch` pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean llama-cpp

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# core: what `make demo` needs (the embedded default); full: every backend and test tool
$(CORE): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $(CORE)

$(STAMP): $(CORE)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,diffusers,ray,bench,text,vlm]"
	touch $(STAMP)

install: $(STAMP)

# llama-cpp-python: the OpenAI-compatible server that tests/test_llm_agents.py runs on loopback. It builds from
# source (~10 CPU-minutes); scripts/llama_cpp.sh fetches its sdist (whose GGUF converter the tests also use) and
# builds the wheel once into .cache/ (git-ignored), mirrored to ~/.cache/spiral-video for fresh clones (CI).
LLAMA_CPP := llama-cpp-python[server]==0.3.36
LLAMA_STAMP := $(VENV)/.llama-cpp-0.3.36

$(LLAMA_STAMP): $(STAMP) scripts/llama_cpp.sh
	PIP=$(BIN)/pip bash scripts/llama_cpp.sh
	$(BIN)/pip install -q -c constraints.txt --find-links $${SPIRAL_CACHE:-.cache}/wheels "$(LLAMA_CPP)" -e ".[api]"
	touch $(LLAMA_STAMP)

llama-cpp: $(LLAMA_STAMP)

demo: $(CORE)
	$(BIN)/spiral demo

# -rs lists every skip with its reason (under CI a skip fails: tests/conftest.py); --durations shows the slowest tests
test: install llama-cpp
	$(BIN)/ruff check spiral tests benchmarks docs
	$(BIN)/python -m pytest -q -rs --durations=25

lint: install
	$(BIN)/ruff check spiral tests benchmarks docs

bench: install
	$(BIN)/python benchmarks/planner_latency.py
	$(BIN)/python benchmarks/render_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
