#!/usr/bin/env bash
# Resolve requirements/gpu.in into requirements/gpu.lock for the GPU image (x86_64 manylinux, Python 3.12),
# with hashes, without installing anything: uv reads package metadata for the target platform.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
command -v "$UV" >/dev/null || { python3 -m venv /tmp/baton-uv && /tmp/baton-uv/bin/pip install -q uv && UV=/tmp/baton-uv/bin/uv; }
"$UV" pip compile requirements/gpu.in --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
  --index-url https://pypi.org/simple --generate-hashes --no-header -o requirements/gpu.lock.tmp
{ echo "# GPU image lock (docker/Dockerfile.gpu), from requirements/gpu.in by scripts/lock_gpu.sh: Python 3.12, x86_64."
  echo "# Install: pip install --require-hashes --no-deps -r requirements/gpu.lock"
  cat requirements/gpu.lock.tmp; } > requirements/gpu.lock
rm requirements/gpu.lock.tmp
