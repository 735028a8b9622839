"""Behaviour along the grid: what the steered model *does*, per side and α, for a generation task of a sweep.

For every point of a side (α = 0 and each v̄ point, by layer and |α|) and each of its K random directions:

* the task's **rates** (per-document metrics such as ``refusal_rate`` on harmful requests and ``answer_rate``
  on harmless questions): the mean over the documents that have one — degenerate outputs carry none, they are
  screened out and counted, never averaged in — with a 95 % percentile-bootstrap CI, and the paired change
  from the same side's α = 0 on the documents scored at both (its CI);
* the **degenerate share** (mean of ``n_degenerate``: empty, garbled or looping outputs);
* **fidelity to the unsteered outputs** (the paper's oversteering signal): sentence BLEU (sacrebleu, 0–100) and
  ROUGE-L F1 (rouge-score, ×100) of each document's reply against the same side's α = 0 reply on the same
  document, over every document (a degenerate reply counts, and scores low: that is the signal), mean and CI.

The random directions give a band (min–max of their means) and mean for each of these at the same α and layer.
"""

from __future__ import annotations

import numpy as np

from dsteer_eval.metrics.behaviour import VALIDATION_SPLIT, VERSION
from dsteer_eval.metrics.behaviour_validation import (BehaviourInputError, classify_lines, labelled_set_path,
                                                      read_lines, validate)
from dsteer_eval.metrics.overlap import bleu_rouge_l
from dsteer_eval.report.sweep_data import SweepData
from dsteer_eval.stats.bootstrap import N_RESAMPLES, SEED, finite_docs, finite_number, paired_bootstrap

FIDELITY = ("bleu", "rougeL")


def fidelity(reply: str, unsteered: str) -> dict:
    """Sentence BLEU and ROUGE-L F1 (both 0–100) of ``reply`` against the unsteered reply; identical texts give
    100 and 100, an empty reply against a non-empty one 0 and 0."""
    reply, unsteered = (reply or "").strip(), (unsteered or "").strip()
    if reply == unsteered:
        return {"bleu": 100.0, "rougeL": 100.0}
    if not reply or not unsteered:
        return {"bleu": 0.0, "rougeL": 0.0}
    return bleu_rouge_l(reply, unsteered)


def _mean_ci(values: list[float], n_resamples: int, seed: int) -> dict | None:
    if not values:
        return None
    ci = paired_bootstrap(values, [0.0] * len(values), n_resamples=n_resamples, seed=seed)
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}


def rate_metrics(data: SweepData, task: str) -> list[str]:
    """The task's per-document rates: metrics with a finite value somewhere (``n_*`` counts left out)."""
    found = set()
    for (point, name), metrics in data.values.items():
        if name == task:
            found |= {m for m, vals in metrics.items()
                      if not m.startswith("n_") and any(finite_number(v) for v in vals.values())}
    return sorted(found)


def _point_numbers(data: SweepData, point: str, start: str, task: str, rates, n_resamples: int, seed: int) -> dict:
    out = {"rates": {}, "change": {}, "fidelity": {}, "degenerate": None}
    for metric in rates:
        here = data.metric(point, task, metric) or {}
        docs = finite_docs([here])
        out["rates"][metric] = _mean_ci([float(here[d]) for d in docs], n_resamples, seed)
        there = data.metric(start, task, metric) or {}
        both = finite_docs([here, there])
        if point != start and both:
            delta = paired_bootstrap([here[d] for d in both], [there[d] for d in both], n_resamples=n_resamples,
                                     seed=seed)
            out["change"][metric] = {"mean": delta.mean, "low": delta.low, "high": delta.high, "n": delta.n}
    degenerate = data.metric(point, task, "n_degenerate") or {}
    flags = [float(v) for v in degenerate.values() if finite_number(v)]
    out["degenerate"] = {"share": sum(flags) / len(flags), "count": int(sum(flags)), "n": len(flags)} if flags else None
    texts, unsteered = data.texts.get((point, task), {}), data.texts.get((start, task), {})
    docs = sorted(set(texts) & set(unsteered))
    if point != start and docs:
        scores = [fidelity(texts[d], unsteered[d]) for d in docs]
        for name in FIDELITY:
            out["fidelity"][name] = _mean_ci([s[name] for s in scores], n_resamples, seed)
    return out


CLASSIFIED_RATES = {"noncomply_rate": "harmful", "refusal_rate": "harmful", "answer_rate": "harmless",
                    "over_refusal_rate": "harmless"}


def classifier_validation() -> dict:
    """The behaviour classifier's agreement with the shipped labelled set's part it was never written on
    (:mod:`dsteer_eval.metrics.behaviour_validation`), and per kind whether it is validated."""
    lines = read_lines(labelled_set_path(), labelled=True)
    labels, name, failed = classify_lines(lines)
    try:
        table = validate(lines, labels, classifier=name, failed=failed, split=VALIDATION_SPLIT)
    except BehaviourInputError:
        return {"classifier": VERSION, "split": VALIDATION_SPLIT, "kinds": {},
                "note": f"no labelled replies in {VALIDATION_SPLIT} yet: {VERSION} is unvalidated"}
    return table


def _band(numbers: list[dict], pick) -> dict | None:
    values = [v for v in (pick(n) for n in numbers) if v is not None]
    if not values:
        return None
    return {"low": min(values), "high": max(values), "mean": float(np.mean(values)), "k": len(values)}


def behaviour(data: SweepData, task: str, *, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict | None:
    """The behaviour grid of a generation ``task`` (module docstring); None when the sweep kept no generated
    texts for it (a log-likelihood task)."""
    if not any(t == task and texts for (_, t), texts in data.texts.items()):
        return None
    rates = rate_metrics(data, task)
    if "answer_rate" in rates and "over_refusal_rate" in rates:
        rates.remove("over_refusal_rate")  # the refusal tasks: 1 − answer_rate, document by document
    twins = data.same_as(task, sorted(rates, key=lambda m: (m != "noncomply_rate", m)))
    rates = [m for m in rates if m not in twins]  # a rate equal to another at every document is shown once
    out = {"task": task, "rates": rates, "same_as": twins, "fidelity": list(FIDELITY), "sides": {}}
    if any(m in CLASSIFIED_RATES for m in rates):
        check = classifier_validation()
        out["classifier"] = check
        out["unvalidated"] = sorted(m for m in rates if m in CLASSIFIED_RATES and not
                                    (check["kinds"].get(CLASSIFIED_RATES[m]) or {}).get("validated"))
    for side in ("dpo", "base"):
        start = data.find(side, 0.0)
        if start is None or (start.name, task) not in data.values:
            continue
        steered = sorted((p for p in data.points if p.side == side and p.control is None and p.alpha != 0
                          and (p.name, task) in data.values), key=lambda p: (str(p.layer), abs(p.alpha)))
        rows = [{"point": start.name, "layer": None, "alpha": 0.0,
                 **_point_numbers(data, start.name, start.name, task, rates, n_resamples, seed), "random": None}]
        for point in steered:
            controls = [p for p in data.points if p.side == side and p.control is not None and p.alpha == point.alpha
                        and str(p.layer) == str(point.layer) and (p.name, task) in data.values]
            numbers = [_point_numbers(data, c.name, start.name, task, rates, n_resamples, seed) for c in controls]
            random = {"k": len(numbers),
                      "rates": {m: _band(numbers, lambda n, m=m: (n["rates"].get(m) or {}).get("mean")) for m in rates},
                      "fidelity": {f: _band(numbers, lambda n, f=f: (n["fidelity"].get(f) or {}).get("mean"))
                                   for f in FIDELITY},
                      "degenerate": _band(numbers, lambda n: (n["degenerate"] or {}).get("share"))} if numbers else None
            rows.append({"point": point.name, "layer": point.layer, "alpha": point.alpha,
                         **_point_numbers(data, point.name, start.name, task, rates, n_resamples, seed),
                         "random": random})
        out["sides"][side] = {"start": start.name, "rows": rows}
    return out
