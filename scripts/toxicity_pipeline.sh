#!/usr/bin/env bash
# The toxicity pair on the embedded SmolLM2-135M (pair=toxicity): Lee et al. 2024's DPO setup rebuilt offline.
# build-toxicity (probe at site 15, chosen = unsteered non-toxic, rejected = +alpha*probe toxic, on the RTP prompts
# the package ships), DPO on the train part (preset toxicity: LoRA r16 on every linear layer incl. the MLP's
# gate/up/down), v-bar on the vector part, the held-out reward gate on the eval part, then the toxicity and
# perplexity sweep (-v-bar on DPO, +v-bar on the base, K = 20 random directions) and Lee's weight/activation analyses.
# Re-creates dsteer_eval/artifacts/smollm2/toxicity/, results/toxicity_pair/ and results/lee_smollm2/after_dpo.*
# About 2.5 hours on 2 CPU cores (the pairs 25 min, DPO 5 min, the sweeps the rest). Resumable: re-run the same command (finished steps are kept). STEP=<name> runs one.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_DISABLE_TELEMETRY=1
BIN=${DSTEER_VENV:-.venv}/bin
ART=dsteer_eval/artifacts/smollm2/toxicity
PAIRS=build/toxicity/toxicity_pairs.jsonl.gz
STEP=${STEP:-all}   # all | build | train | ship | gate | sweep | lee | table2 | table4 | tables
TASKS=dsteer_toxicity_rtp,dsteer_perplexity_hh
LIMIT=${LIMIT:-64}    # documents per task: the first 64 of the 128 eval-part RTP prompts and of the 285 HH dialogues
TLIMIT=${TLIMIT:-$LIMIT}  # Tables 2 and 4 (paired with the main sweep's documents on the same ids)

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
# D-STEER on the toxicity pair: toxicity with K = 20 random directions on both sides; perplexity at the same alphas
# (its own sweep, no random directions: perplexity is the cost column, not a claim)
if [[ $STEP == all || $STEP == sweep ]]; then
  "$BIN/dsteer-eval" sweep --model-args pair=toxicity --alphas -1,0 --base-alphas 0,1 --controls random:20 \
      --tasks dsteer_toxicity_rtp --limit "$LIMIT" --output results/toxicity_pair/sweep
  "$BIN/dsteer-eval" sweep --model-args pair=toxicity --alphas -1,0 --base-alphas 0,1 \
      --tasks dsteer_perplexity_hh --limit "$LIMIT" --output results/toxicity_pair/sweep_ppl
  "$BIN/dsteer-eval" report results/toxicity_pair/sweep --metrics toxicity,toxicity_probability \
      --title "toxicity pair (Lee et al.): toxicity on eval-part RTP prompts" --out results/toxicity_pair/report --overwrite
fi
if [[ $STEP == all || $STEP == lee ]]; then
  "$BIN/python" scripts/lee_after_dpo.py
fi
# Table 2: subtract each direction from the base model on an alpha grid (fractions of the mean state norm), then
# K = 20 random directions at the alpha whose perplexity is nearest the DPO model's (the grid runs to alpha = -1, a whole
# mean state norm, so that it can reach it; toxicity only: the alpha is
# already matched)
if [[ $STEP == all || $STEP == table2 ]]; then
  for name in probe_final value_top1 svd_u0 probe_build; do
    file="$ART/$name.safetensors"; layer=29; [[ $name == probe_build ]] && file="$ART/probe.safetensors" && layer=15
    "$BIN/dsteer-eval" sweep --model-args "vector=$file,peft=none,unit=norm" --layers $layer --alphas=-0.025,-0.05,-0.1,-0.25,-0.5,-1 \
        --tasks $TASKS --limit "$TLIMIT" --output results/toxicity_pair/interventions/$name
    a=$("$BIN/python" scripts/lee_tables.py --alpha-for $name)
    "$BIN/dsteer-eval" sweep --model-args "vector=$file,peft=none,unit=norm" --layers $layer --alphas="$a" --controls random:20 \
        --tasks dsteer_toxicity_rtp --limit "$TLIMIT" --output results/toxicity_pair/interventions/${name}_matched
  done
fi
# Table 4: the keys of the top 7 toxic neurons x 10 in the DPO model inside lm-eval, and (one process, the same code
# for every arm) the top 7 beside 20 random sets of 7 neurons x 10: results/lee_smollm2/unalign.md
if [[ $STEP == all || $STEP == table4 ]]; then
  "$BIN/dsteer-eval" sweep --model-args "pair=toxicity,scale_keys=toxic:7,key_factor=10" --alphas 0 \
      --tasks $TASKS --limit "$TLIMIT" --output results/toxicity_pair/unalign/keys_top7
  "$BIN/python" scripts/lee_unalign.py
fi
if [[ $STEP == all || $STEP == tables ]]; then
  "$BIN/python" scripts/lee_tables.py
fi
