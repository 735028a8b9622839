#!/usr/bin/env bash
# The refusal pair on the embedded SmolLM2-135M (the default shipped pair, pair=refusal):
# build the preference set, train the DPO adapter on the train part, extract v-bar on the vector
# part, probe on the probe part, and run the main-job sweep on the eval-part tasks.
# Re-creates dsteer_eval/artifacts/smollm2/refusal/ and results/smollm2_refusal/, results/demo_smollm2/.
# Needs ../shared/data. ~1 hour on 2 CPU cores. Run from the repository root after scripts/setup.sh.
# Training is resumable: re-run with RESUME=1 after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_DISABLE_TELEMETRY=1
BIN=${DSTEER_VENV:-.venv}/bin
SHARED=${SHARED:-../shared/data}
ART=dsteer_eval/artifacts/smollm2/refusal
PAIRS=build/refusal/refusal_pairs.jsonl.gz

"$BIN/dsteer-eval" build-refusal --hh "$SHARED/hh_harmless_dev.jsonl.gz" --truthfulqa "$SHARED/truthfulqa_dev.csv" \
    --out build/refusal
"$BIN/dsteer-eval" train-dpo --preset refusal --data "$PAIRS" --steps 140 --save-steps 20 --eval-size 128 \
    --hparam-sweep results/dpo_hparam_sweep/sweep.json --out build/refusal_dpo ${RESUME:+--resume}
rm -rf "$ART/adapter" && mkdir -p "$ART" && cp -r build/refusal_dpo "$ART/adapter"
"$BIN/dsteer-eval" extract --method dpo-diff --peft "$ART/adapter" --data "$PAIRS" --part vector \
    --default-layer 20 --out "$ART/vector.safetensors"
"$BIN/dsteer-eval" probe --peft "$ART/adapter" --vector "$ART/vector.safetensors" --data "$PAIRS" --part probe \
    --limit 24 --grad-pairs 8 --lattice-pairs 2 --max-length 160 --alphas 0,0.5,1,2 --out results/smollm2_refusal --overwrite
"$BIN/dsteer-eval" sweep --alphas -1,0 --base-alphas 0,1 --controls random:1 --tasks dsteer_refusal_ll \
    --output results/demo_smollm2 --overwrite
