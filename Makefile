# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diag demo --out out/demo

browser:   # headless Chromium for the report and web-page tests (best effort, never fails)
	@sh scripts/install-chromium.sh

test: $(STAMP) browser
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

test-all: $(STAMP) browser   # also the slow tests (full-size runs of the presets)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf out .pytest_cache
