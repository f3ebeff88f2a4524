# Two entry points for a fresh machine: `make demo` (set up, then the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is installed first and pinned: anything that lets pip choose torch pulls CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,test,ingest]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raytt demo --out runs/demo

# Each test has its own 10-minute limit (pytest-timeout); `timeout` bounds the whole suite as well.
test: $(STAMP)
	timeout --kill-after=60 60m $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/build_scale.py
	$(BIN)/python bench/eval_scale.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/mining.py
	$(BIN)/python bench/mining_quality.py
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
