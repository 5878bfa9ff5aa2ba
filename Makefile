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
	$(PY) -m pytest -q

demo: install
	$(PY) -m deploy.federated_demo --out demo-federated

bench: install
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_training.py
	$(PY) -m benchmarks.bench_round_overhead
	$(PY) -m benchmarks.bench_privacy
	$(PY) -m benchmarks.bench_secagg
	$(PY) -m benchmarks.bench_compression
	$(PY) -m benchmarks.bench_scale
	$(PY) -m benchmarks.bench_levers

clean:
	rm -rf $(VENV) .pytest_cache demo-run demo-federated
