# Every target creates .venv on first use; `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-data

.PHONY: install test test-fast demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow and not integration"

demo: install
	$(BIN)/osteo synth $(DEMO_DIR) --seed 42
	$(BIN)/osteo validate $(DEMO_DIR)

lint: install
	$(BIN)/ruff check osteo_pipeline flows tests bench

clean:
	rm -rf outputs $(DEMO_DIR) .pytest_cache
