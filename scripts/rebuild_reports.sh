#!/usr/bin/env bash
# Rebuild every committed D-STEER report from its committed sweeps (no model runs): after a change to the
# report's rules or the behaviour classifier, the pages, cards and results/README.md follow the code.
#   bash scripts/rebuild_reports.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} MPLBACKEND=Agg
BIN=${DSTEER_VENV:-.venv}/bin
report() { "$BIN/dsteer-eval" report "$@" --overwrite > /dev/null; }
for name in main_k8; do
  [ -f "results/$name/sweep.json" ] || continue
  k=${name#main_k}
  report "results/$name" --out "results/$name/report" --title "main job: the refusal pair, first 100 eval-part documents (harmful requests), layer 20, α = −1 / +1, K = $k random directions"
done
[ -f results/main_k20/sweep.json ] && report results/main_k20 --out results/main_k20/report --title "main job: the refusal pair, first 30 eval-part documents (harmful requests), layer 20, α = −1 / +1, K = 20 random directions"
for name in report_refusal_own report_refusal_cross report_refusal_heldout report_refusal_behaviour \
            report_refusal_behaviour_fine report_refusal_layers report_hh_own report_hh_cross; do
  [ -f "results/$name/sweep.json" ] && [ -d "results/$name/report" ] && report "results/$name" --out "results/$name/report"
done
for pair in refusal hh; do
  task=$([ $pair == refusal ] && echo dsteer_refusal_ll || echo dsteer_hh_offline)
  report "results/report_${pair}_own" "results/report_${pair}_cross" --tasks "$task" \
      --labels "$pair v̄ (in-distribution),other pair's v̄ (cross-distribution)" \
      --title "$pair pair: in- vs cross-distribution v̄" --out "results/report_$pair"
done
report results/main_k8 results/report_refusal_heldout --labels "training templates,held-out phrasings" \
    --title "refusal pair: training-template refusals vs held-out phrasings (100 eval documents, layer 20, K = 8)" \
    --out results/report_refusal_templates_vs_heldout
report results/report_refusal_layers results/report_refusal_position_completion results/report_refusal_position_last \
    --labels "position all,position completion,position last (prompt token)" \
    --title "refusal pair: where v̄ works (layers and positions)" --out results/report_refusal_where
"$BIN/python" scripts/results_readme.py
