# Set-up and the two jobs of the README. Installs the CPU build of torch first, so that a
# fresh machine never pulls a multi-GB CUDA wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.koopt-installed

.PHONY: setup demo test lint bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[cli,test]'
	touch $(STAMP)

demo: setup
	$(BIN)/koopt reproduce hnn --quick
	$(BIN)/koopt reproduce mnist --quick

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench-quick: setup
	$(BIN)/python benchmarks/jump_scaling.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
