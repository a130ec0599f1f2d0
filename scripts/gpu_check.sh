#!/usr/bin/env bash
# The one GPU check (orchestrator/bench/gpu_check.py): engines driven in one process, one table.
#   scripts/gpu_check.sh            on a CUDA machine (NCCL, world size 1; no Ray or vLLM needed)
#   scripts/gpu_check.sh --dry-run  anywhere: CPU, gloo, tiny shapes (the suite runs this)
# The device machine lacks some of Baton's pure-Python dependencies: scripts/gpu_wheels.sh downloads them
# into .whl/ here, and this script installs whatever .whl/ holds before it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/baton-site .whl/*.whl
  export PYTHONPATH="/tmp/baton-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
exec timeout 480 "$PY" -m orchestrator.bench.gpu_check "$@"
