# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test slow bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel, pinned so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/tunelab demo

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

slow: setup
	$(BIN)/python -m pytest -q -m slow

# Side-by-side measurements (minutes; SST-2 parts need ../shared/data/sst2). Never part of `make test`.
bench: setup
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/label_noise_sst2.py
	$(BIN)/python benchmarks/quantize.py
	$(BIN)/python benchmarks/distill_sst2.py
	$(BIN)/python benchmarks/ner_speed.py

lint: setup
	$(BIN)/ruff check src tests examples benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
