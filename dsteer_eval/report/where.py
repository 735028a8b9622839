"""Where the direction works: the fraction of the gap closed by layer (and layer set, and sweep: e.g. one per
steered position) at one fixed α per side, with the choice made on other rows than the ones reported.

A sweep that ran a task ``T`` and its selection task ``T_select`` (the same metric on probe-part documents:
``dsteer_refusal_ll_select`` for ``dsteer_refusal_ll``) gives one **candidate** per (sweep, layer) at the side's
α (default −1 on the DPO side, +1 on the base side; v̄ of every layer is that layer's own mean DPO − base
difference, so α = ±1 is one full mean shift wherever it is added: the same *relative* strength at every
layer). Each candidate has its fraction on the selection documents and on the eval documents (CI, the random
directions' band, v̄'s rank). The **chosen** candidate is the one with the largest fraction on the selection
documents; its eval numbers are the report's answer to "where does it work best". The best candidate on the
eval documents is shown too, labelled optimistic (chosen on the rows it is reported on).
"""

from __future__ import annotations

from dsteer_eval.report.card import row_verdicts
from dsteer_eval.report.dose_response import dose_response
from dsteer_eval.stats.bootstrap import N_RESAMPLES, SEED

SELECT_SUFFIX = "_select"
DEFAULT_ALPHAS = {"dpo": -1.0, "base": 1.0}


def selection_pairs(tasks) -> list[tuple[str, str]]:
    """``(eval task, selection task)`` for every ``T`` with ``T_select`` among ``tasks``."""
    names = set(tasks)
    return [(t[: -len(SELECT_SUFFIX)], t) for t in sorted(names)
            if t.endswith(SELECT_SUFFIX) and t[: -len(SELECT_SUFFIX)] in names]


def where(sweeps, task: str, select_task: str, metric: str, *, alphas: dict | None = None, curve=None,
          n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """``sweeps``: ``[(label, SweepData)]``; every (sweep, layer) with both tasks at the side's α is a candidate
    (module docstring). ``curve(data, task, metric)``: the dose-response of a sweep's task (default: computed
    here; the report passes the curves it already has)."""
    if curve is None:
        def curve(data, name, which):
            return dose_response(data, name, which, n_resamples=n_resamples, seed=seed)
    alphas = {**DEFAULT_ALPHAS, **(alphas or {})}
    out = {"task": task, "select_task": select_task, "metric": metric, "sides": {}}
    curves = [(label, curve(data, task, metric), curve(data, select_task, metric))
              for label, data in sweeps if task in data.tasks and select_task in data.tasks]
    for side, alpha in alphas.items():
        candidates = []
        for label, evaluated, selecting in curves:
            gap = evaluated.get("gap")
            gap_shown = bool(gap and (gap["low"] > 0 or gap["high"] < 0))
            chosen_by = {str(r["layer"]): r for r in (selecting["sides"].get(side) or {}).get("rows", [])
                         if r["alpha"] == alpha}
            for row in (evaluated["sides"].get(side) or {}).get("rows", []):
                pick = chosen_by.get(str(row["layer"]))
                if row["alpha"] != alpha or pick is None:
                    continue
                candidates.append({"label": label, "layer": row["layer"], "alpha": alpha, "point": row["point"],
                                   "select": pick["closure"], "select_documents": pick["documents"],
                                   "eval": row["closure"], "documents": row["documents"],
                                   "random_band": row["random_band"], "random_mean": row["random_mean"],
                                   "rank": row["rank"], "beyond_ceiling": row["beyond_ceiling"],
                                   "verdicts": row_verdicts(row, gap_shown)})
        eligible = [c for c in candidates if c["select"]["fraction"] is not None and not c["beyond_ceiling"]]
        chosen = max(eligible, key=lambda c: c["select"]["fraction"]) if eligible else None
        scored = [c for c in candidates if c["eval"]["fraction"] is not None and not c["beyond_ceiling"]]
        best = max(scored, key=lambda c: c["eval"]["fraction"]) if scored else None
        for c in candidates:
            c["chosen"] = c is chosen
        out["sides"][side] = {"alpha": alpha, "candidates": candidates,
                              "chosen": None if chosen is None else _brief(chosen),
                              "best_on_eval": None if best is None else {**_brief(best),
                                                                         "note": "chosen on eval rows: optimistic"}}
    return out


def _brief(c: dict) -> dict:
    return {"label": c["label"], "layer": c["layer"], "point": c["point"], "select_fraction": c["select"]["fraction"],
            "eval": c["eval"], "rank": c["rank"], "verdicts": c["verdicts"]}
