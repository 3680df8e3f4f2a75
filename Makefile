# Everyday commands. `make install` is idempotent; every other target installs first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-all run bench gpu-checks check-cnf2d cnf2d-paper-cpu reproduce-cnf2d reproduce-cnf2d-quick reproduce-all results clean

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

# Quick precision check: fp32, bf16, fp16-dynamic on 2spirals (2-core CPU: 4 minutes alone, ~10 shared), then the tables.
check-cnf2d: install
	$(PY) -m experiments.run -m experiment=cnf2d_precision_check resume=true $(ARGS)
	$(PY) scripts/aggregate.py --task cnf2d --copy-run-files

# One paper-profile run on a CPU (2spirals, fp32; about 80 minutes on 2 cores, resumable: run it
# again after a kill), then the tables. results/cnf2d/ holds the one this repository committed.
cnf2d-paper-cpu: install
	$(PY) -m experiments.run task=cnf2d profile=paper precision=fp32 task.dataset=2spirals threads=2 resume=true $(ARGS)
	$(PY) scripts/aggregate.py --task cnf2d --copy-run-files

# The paper's CNF matrix with the reference hyperparameters (a GPU); invalid jobs are skipped and
# recorded, finished runs are kept (resume=true). On SLURM add: hydra/launcher=slurm hydra.launcher.partition=<p>
reproduce-cnf2d: install
	$(PY) -m experiments.run -m experiment=cnf2d_matrix profile=paper resume=true $(ARGS)
	$(PY) scripts/aggregate.py --task cnf2d --copy-run-files

# The same matrix in the quick profile, 2 local jobs (CPU: hours, low precision is slow on CPUs).
reproduce-cnf2d-quick: install
	$(PY) -m experiments.run -m experiment=cnf2d_matrix hydra/launcher=local resume=true $(ARGS)
	$(PY) scripts/aggregate.py --task cnf2d --copy-run-files

# Every task's matrix (otflow and stl10 join as they land), then the tables.
reproduce-all: reproduce-cnf2d

results: install
	$(PY) scripts/aggregate.py --copy-run-files

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
