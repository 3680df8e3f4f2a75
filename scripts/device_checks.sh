#!/usr/bin/env bash
# Everything this project checks on a lent GPU, in one short run (about 3 minutes on an H100/H200):
# the core's numerical checks (scripts/gpu_checks.py) and the CUDA benchmark (scripts/bench_core.py).
# Needs only torch and torchdiffeq (no install): run it from the repository root, e.g.
#   MPNODE_GIT_COMMIT=$(git rev-parse HEAD) bash scripts/device_checks.sh      # here: results/
# and on the device machine, where .git is absent, pass the commit the same way; results go to
# $OUT when set (the device tool's output folder), else to results/. Commit them under results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results}"
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch, torchdiffeq; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchdiffeq', torchdiffeq.__version__)"
status=0
timeout 180 python3 scripts/gpu_checks.py --device cuda --out "$out/gpu" || status=$?
timeout 360 python3 scripts/bench_core.py --device cuda --out "$out/bench" || status=$?
exit "$status"
