# SPIRAL: `make demo` and `make test` work on a fresh clone (they create .venv and install into it).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned: this version installs as a CPU build; a bare `torch` pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,diffusers,ray,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/spiral demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check spiral tests benchmarks

bench: install
	$(BIN)/python benchmarks/planner_latency.py
	$(BIN)/python benchmarks/render_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
