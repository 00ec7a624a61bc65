# Two entry points for a newcomer: `make demo` and `make test`. Both build .venv/ first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv clean

venv: $(BIN)/pixclust

# Re-install when the dependency list changes; pip on this project's machines takes torch from local disk.
$(BIN)/pixclust: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/pixclust demo --out demo-out

# Lint and format check first: they take a second, the suite a quarter of an hour.
test: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-out pixclust-out .pytest_cache
