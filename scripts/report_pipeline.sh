#!/usr/bin/env bash
# The D-STEER report for both shipped pairs (docs/report.md): dose-response on both sides against K = 20
# norm-matched random directions per point, on the eval-part documents.
#   refusal pair: dsteer_refusal_ll and dsteer_refusal_ll_heldout (the same documents, refusals in phrasings
#                 written apart from the training templates), its own v̄ and the HH pair's v̄ (vector_pair=hh)
#   hh pair:      dsteer_hh_offline, its own v̄ and the refusal pair's v̄
# Writes results/report_<pair>_<vector>/ (each a sweep with its report/) and results/report_<pair>/ (own vs
# cross side by side); for the refusal pair also results/report_refusal_behaviour/ (generation: behaviour along
# the grid), results/report_refusal_layers/ and _position_{completion,last}/ with results/report_refusal_where/
# (gap closed by layer, layer set and position, chosen on the probe-part selection rows, reported on eval). LIMIT documents per task (default 100; the documents are the first LIMIT of each
# task's eval part; the refusal file lists its harmful requests first). ALPHAS, BASE_ALPHAS, K and
# REFUSAL_TASKS override the grid. Resumable: re-run the same command after an interruption. STEP=<name> runs one step.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_DISABLE_TELEMETRY=1
BIN=${DSTEER_VENV:-.venv}/bin
LIMIT=${LIMIT:-100}
ALPHAS=${ALPHAS:--4,-2,-1,-0.5,0}
BASE_ALPHAS=${BASE_ALPHAS:-0,0.5,1,2}
K=${K:-20}  # K >= 19: a p <= 0.05 against the random directions is possible (the committed runs used K = 8)
REFUSAL_TASKS=${REFUSAL_TASKS:-dsteer_refusal_ll,dsteer_refusal_ll_heldout}
STEP=${STEP:-all}   # all | refusal | refusal_cross | hh | hh_cross | behaviour | behaviour_fine | layers | positions | reports
GEN_LIMIT=${GEN_LIMIT:-78}        # behaviour: dsteer_refusal_balanced alternates kinds, 78 = 39 harmful + 39 harmless
WHERE_LIMIT=${WHERE_LIMIT:-60}    # layers/positions: documents of the eval task and of its _select task
WHERE_LAYERS=${WHERE_LAYERS:-10,15,20,25,25+26+27+28+29}
WHERE_BASE_ALPHAS=${WHERE_BASE_ALPHAS:-0,1}  # 0: the DPO side only (the unsteered base gives the gap)

run() {  # name model_args tasks
  "$BIN/dsteer-eval" sweep --model-args "$2" --alphas "$ALPHAS" --base-alphas "$BASE_ALPHAS" --controls "random:$K" \
      --tasks "$3" --limit "$LIMIT" --output "results/report_$1" --report --no-plots
}
[[ $STEP == all || $STEP == refusal ]] && run refusal_own pair=refusal "$REFUSAL_TASKS"
[[ $STEP == all || $STEP == hh ]] && run hh_own pair=hh dsteer_hh_offline
[[ $STEP == all || $STEP == refusal_cross ]] && run refusal_cross pair=refusal,vector_pair=hh dsteer_refusal_ll
[[ $STEP == all || $STEP == hh_cross ]] && run hh_cross pair=hh,vector_pair=refusal dsteer_hh_offline
# behaviour along the grid: generative refusal rate / answer rate, degenerate share, fidelity to the unsteered replies,
# and the log-likelihood margins on the same 39 harmful + 39 harmless documents (answer_margin too)
[[ $STEP == all || $STEP == behaviour ]] && "$BIN/dsteer-eval" sweep --model-args pair=refusal --alphas "$ALPHAS" \
    --base-alphas "$BASE_ALPHAS" --controls "random:$K" --tasks dsteer_refusal_balanced,dsteer_refusal_ll_balanced --limit "$GEN_LIMIT" \
    --output results/report_refusal_behaviour --report --no-plots
# behaviour on a finer grid, |alpha| <= 0.5 (alpha = 1 already rewrites every reply), the same 20 + 20 documents, on
# vLLM (--backend vllm: one engine per side, each side's points in one pass with per-request steering); needs the
# vLLM venv (scripts/setup_vllm.sh)
VLLM_BIN=${DSTEER_VLLM_VENV:-build/vllm-venv}/bin
# (v̄ only: a generation point took ~9 min on 2 shared cores with vLLM, so K = 20 random directions would take ~13 h;
# FINE_CONTROLS=random:20 adds them where there is the time)
[[ $STEP == behaviour_fine ]] && "$VLLM_BIN/dsteer-eval" sweep --backend vllm \
    --model-args pair=refusal,gpu_memory_utilization=0.15,max_model_len=1024 --alphas -0.5,-0.25,0 \
    --base-alphas 0,0.25,0.5 --controls "${FINE_CONTROLS:-none}" --tasks dsteer_refusal_balanced,dsteer_refusal_ll_balanced \
    --limit 40 --output results/report_refusal_behaviour_fine --report --no-plots
# where: by layer (and the authors' last-five-layers set) at alpha -1 / +1, chosen on the probe-part _select rows
[[ $STEP == all || $STEP == layers ]] && "$BIN/dsteer-eval" sweep --model-args pair=refusal --layers "$WHERE_LAYERS" \
    --alphas -1,0 --base-alphas "$WHERE_BASE_ALPHAS" --controls "random:$K" --tasks dsteer_refusal_ll,dsteer_refusal_ll_select \
    --limit "$WHERE_LIMIT" --output results/report_refusal_layers --report --no-plots
if [[ $STEP == all || $STEP == positions ]]; then
  for position in completion last; do
    "$BIN/dsteer-eval" sweep --model-args "pair=refusal,position=$position" --layers 20 --alphas -1,0 --base-alphas "$WHERE_BASE_ALPHAS" \
        --controls "random:$K" --tasks dsteer_refusal_ll,dsteer_refusal_ll_select --limit "$WHERE_LIMIT" \
        --output "results/report_refusal_position_$position" --no-plots
  done
  "$BIN/dsteer-eval" report results/report_refusal_layers results/report_refusal_position_completion \
      results/report_refusal_position_last --labels "position all,position completion,position last (prompt token)" \
      --title "refusal pair: where v̄ works (layers and positions)" --out results/report_refusal_where --overwrite
fi
if [[ $STEP == all || $STEP == reports ]]; then
  for pair in refusal hh; do
    if [ -f "results/report_${pair}_own/sweep.json" ] && [ -f "results/report_${pair}_cross/sweep.json" ]; then
      task=$([ $pair == refusal ] && echo dsteer_refusal_ll || echo dsteer_hh_offline)
      "$BIN/dsteer-eval" report "results/report_${pair}_own" "results/report_${pair}_cross" --tasks "$task" \
          --labels "$pair v̄ (in-distribution),other pair's v̄ (cross-distribution)" \
          --title "$pair pair: in- vs cross-distribution v̄" --out "results/report_$pair" --overwrite
    fi
  done
fi
