# Set-up and the two jobs of the README. Installs the CPU build of torch first, so that a
# fresh machine never pulls a multi-GB CUDA wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -qq
STAMP := $(VENV)/.koopt-installed
TEST_STAMP := $(VENV)/.koopt-test-installed

.PHONY: setup demo test lint bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[cli]'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[cli,test]'
	touch $(TEST_STAMP)

demo: setup
	$(BIN)/koopt reproduce hnn --quick
	$(BIN)/koopt reproduce mnist --quick

test: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -q

bench-quick: $(TEST_STAMP)
	$(BIN)/python benchmarks/jump_scaling.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
