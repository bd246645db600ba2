# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_HOME ?= $(CURDIR)/.infaas-demo

.PHONY: venv demo test bench zoo clean

$(BIN)/infaas: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/infaas

# Register the example zoo into a fresh INFAAS_HOME, generate variants, profile, show them.
demo: venv
	rm -rf $(DEMO_HOME)
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas zoo register
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas profile --all
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas models
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas variants --all --batch-size 8

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/profile_speed.py

# Rebuild the committed zoo (needs torch; slow).
zoo: venv
	$(BIN)/pip install --quiet -e '.[zoo]'
	$(BIN)/python examples/build_zoo.py

clean:
	rm -rf $(VENV) $(DEMO_HOME) *.egg-info .pytest_cache
