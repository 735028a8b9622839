#!/usr/bin/env bash
# The D-STEER pipeline on the embedded SmolLM2-135M: train the DPO adapter, extract v-bar, probe.
# Re-creates the shipped artefacts (dsteer_eval/artifacts/smollm2/) and results/smollm2_dpo/.
# Needs the real HH data in ../shared/data (or DATA=... pointing at any HH-style JSONL / hub id).
# ~40 minutes on 2 CPU cores. Run from the repository root after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_DISABLE_TELEMETRY=1
BIN=${DSTEER_VENV:-.venv}/bin
DATA=${DATA:-../shared/data/hh_harmless_dev.jsonl.gz}
ART=dsteer_eval/artifacts/smollm2
OUT=${OUT:-results/smollm2_dpo}

"$BIN/dsteer-eval" train-dpo --data "$DATA" --learning-rate 3e-4 --steps 150 --warmup-steps 10 \
    --lora-r 4 --lora-alpha 8 --out "$ART/dpo_adapter" --overwrite
"$BIN/dsteer-eval" extract --method dpo-diff --data "$DATA" --limit 700 --default-layer 20 \
    --out "$ART/vector.safetensors"
"$BIN/dsteer-eval" extract --method preference --data "$DATA" --limit 700 --out "$OUT.preference.safetensors"
"$BIN/dsteer-eval" probe --data "$DATA" --offset 700 --limit 100 --alphas 0,0.5,1,2 --out "$OUT" --overwrite
mv "$OUT.preference.safetensors" "$OUT/preference_vector.safetensors"
