#!/bin/sh
# Install a CPU build of PyTorch into the virtual environment whose python is $1.
# 1. torch==2.13.0 when a wheel of it lies in pip's local find-links (a CPU build on this
#    project's machines); it is installed from that file, its dependencies from the index.
#    Never a bare `torch` from PyPI: a Linux torch wheel there is a multi-GB CUDA build.
# 2. otherwise the newest CPU build from PyTorch's CPU wheel index.
set -e
PY="$1"
if "$PY" -c "import torch" 2>/dev/null; then
  exit 0
fi
tmp=$(mktemp -d)
if "$PY" -m pip download -q --no-index --no-deps -d "$tmp" "torch==2.13.0" 2>/dev/null; then
  "$PY" -m pip install -q "$tmp"/torch-*.whl
  echo "installed torch 2.13.0 from the local CPU wheel"
else
  echo "no local torch==2.13.0 wheel; installing the newest CPU build"
  "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
rm -rf "$tmp"
