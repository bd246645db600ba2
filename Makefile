# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_HOME ?= $(CURDIR)/.infaas-demo

.PHONY: venv demo test test-unit test-integration test-e2e cluster-test bench zoo clean

$(BIN)/infaas: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/infaas

# Fresh INFAAS_HOME: start a master + 2 workers, register the zoo, profile (both replicate to the
# master), show the variants, send model-less queries under different SLOs, stop everything.
demo: venv
	-INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas down 2>/dev/null
	rm -rf $(DEMO_HOME)
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas up --workers 2
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas zoo register || (INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas down; exit 1)
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas profile --all || (INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas down; exit 1)
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas models
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas variants --all --batch-size 8
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/python examples/slo_tour.py || (INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas down; exit 1)
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas status
	INFAAS_HOME=$(DEMO_HOME) $(BIN)/infaas down

# Every tier: unit (pure, seconds), integration (real sockets, LMDB, ONNX Runtime in-process), e2e (processes).
test: venv
	$(BIN)/python -m pytest -q tests/unit tests/integration tests/e2e

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit

test-integration: venv
	$(BIN)/python -m pytest -q tests/integration

test-e2e: venv
	$(BIN)/python -m pytest -q tests/e2e

# Three network namespaces with sshd, provisioned by Ansible over ssh (root; needs iproute2 and
# openssh-server). Also part of `make test`.
cluster-test: venv
	$(BIN)/python -m pytest -q tests/e2e/test_cluster_netns.py

bench: venv
	$(BIN)/python benchmarks/profile_speed.py

# Rebuild the committed zoo (needs torch; slow).
zoo: venv
	$(BIN)/pip install --quiet -e '.[zoo]'
	$(BIN)/python examples/build_zoo.py

clean:
	rm -rf $(VENV) $(DEMO_HOME) *.egg-info .pytest_cache
