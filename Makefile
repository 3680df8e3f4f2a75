# Everyday commands. `make install` is idempotent; every other target installs first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-all run bench gpu-checks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

# The main job: a quick CNF training (fp32, mpnode, 2spirals). Extra Hydra overrides: make run ARGS="setting=bf16"
run: install
	$(PY) -m experiments.run task=cnf2d $(ARGS)

bench: install
	$(PY) scripts/bench_core.py $(ARGS)

gpu-checks: install
	$(PY) scripts/gpu_checks.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
