#!/usr/bin/env bash
# The HH harmless pair on the embedded SmolLM2-135M (pair=hh), on the file-level split:
# a beta x lr sweep selected on the vector part, the preset (LoRA r16 on every linear layer, 1 epoch
# over the train part) at the sweep's choice for two seeds, the gate on every eval-part pair, v-bar
# on the vector part, the seed comparison, and the main-job sweep on the eval-part HH task.
# Re-creates dsteer_eval/artifacts/smollm2/hh/, results/dpo_hparam_sweep_hh/, results/smollm2_hh_seed1/,
# results/smollm2_hh/ (probes with their nulls, probe part) and results/demo_smollm2_hh/.
# Needs ../shared/data. About 3 CPU-hours (two seeds of ~1 hour each). Resumable: re-run the same
# command after an interruption (finished sweep points and seeds are kept). STEP=<name> runs one step.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_DISABLE_TELEMETRY=1
BIN=${DSTEER_VENV:-.venv}/bin
DATA=${DATA:-../shared/data/hh_harmless_dev.jsonl.gz}
ART=dsteer_eval/artifacts/smollm2/hh
SWEEP=results/dpo_hparam_sweep_hh/sweep.json
STEP=${STEP:-all}   # all | sweep | train0 | train1 | ship | seed1 | probe | demo

if [[ $STEP == all || $STEP == sweep ]]; then
  "$BIN/python" scripts/dpo_hparam_sweep.py --preset hh --data "$DATA" --steps 40 \
      --grid 0.1:5e-4,0.1:2e-4,0.3:5e-4,0.05:5e-4 --work build/dpo_hparam_sweep_hh --out results/dpo_hparam_sweep_hh
fi
read -r BETA LR < <("$BIN/python" -c "import json,sys; c=json.load(open('$SWEEP'))['chosen']; print(c['beta'], c['learning_rate'])")
for seed in 0 1; do
  if [[ $STEP == all || $STEP == train$seed ]] && [ ! -f build/hh_dpo_seed$seed/dpo_card.json ]; then
    "$BIN/dsteer-eval" train-dpo --preset hh --data "$DATA" --beta "$BETA" --learning-rate "$LR" --seed $seed \
        --eval-size 10000 --save-steps 20 --hparam-sweep "$SWEEP" --out build/hh_dpo_seed$seed --resume
  fi
done
if [[ $STEP == all || $STEP == ship ]]; then
  rm -rf "$ART/adapter" && mkdir -p "$ART" && cp -r build/hh_dpo_seed0 "$ART/adapter"
  "$BIN/dsteer-eval" extract --method dpo-diff --peft "$ART/adapter" --data "$DATA" --part vector \
      --default-layer 20 --out "$ART/vector.safetensors"
fi
if [[ $STEP == all || $STEP == seed1 ]]; then
  mkdir -p results/smollm2_hh_seed1 && cp build/hh_dpo_seed1/dpo_card.json results/smollm2_hh_seed1/
  "$BIN/dsteer-eval" extract --method dpo-diff --peft build/hh_dpo_seed1 --data "$DATA" --part vector \
      --default-layer 20 --out results/smollm2_hh_seed1/vector.safetensors
  "$BIN/python" scripts/compare_seeds.py --card-a "$ART/adapter/dpo_card.json" --vector-a "$ART/vector.safetensors" \
      --card-b results/smollm2_hh_seed1/dpo_card.json --vector-b results/smollm2_hh_seed1/vector.safetensors \
      --pair hh --out results/smollm2_hh_seed1
fi
if [[ $STEP == all || $STEP == probe ]]; then
  "$BIN/dsteer-eval" probe --peft "$ART/adapter" --vector "$ART/vector.safetensors" --data "$DATA" \
      --part probe --limit 24 --grad-pairs 8 --lattice-pairs 2 --max-length 160 --alphas 0,0.5,1,2 \
      --out results/smollm2_hh --overwrite
fi
if [[ $STEP == all || $STEP == demo ]]; then
  "$BIN/dsteer-eval" sweep --model-args pair=hh --alphas -1,0 --base-alphas 0,1 --controls random:1 \
      --tasks dsteer_hh_offline --output results/demo_smollm2_hh --overwrite
fi
