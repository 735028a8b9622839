"""Where the direction works: the fraction of the gap closed by layer (and layer set, and sweep: e.g. one per
steered position) at one fixed α per side, with the choice made on other rows than the ones reported.

A sweep that ran a task ``T`` and its selection task ``T_select`` (the same metric on probe-part documents:
``dsteer_refusal_ll_select`` for ``dsteer_refusal_ll``) gives one **candidate** per (sweep, layer) at the side's
α (default −1 on the DPO side, +1 on the base side; v̄ of every layer is that layer's own mean DPO − base
difference, so α = ±1 is one full mean shift wherever it is added: the same *relative* strength at every
layer). Each candidate has its fraction on the selection documents and on the eval documents (CI, the random
directions' band, v̄'s rank). The **chosen** candidate is the one **nearest the target** (|1 − f| smallest) on
the selection documents among the *eligible* ones: its selection gap is shown, it moves toward the target there
(its fraction's CI lies above 0), it is within the strength ceiling and its outputs are at most half degenerate
(:data:`dsteer_eval.report.card.MAX_DEGENERATE`). The **runner-up** is reported beside it with the paired CI of
how much nearer the chosen one is (:func:`dsteer_eval.stats.gap.distance_difference`, on the selection
documents); when that CI contains 0 the choice is *not resolved* and the card says so. Its eval numbers are the
report's answer to "where does it work best". The best candidate on the eval documents (nearest the target
there) is shown too, labelled optimistic (chosen on the rows it is reported on). The report builds where-tables
only for continuous metrics (a 0/1 per-document metric such as accuracy can land on the base's value by chance
for a broken model).
"""

from __future__ import annotations

from dsteer_eval.report.card import MAX_DEGENERATE, row_verdicts
from dsteer_eval.report.dose_response import dose_response
from dsteer_eval.stats.bootstrap import N_RESAMPLES, SEED, finite_docs
from dsteer_eval.stats.gap import distance_difference
from dsteer_eval.stats.gap_verdicts import SUPPORTED, TARGET, gap_verdicts

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
    data_of = dict(sweeps)
    for side, alpha in alphas.items():
        candidates = []
        for label, evaluated, selecting in curves:
            gap = evaluated.get("gap")
            select_gap = selecting.get("gap") or {}
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
                                   "degeneration_rate": row.get("degeneration_rate"),
                                   "verdicts": row_verdicts(row, gap),
                                   "select_moves": gap_verdicts(
                                       gap_mean=select_gap.get("mean", 0.0), gap_low=select_gap.get("low", 0.0),
                                       gap_high=select_gap.get("high", 0.0), fraction=pick["closure"]["fraction"],
                                       low=pick["closure"]["low"], high=pick["closure"]["high"], rank=None).moves})
        for c in candidates:
            c["excluded"] = _excluded(c)
        eligible = sorted((c for c in candidates if not c["excluded"]),
                          key=lambda c: abs(TARGET - c["select"]["fraction"]))
        chosen = eligible[0] if eligible else None
        runner = eligible[1] if len(eligible) > 1 else None
        scored = [c for c in candidates if c["eval"]["fraction"] is not None and not c["beyond_ceiling"]
                  and c["verdicts"]["fraction_shown"]]
        best = min(scored, key=lambda c: abs(TARGET - c["eval"]["fraction"])) if scored else None
        for c in candidates:
            c["chosen"] = c is chosen
        difference = None
        if chosen is not None and runner is not None:
            difference = _difference(data_of, select_task, metric, side, chosen, runner, n_resamples, seed)
        out["sides"][side] = {"alpha": alpha, "candidates": candidates,
                              "chosen": None if chosen is None else _brief(chosen),
                              "runner_up": None if runner is None else {
                                  **_brief(runner), "difference": difference,
                                  "resolved": bool(difference and difference["resolved"])},
                              "best_on_eval": None if best is None else {**_brief(best),
                                                                         "note": "chosen on eval rows: optimistic"}}
    return out


def _excluded(c: dict) -> str | None:
    """Why a candidate may not be chosen, or None."""
    if c["select"]["fraction"] is None:
        return "no fraction on the selection rows"
    if c["select_moves"] != SUPPORTED:
        return f"on the selection rows it does not move toward the target ({c['select_moves']})"
    if c["beyond_ceiling"]:
        return "beyond the strength ceiling"
    if (c.get("degeneration_rate") or 0.0) > MAX_DEGENERATE:
        return "its outputs are mostly degenerate"
    return None


def _difference(data_of: dict, task: str, metric: str, side: str, a: dict, b: dict, n_resamples: int,
                seed: int) -> dict | None:
    """The paired CI of how much nearer the target ``a`` is than ``b`` on the selection documents."""
    def arrays(c):
        data = data_of[c["label"]]
        start, target = (data.find("dpo", 0.0), data.find("base", 0.0)) if side == "dpo" else \
            (data.find("base", 0.0), data.find("dpo", 0.0))
        return [data.metric(name, task, metric) or {} for name in (c["point"], start.name, target.name)]

    first, second = arrays(a), arrays(b)
    docs = finite_docs(first + second)
    if len(docs) < 2:
        return None
    found = distance_difference(tuple([m[d] for d in docs] for m in first), tuple([m[d] for d in docs] for m in second),
                                n_resamples=n_resamples, seed=seed)
    return None if found is None else found.as_dict()


def _brief(c: dict) -> dict:
    return {"label": c["label"], "layer": c["layer"], "point": c["point"], "select_fraction": c["select"]["fraction"],
            "eval": c["eval"], "rank": c["rank"], "verdicts": c["verdicts"]}


def continuous(data, task: str, metric: str) -> bool:
    """Whether ``metric`` takes values other than 0 and 1 somewhere in the sweep (a margin, not an accuracy)."""
    for (point, name), metrics in data.values.items():
        if name == task:
            for value in (metrics.get(metric) or {}).values():
                if isinstance(value, (int, float)) and value == value and value not in (0, 1):
                    return True
    return False
