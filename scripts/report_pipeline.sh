#!/usr/bin/env bash
# The D-STEER report for both shipped pairs (docs/report.md): dose-response on both sides against K = 8
# norm-matched random directions per point, on the eval-part documents.
#   refusal pair: dsteer_refusal_ll and dsteer_refusal_ll_heldout (the same documents, refusals in phrasings
#                 written apart from the training templates), its own v̄ and the HH pair's v̄ (vector_pair=hh)
#   hh pair:      dsteer_hh_offline, its own v̄ and the refusal pair's v̄
# Writes results/report_<pair>_<vector>/ (each a sweep with its report/) and results/report_<pair>/ (own vs
# cross side by side). LIMIT documents per task (default 100; the documents are the first LIMIT of each
# task's eval part; the refusal file lists its harmful requests first). ALPHAS, BASE_ALPHAS, K and
# REFUSAL_TASKS override the grid. Resumable: re-run the same command after an interruption. STEP=<name> runs one step.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_DISABLE_TELEMETRY=1
BIN=${DSTEER_VENV:-.venv}/bin
LIMIT=${LIMIT:-100}
ALPHAS=${ALPHAS:--4,-2,-1,-0.5,0}
BASE_ALPHAS=${BASE_ALPHAS:-0,0.5,1,2}
K=${K:-8}
REFUSAL_TASKS=${REFUSAL_TASKS:-dsteer_refusal_ll,dsteer_refusal_ll_heldout}
STEP=${STEP:-all}   # all | refusal | refusal_cross | hh | hh_cross | reports

run() {  # name model_args tasks
  "$BIN/dsteer-eval" sweep --model-args "$2" --alphas "$ALPHAS" --base-alphas "$BASE_ALPHAS" --controls "random:$K" \
      --tasks "$3" --limit "$LIMIT" --output "results/report_$1" --report --no-plots
}
[[ $STEP == all || $STEP == refusal ]] && run refusal_own pair=refusal "$REFUSAL_TASKS"
[[ $STEP == all || $STEP == hh ]] && run hh_own pair=hh dsteer_hh_offline
[[ $STEP == all || $STEP == refusal_cross ]] && run refusal_cross pair=refusal,vector_pair=hh dsteer_refusal_ll
[[ $STEP == all || $STEP == hh_cross ]] && run hh_cross pair=hh,vector_pair=refusal dsteer_hh_offline
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
