"""Dose-response of a base/DPO pair under steering, on both sides, against random directions.

For one task metric of a finished sweep (:mod:`dsteer_eval.report.sweep_data`), every steered point of a
side gets the fraction of the base–DPO gap it closes (:func:`dsteer_eval.stats.gap.gap_closure`):

* **DPO side** (the model with its adapter, α < 0: DPO − |α|·v̄): start = DPO at α = 0, target = base at α = 0
  ("how much of DPO does −v̄ undo?");
* **base side** (``peft=none``, α > 0: base + α·v̄): start = base at α = 0, target = DPO at α = 0
  ("how much of DPO does +v̄ install?").

Beside it, each of the K random directions of the same norm at the same layer and α (``--controls random:K``)
gets the same fraction on the same documents: their band (min–max), their mean, and v̄'s rank among them
with the empirical p-value, ranked by distance to the target |1 − f| (an overshoot is not more;
:func:`dsteer_eval.stats.gap_verdicts.rank_by_distance`).  Generation tasks add the
degeneration rate of the point (mean of ``n_degenerate``: outputs screened out as empty, garbled or
looping), and a measured ceiling (``ceiling.json``) marks the points beyond it, on the layer and side it was
measured for only (:func:`ceiling_scope`).  Every number is computed on the documents with a finite value at
every point it compares, and says how many: v̄'s fraction on those finite at v̄ and both α = 0 points, the
comparison with the random directions on those finite at every one of them as well.
"""

from __future__ import annotations

from dsteer_eval.report.sweep_data import SweepData
from dsteer_eval.stats.bootstrap import N_RESAMPLES, SEED, finite_docs, finite_number, paired_bootstrap
from dsteer_eval.stats.gap import gap_closure
from dsteer_eval.stats.gap_verdicts import rank_by_distance

SIDES = {"dpo": ("base", "−v̄ on the DPO model: fraction of the gap taken back toward the base"),
         "base": ("dpo", "+v̄ on the base model: fraction of the gap installed toward DPO")}


def _rate(data: SweepData, point: str, task: str, metric: str = "n_degenerate") -> float | None:
    values = data.metric(point, task, metric)
    if not values:
        return None
    xs = [float(v) for v in values.values() if finite_number(v)]
    return sum(xs) / len(xs) if xs else None


def ceiling_scope(data: SweepData) -> dict | None:
    """Where the sweep's ``ceiling.json`` holds: ``{"side", "layer"}``, or None without one.

    ``dsteer-eval ceiling`` measures one vector at one layer (``layer``) on the model the sweep's --model-args
    load, i.e. the DPO side's model with its adapter (``peft`` recorded); a ceiling recorded as measured
    without an adapter (``"peft": null``) belongs to the base side when the sweep has one. A file without a
    layer holds for a one-layer sweep only."""
    if not isinstance(data.ceiling, dict):
        return None
    bare = "peft" in data.ceiling and data.ceiling["peft"] is None
    side = "base" if bare and any(p.side == "base" for p in data.points) else "dpo"
    layer = data.ceiling.get("layer")
    if layer is None:
        layers = {p.layer for p in data.points if p.layer is not None}
        layer = next(iter(layers)) if len(layers) == 1 else None
    return {"side": side, "layer": None if layer is None else str(layer)}


def _beyond(data: SweepData, point) -> bool | None:
    """Whether ``point`` lies past the measured ceiling: None where no ceiling was measured (another layer,
    the other side, no ceiling.json)."""
    scope = ceiling_scope(data)
    if scope is None or scope["layer"] is None or point.side != scope["side"] or str(point.layer) != scope["layer"]:
        return None
    sign = "negative" if point.alpha < 0 else "positive"
    try:
        limit = float(data.ceiling[sign]["ceiling"])
    except (KeyError, TypeError, ValueError):
        return None
    return abs(point.alpha) > limit


def per_document(moved, start, target, bins: int = 12) -> dict:
    """The per-document view (as steering-bench reports it): each document's movement in units of the mean
    gap, (mᵢ − sᵢ)/mean(t − s); the share that moved the wrong way (away from the other side) and the
    histogram of the movements (edges from −1.5 to 1.5 gaps, the outer bins open)."""
    gap = sum(t - s for s, t in zip(start, target)) / len(start)
    if gap == 0:
        return {"wrong_way": None, "histogram": None}
    units = [(m - s) / gap for m, s in zip(moved, start)]
    edges = [-1.5 + 3.0 * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for u in units:
        i = min(bins - 1, max(0, int((u + 1.5) / 3.0 * bins)))
        counts[i] += 1
    return {"wrong_way": sum(u < 0 for u in units) / len(units), "histogram": {"edges": edges, "counts": counts}}


def dose_response(data: SweepData, task: str, metric: str, *, n_resamples: int = N_RESAMPLES,
                  seed: int = SEED) -> dict:
    """The curves of ``task``/``metric`` on both sides (module docstring), as plain data. Every point without
    a finite value (a failed or missing unit, all NaN) is named in ``missing`` as ``"<point> (<why>)"``; the
    curve is made of the points it has. v̄'s fraction at a point uses the documents finite at v̄ and at both
    α = 0 points (``documents``); the random directions are compared with v̄ on the documents finite at every
    one of them too (``random_documents``, v̄ recomputed on them for the rank)."""
    base0, dpo0 = data.find("base", 0.0), data.find("dpo", 0.0)
    out = {"task": task, "metric": metric, "gap": None, "sides": {}, "missing": [],
           "ceiling_scope": ceiling_scope(data)}
    if base0 is None or dpo0 is None:
        out["missing"].append("the sweep has no unsteered point on " + ("both sides" if base0 is dpo0 is None else
                                                                      "the base side" if base0 is None else "the DPO side"))
        return out
    lacking = [(p.name, data.why_missing(p.name, task, metric)) for p in (dpo0, base0)]
    out["missing"] += [f"{name} ({why})" for name, why in lacking if why]
    if out["missing"]:
        return out
    b, d = data.metric(base0.name, task, metric), data.metric(dpo0.name, task, metric)
    docs = finite_docs([b, d])
    if len(docs) < 2:
        out["missing"].append(f"{dpo0.name} and {base0.name} (fewer than 2 documents with {metric} finite at both)")
        return out
    out["gap"] = {**paired_bootstrap([d[i] for i in docs], [b[i] for i in docs], n_resamples=n_resamples,
                                     seed=seed).as_dict(), "dpo_mean": sum(d[i] for i in docs) / len(docs),
                  "base_mean": sum(b[i] for i in docs) / len(docs)}
    for side, (other, meaning) in SIDES.items():
        start, target = (dpo0, base0) if side == "dpo" else (base0, dpo0)
        s, t = data.metric(start.name, task, metric), data.metric(target.name, task, metric)
        steered = sorted((p for p in data.points if p.side == side and p.control is None and p.alpha != 0),
                         key=lambda p: (str(p.layer), abs(p.alpha)))
        rows = []
        for point in steered:
            row = _row(data, point, task, metric, s, t, out["missing"], n_resamples=n_resamples, seed=seed)
            if row is not None:
                rows.append(row)
        out["sides"][side] = {"meaning": meaning, "start": start.name, "target": target.name,
                              "degeneration_rate_at_0": _rate(data, start.name, task), "rows": rows}
    return out


def _row(data: SweepData, point, task: str, metric: str, s: dict, t: dict, missing: list, *, n_resamples: int,
         seed: int) -> dict | None:
    """One steered point's row; what it lacks goes to ``missing``."""
    why = data.why_missing(point.name, task, metric)
    if why:
        missing.append(f"{point.name} ({why})")
        return None
    m = data.metric(point.name, task, metric)
    docs = finite_docs([m, s, t])
    if len(docs) < 2:
        missing.append(f"{point.name} (fewer than 2 documents with {metric} finite here and at α = 0 on both sides)")
        return None
    controls = sorted((p for p in data.points if p.side == point.side and p.control is not None
                       and p.alpha == point.alpha and str(p.layer) == str(point.layer)), key=lambda p: p.control)
    cmaps, lacking = [], []
    for c in controls:
        why = data.why_missing(c.name, task, metric)
        if why:
            lacking.append(c.name)
            missing.append(f"{c.name} ({why})")
        else:
            cmaps.append((c, data.metric(c.name, task, metric)))
    shared = finite_docs([m, s, t] + [cm for _, cm in cmaps]) if cmaps else docs
    if cmaps and len(shared) < 2:
        missing.append(f"{point.name}'s random directions (fewer than 2 documents finite at v̄ and every one of them)")
        lacking += [c.name for c, _ in cmaps]
        cmaps, shared = [], docs

    def pick(values, among=docs):
        return [values[i] for i in among]

    closure = gap_closure(pick(m), pick(s), pick(t), n_resamples=n_resamples, seed=seed)
    compared = closure if shared == docs else gap_closure(pick(m, shared), pick(s, shared), pick(t, shared),
                                                          n_resamples=n_resamples, seed=seed)
    randoms = []
    for c, cm in cmaps:
        r = gap_closure(pick(cm, shared), pick(s, shared), pick(t, shared), n_resamples=n_resamples, seed=seed)
        randoms.append({"control": c.control, "fraction": r.fraction})
    fractions = [r["fraction"] for r in randoms if r["fraction"] is not None]
    rank = (rank_by_distance(compared.fraction, fractions).as_dict()
            if compared.fraction is not None and fractions else None)
    random_wrong = [per_document(pick(cm, shared), pick(s, shared), pick(t, shared))["wrong_way"] for _, cm in cmaps]
    return {
        "per_document": per_document(pick(m), pick(s), pick(t)),
        "random_wrong_way": _mean(random_wrong),
        "point": point.name, "layer": point.layer, "alpha": point.alpha, "documents": len(docs),
        "random_documents": len(shared) if cmaps else None,
        "closure": closure.as_dict(), "random": randoms, "random_missing": lacking,
        "random_band": [min(fractions), max(fractions)] if fractions else None,
        "random_mean": sum(fractions) / len(fractions) if fractions else None,
        "rank": rank, "degeneration_rate": _rate(data, point.name, task),
        "random_degeneration_rate": _mean([_rate(data, c.name, task) for c, _ in cmaps]),
        "beyond_ceiling": _beyond(data, point),
    }


def _mean(values):
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


PROMPTED = {"base": ("decline", "the base model told to decline harmful requests"),
            "dpo": ("comply", "the DPO model told to comply")}


def prompting_rows(data: SweepData, prompted: SweepData, task: str, metric: str, *, n_resamples: int = N_RESAMPLES,
                   seed: int = SEED) -> dict:
    """The prompting baseline beside the steered rows: per side, the fraction of the gap that an instruction
    closes instead of v̄, read from ``prompted`` (a sweep of ``<task>_prompted_decline`` and
    ``<task>_prompted_comply`` at α = 0 on both sides: the same documents with the instruction in the first
    human turn), against the main sweep's own α = 0 points."""
    base0, dpo0 = data.find("base", 0.0), data.find("dpo", 0.0)
    out = {}
    for side, (which, meaning) in PROMPTED.items():
        name = f"{task}_prompted_{which}"
        there = prompted.find(side, 0.0)
        if base0 is None or dpo0 is None or there is None or name not in prompted.tasks:
            continue
        start, target = (dpo0, base0) if side == "dpo" else (base0, dpo0)
        m = prompted.metric(there.name, name, metric)
        s, t = data.metric(start.name, task, metric), data.metric(target.name, task, metric)
        if not (m and s and t):
            continue
        docs = finite_docs([m, s, t])
        if len(docs) < 2:
            continue
        closure = gap_closure([m[i] for i in docs], [s[i] for i in docs], [t[i] for i in docs],
                              n_resamples=n_resamples, seed=seed)
        out[side] = {"task": name, "instruction": which, "meaning": meaning, "documents": len(docs),
                     "closure": closure.as_dict(),
                     "per_document": per_document([m[i] for i in docs], [s[i] for i in docs], [t[i] for i in docs])}
    return out
