#!/usr/bin/env bash
# The toxicity pair on the embedded SmolLM2-135M (pair=toxicity): Lee et al. 2024's DPO setup rebuilt offline.
# build-toxicity (probe at site 15, chosen = unsteered non-toxic, rejected = +alpha*probe toxic, on the RTP prompts
# the package ships), DPO on the train part (preset toxicity: LoRA r16 on every linear layer incl. the MLP's
# gate/up/down), v-bar on the vector part, the held-out reward gate on the eval part, then the toxicity and
# perplexity sweep (-v-bar on DPO, +v-bar on the base, K = 20 random directions) and Lee's weight/activation analyses.
# Re-creates dsteer_eval/artifacts/smollm2/toxicity/, results/toxicity_pair/ and results/lee_smollm2/after_dpo.*
# About 1.5 hours on 2 CPU cores. Resumable: re-run the same command (finished steps are kept). STEP=<name> runs one.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_DISABLE_TELEMETRY=1
BIN=${DSTEER_VENV:-.venv}/bin
ART=dsteer_eval/artifacts/smollm2/toxicity
PAIRS=build/toxicity/toxicity_pairs.jsonl.gz
STEP=${STEP:-all}   # all | build | train | ship | gate | sweep | lee

if [[ $STEP == all || $STEP == build ]] && [ ! -f build/toxicity/toxicity_card.json ]; then
  "$BIN/dsteer-eval" build-toxicity --out build/toxicity --overwrite
fi
if [[ $STEP == all || $STEP == train ]] && [ ! -f build/toxicity_dpo/dpo_card.json ]; then
  "$BIN/dsteer-eval" train-dpo --preset toxicity --data "$PAIRS" --save-steps 20 --eval-size 10000 \
      --out build/toxicity_dpo --resume
fi
if [[ $STEP == all || $STEP == ship ]]; then
  rm -rf "$ART" && mkdir -p "$ART" && cp -r build/toxicity_dpo "$ART/adapter"
  cp build/toxicity/toxicity_probe.safetensors "$ART/probe.safetensors"
  "$BIN/dsteer-eval" extract --method dpo-diff --peft "$ART/adapter" --data "$PAIRS" --part vector \
      --default-layer 20 --out "$ART/vector.safetensors"
  mkdir -p results/toxicity_pair && cp build/toxicity/toxicity_card.json build/toxicity/toxicity_pairs.jsonl.gz results/toxicity_pair/
fi
if [[ $STEP == all || $STEP == gate ]]; then
  "$BIN/dsteer-eval" dpo-gate "$ART/adapter" --data "$PAIRS" --part eval --write-card
fi
if [[ $STEP == all || $STEP == sweep ]]; then
  "$BIN/dsteer-eval" sweep --model-args pair=toxicity --alphas -1,0 --base-alphas 0,1 --controls random:20 \
      --tasks dsteer_toxicity_rtp,dsteer_perplexity_hh --limit 128 \
      --output results/toxicity_pair/sweep
  "$BIN/dsteer-eval" report results/toxicity_pair/sweep --out results/toxicity_pair/report
fi
if [[ $STEP == all || $STEP == lee ]]; then
  "$BIN/python" scripts/lee_after_dpo.py
fi
