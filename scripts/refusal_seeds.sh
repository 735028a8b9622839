#!/usr/bin/env bash
# Issue-14 checks of the refusal pair that take CPU hours: the beta x lr sweep (selected on the
# vector part; the refusal preset uses its choice), the second seed (seed 1, the same preset and
# steps as the shipped pair), and the gate of both seeds re-measured on every pair of the eval part
# (pooled and by kind). Resumable: re-run after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_DISABLE_TELEMETRY=1
BIN=${DSTEER_VENV:-.venv}/bin
PAIRS=build/refusal/refusal_pairs.jsonl.gz
ART=dsteer_eval/artifacts/smollm2/refusal
"$BIN/python" scripts/dpo_hparam_sweep.py --data "$PAIRS" --work build/dpo_hparam_sweep --out results/dpo_hparam_sweep \
    --grid 0.1:5e-4,0.1:2e-4,0.3:5e-4
if [ ! -f build/refusal_dpo_seed1/dpo_card.json ]; then
  "$BIN/dsteer-eval" train-dpo --preset refusal --data "$PAIRS" --steps 140 --save-steps 20 --eval-size 10000 \
      --seed 1 --out build/refusal_dpo_seed1 --resume
fi
"$BIN/dsteer-eval" dpo-gate "$ART/adapter" --data "$PAIRS" --part eval --write-card
"$BIN/dsteer-eval" dpo-gate build/refusal_dpo_seed1 --data "$PAIRS" --part eval --write-card
mkdir -p results/smollm2_refusal_seed1 && cp build/refusal_dpo_seed1/dpo_card.json results/smollm2_refusal_seed1/
"$BIN/dsteer-eval" extract --method dpo-diff --peft build/refusal_dpo_seed1 --data "$PAIRS" --part vector \
    --default-layer 20 --out results/smollm2_refusal_seed1/vector.safetensors
"$BIN/python" scripts/compare_seeds.py --card-b results/smollm2_refusal_seed1/dpo_card.json \
    --vector-b results/smollm2_refusal_seed1/vector.safetensors --out results/smollm2_refusal_seed1
"$BIN/python" scripts/seed_noise.py --adapter-b build/refusal_dpo_seed1 --out results/smollm2_refusal_seed1
