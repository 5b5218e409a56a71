# Two commands for a fresh machine (see README):
#   make book   set up .venv, execute every chapter at the default `tiny` preset, build the HTML book
#   make test   set up .venv, run the tests (pytest, including every notebook at the `smoke` preset)
PYTHON ?= python3
VENV ?= .venv
PRESET ?= tiny
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export WANDB_MODE := disabled

.PHONY: book test setup bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the pinned CPU wheel, never the CUDA build a bare `torch` would pull
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

book: $(STAMP)
	$(PY) -m universality_lib book --preset $(PRESET) --out build

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_mamba.py

clean:
	rm -rf build _build
