# FedRad: the two set-up commands. Each creates .venv if missing, installs, and runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedrad-installed

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes. torch is pinned to the CPU wheel on disk.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: install
	$(PY) -m deploy.federated_demo --out demo-federated

# fedrad-bench (benchmarks/cli.py) subcommands; `$(PY) -m benchmarks.cli --help` lists them all.
bench: install
	$(PY) -m benchmarks.cli ingest
	$(PY) -m benchmarks.cli training
	$(PY) -m benchmarks.cli overhead
	$(PY) -m benchmarks.cli privacy
	$(PY) -m benchmarks.cli secagg
	$(PY) -m benchmarks.cli compression
	$(PY) -m benchmarks.cli scale-sweep
	$(PY) -m benchmarks.cli levers
	$(PY) -m benchmarks.cli volume-inference
	$(PY) -m benchmarks.cli volume-memory

clean:
	rm -rf $(VENV) .pytest_cache demo-run demo-federated
