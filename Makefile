# Two entry points for a fresh machine: `make demo` (set up, then the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := raytt tests bench jobs

.PHONY: setup demo test test-fast lint docs bench clean

setup: $(STAMP)

# torch is installed first and pinned: anything that lets pip choose torch pulls CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,test,ingest,text,lint,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raytt demo --out runs/demo

# CI runs this: the style gate, the docs (strict), then every test. Each test has its own 10-minute
# limit (pytest-timeout); `timeout` bounds the whole suite as well.
test: lint docs
	timeout --kill-after=60 60m $(BIN)/python -m pytest -q

# The edit-test loop: the unit tier (no Ray cluster, no Train/Tune run, no job), about two minutes on 2 cores.
test-fast: $(STAMP)
	timeout --kill-after=30 15m $(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

bench: $(STAMP)
	$(BIN)/python bench/build_scale.py
	$(BIN)/python bench/eval_scale.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/mining.py
	$(BIN)/python bench/mining_quality.py
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .hypothesis
