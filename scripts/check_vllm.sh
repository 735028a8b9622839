#!/usr/bin/env bash
# The steered-vllm tests in their own venv (scripts/setup_vllm.sh: vLLM's CPU build here); CI runs this after
# the main suite and the floors. The main venv never installs vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
VENV=${DSTEER_VLLM_VENV:-build/vllm-venv}
[ "${CI:-}" = "true" ] && rm -rf "$VENV"
DSTEER_VLLM_VENV="$VENV" bash scripts/setup_vllm.sh
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/backend_vllm
