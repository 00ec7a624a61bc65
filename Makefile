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

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-out pixclust-out .pytest_cache
