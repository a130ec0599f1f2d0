#!/usr/bin/env bash
# Wheels the GPU check needs that the device image lacks (Python 3.12, x86_64), into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
mkdir -p .whl
for pkg in megatron-core==0.16.1 tensordict==0.15.3 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 pyvers cloudpickle; do
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pkg" || echo "gpu_wheels: could not fetch $pkg"
done
ls -la .whl
