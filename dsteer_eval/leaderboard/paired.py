"""Paired statistics for the leaderboard: every effect beside its reference and its controls.

Rows are told apart by their model args (see :func:`role`):

* the **DPO side** — the model as given (with its adapter); its α=0 row is the reference of its steered rows;
* the **base side** — ``peft=none`` (the adapter switched off); the base α=0 row's reference is the DPO α=0 row;
* **controls** — ``control=random:<i>``: the same layer and α with a norm-matched random direction; a steered
  row's controls are averaged per document.

For every metric that lm-eval aggregates as a plain mean, per-document values come from the unit's
``per_doc.json`` (written by every sweep unit) or from a ``--log_samples`` file beside the results
(plain ``lm_eval`` folders), matched by ``doc_id``. Each steered row gets

* ``vs_ref``: mean(row − reference) with a seeded paired bootstrap CI (:mod:`dsteer_eval.stats.bootstrap`);
* ``vs_control``: mean(row − mean of its K controls) with its CI, and the controls' own means (mean, sd);
* ``conditioned``: ``vs_ref`` over the documents where the base and DPO α=0 rows differ
  (:mod:`dsteer_eval.stats.conditioned`), with their count.

Then the D-STEER claims, with verdicts computed (never typed) by the same rules and words as the report's
verdict card (:mod:`dsteer_eval.stats.gap_verdicts`): (a) base and DPO differ (the gap's CI excludes 0);
(b) DPO − α·v (α < 0) moves the metric back toward the base, and (b½) by at least half the gap; (c) base + α·v
(α > 0) moves it toward DPO, and (c½) by at least half; (d) v does so more than the norm-matched random
directions at the same layer and α. (b)/(c) are *supported* when the CI of the fraction of the gap closed lies
above 0 (*wrong way* below it); (b½)/(c½) when it lies at or above ½ (*contradicted* below, *overshoot* above
1); (d) is decided only for a v that moves toward the target and with K ≥ 19 random directions (else *not
decided* / *underpowered*), by v's rank by distance to the target among them (empirical p ≤ 0.05), the paired
CI against the controls' per-document mean beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dsteer_eval.stats.bootstrap import PairedDelta, finite_docs, finite_pairs, paired_bootstrap
from dsteer_eval.stats.conditioned import conditioned_docs
from dsteer_eval.stats.gap import gap_closure
from dsteer_eval.stats.gap_verdicts import gap_verdicts, rank_by_distance
from dsteer_eval.stats.verdicts import NOT_SHOWN, Verdict, verdict



@dataclass(frozen=True)
class Role:
    family: tuple  # model args without peft/control/control_seed: a DPO row and its base/control rows share it
    side: str  # "dpo" | "base"
    control: str | None  # "random:<i>" or None


def role(key) -> Role:
    args = dict(key.identity)
    control = args.pop("control", None)
    args.pop("control_seed", None)  # a random control's seed (the sweep's, dsteer_eval.sweep.control_seed)
    side = "base" if str(args.get("peft", "")).lower() == "none" else "dpo"
    args.pop("peft", None)
    return Role((key.source, tuple(sorted(args.items()))), side, control)


def doc_values(results_path: Path, task: str) -> dict | None:
    """``{"metrics": {metric: {doc_id: value}}, "resps": {doc_id: [...]}}`` for ``task`` from the unit's
    ``per_doc.json`` or a samples file beside ``results_path``; None when neither exists."""
    folder = Path(results_path).parent
    per_doc = folder / "per_doc.json"
    if per_doc.is_file():
        try:
            found = json.loads(per_doc.read_text()).get("tasks", {}).get(task)
        except (OSError, ValueError, AttributeError):
            found = None
        if isinstance(found, dict):
            ids = found.get("doc_id", [])
            return {"metrics": {m: dict(zip(ids, vals)) for m, vals in found.get("metrics", {}).items()},
                    "resps": dict(zip(ids, found.get("resps", [])))}
    date = Path(results_path).stem.removeprefix("results_")
    samples = sorted(folder.glob(f"samples_{task}_{date}.jsonl")) or sorted(folder.glob(f"samples_{task}_*.jsonl"))
    if not samples:
        return None
    metrics: dict[str, dict] = {}
    resps: dict = {}
    try:
        for line in samples[-1].read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            doc = row["doc_id"]
            if row.get("filter", "none") != "none" and doc in resps:
                continue  # one filter per document: "none" where lm-eval has it, else the first seen
            resps[doc] = [r[0] if isinstance(r, list) and r and isinstance(r[0], (int, float)) else r
                          for r in row.get("filtered_resps", [])]
            for m in row.get("metrics", []):
                value = row.get(m)
                metrics.setdefault(m, {})[doc] = float(value) if isinstance(value, (bool, int, float)) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"metrics": metrics, "resps": resps}


@dataclass
class PairedRow:
    label: str
    key: object = None  # the row's RowKey
    reference: str | None = None
    vs_ref: PairedDelta | None = None
    vs_control: PairedDelta | None = None
    controls: dict = field(default_factory=dict)  # {"k", "mean", "sd"} of the controls' own means
    control_keys: list = field(default_factory=list)  # the controls' row keys (for the rank of claim (d))
    conditioned: PairedDelta | None = None
    n_conditioned: int | None = None
    dropped: int = 0  # documents without a finite value on one side (incl. those that do not report the metric)

    def as_dict(self) -> dict:
        d = lambda x: None if x is None else x.as_dict()  # noqa: E731
        return {"label": self.label, "reference": self.reference, "vs_ref": d(self.vs_ref),
                "vs_control": d(self.vs_control), "controls": self.controls, "conditioned": d(self.conditioned),
                "n_conditioned": self.n_conditioned, "dropped": self.dropped}


def _delta(x: dict, y: dict, docs=None) -> tuple[PairedDelta | None, int]:
    if docs is not None:
        x = {k: v for k, v in x.items() if k in docs}
    _, xs, ys, dropped = finite_pairs(x, y)
    return (paired_bootstrap(xs, ys) if xs else None), dropped


def _control_mean(values: list[dict]) -> dict:
    """Per document, the mean over the controls (documents where every control has a finite number)."""
    common = set.intersection(*(set(v) for v in values))
    out = {}
    for doc in common:
        xs = [v[doc] for v in values]
        if all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs):
            out[doc] = sum(xs) / len(xs)
    return out


def paired_statistics(rows, column, entries: dict) -> tuple[list[PairedRow], list[Verdict]]:
    """Paired rows and claims for one metric column; ``entries[row_key]`` is the row's results entry."""
    metric, task = column.metric, column.task
    values, resps = {}, {}
    for row in rows:
        entry = entries.get(row.key)
        if entry is None or entry.data.get("aggregation", {}).get(metric) != "mean":
            continue
        docs = doc_values(entry.path, task)
        if docs is not None and metric in docs["metrics"]:
            values[row.key], resps[row.key] = docs["metrics"][metric], docs["resps"]
    if not values:
        return [], []
    roles = {row.key: role(row.key) for row in rows if row.key in values}
    labels = {row.key: row.label for row in rows}

    def find(family, side, alpha, layer=None, control=None):
        for key, r in roles.items():
            if (r.family, r.side, r.control) == (family, side, control) and key.alpha == alpha and \
                    (alpha == 0 or key.layer == layer):
                return key
        return None

    out: list[PairedRow] = []
    claims: list[Verdict] = []
    for row in rows:
        key = row.key
        r = roles.get(key)
        if r is None or r.control is not None:
            continue
        dpo0 = find(r.family, "dpo", 0.0)
        base0 = find(r.family, "base", 0.0)
        cond = conditioned_docs(resps[base0], resps[dpo0]) if base0 and dpo0 else None
        if key.alpha == 0:
            if r.side == "dpo" or dpo0 is None:
                continue
            ref = dpo0  # the base model against the DPO model: the gap D-STEER explains
        else:
            ref = find(r.family, r.side, 0.0)
        item = PairedRow(labels[key], key, labels.get(ref))
        if ref is not None:
            item.vs_ref, item.dropped = _delta(values[key], values[ref])
            if cond is not None:
                item.conditioned, _ = _delta(values[key], values[ref], cond)
                item.n_conditioned = len(cond)
        controls = [k for k, c in roles.items() if c.family == r.family and c.side == r.side and c.control
                    and k.alpha == key.alpha and k.layer == key.layer]
        if controls and key.alpha != 0:
            item.control_keys = controls
            per_doc = _control_mean([values[k] for k in controls])
            item.vs_control, _ = _delta(values[key], per_doc)
            means = [_mean(values[k]) for k in controls]
            means = [m for m in means if m is not None]
            if means:
                mu = sum(means) / len(means)
                sd = (sum((m - mu) ** 2 for m in means) / (len(means) - 1)) ** 0.5 if len(means) > 1 else 0.0
                item.controls = {"k": len(controls), "mean": mu, "sd": sd}
        out.append(item)
        claims += _claims(column, key, r, item, base0, dpo0, values)
    return out, _with_gap_claim(column, roles, values, claims)


def _mean(values: dict) -> float | None:
    xs = [v for v in values.values() if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


def _gap(values, base0, dpo0) -> PairedDelta | None:
    return _delta(values[base0], values[dpo0])[0] if base0 and dpo0 else None


def _claims(column, key, r: Role, item: PairedRow, base0, dpo0, values) -> list[Verdict]:
    """Claims (b), (c), (d) for one steered row."""
    gap = _gap(values, base0, dpo0)
    if gap is None or gap.mean == 0 or key.alpha == 0 or item.vs_ref is None:
        return []
    moves_back = r.side == "dpo" and key.alpha < 0 or r.side == "base" and key.alpha > 0
    if not gap.significant:  # no base–DPO gap: "toward the base / DPO" has no direction to test
        if not moves_back:
            return []
        claim = "(b) DPO" if r.side == "dpo" else "(c) base"
        return [Verdict(f"{claim} layer {key.layer}, α={key.alpha:g} on {column.task}/{column.metric}",
                        _mean(values[key]), None, item.vs_ref.as_dict(), "higher", NOT_SHOWN,
                        "no significant base–DPO gap (claim a) to move along")]
    metric = f"{column.task}/{column.metric}"
    where = f"layer {key.layer}, α={key.alpha:g}"
    if r.side == "dpo" and key.alpha < 0:
        start, target, name, goal = dpo0, base0, f"(b) DPO {where} moves {metric} back toward the base", "the base"
    elif r.side == "base" and key.alpha > 0:
        start, target, name, goal = base0, dpo0, f"(c) base {where} moves {metric} toward DPO", "DPO"
    else:
        return []
    expect = "higher" if (_mean(values[target]) or 0) > (_mean(values[start]) or 0) else "lower"
    docs = finite_docs([values[key], values[start], values[target]])
    if len(docs) < 2:
        return []
    pick = lambda m, among=docs: [m[d] for d in among]  # noqa: E731
    closure = gap_closure(pick(values[key]), pick(values[start]), pick(values[target]))
    rank, shared = None, docs
    if item.control_keys:
        shared = finite_docs([values[key], values[start], values[target]] + [values[k] for k in item.control_keys])
        if len(shared) >= 2:
            compared = gap_closure(pick(values[key], shared), pick(values[start], shared), pick(values[target], shared))
            fractions = [gap_closure(pick(values[k], shared), pick(values[start], shared),
                                     pick(values[target], shared)).fraction for k in item.control_keys]
            fractions = [f for f in fractions if f is not None]
            if compared.fraction is not None and fractions:
                rank = rank_by_distance(compared.fraction, fractions)
    g = closure.gap
    words = gap_verdicts(gap_mean=g.mean, gap_low=g.low, gap_high=g.high, fraction=closure.fraction,
                         low=closure.low, high=closure.high, rank=rank)
    frac = "—" if closure.fraction is None else \
        f"{closure.fraction:.2f} [{closure.low:.2f}, {closure.high:.2f}] of the gap"
    effect, control = _mean(values[key]), _mean(values[start])
    ref = item.vs_ref.as_dict()
    out = [Verdict(name, effect, control, ref, expect, words.moves, f"fraction {frac}"),
           Verdict(f"{name[:3]}½ {name[4:]} by at least half the gap", effect, control, ref, expect, words.half,
                   f"fraction {frac}: {words.reasons['half']}")]
    if item.vs_control is not None:
        label = "—" if rank is None else f"rank {rank.label} by distance to the target, p = {rank.p_value:.3f}" + \
            ("" if rank.z is None else f", z = {rank.z:+.1f}")
        out.append(Verdict(f"(d) at {'DPO' if r.side == 'dpo' else 'base'} {where}, v moves {metric} toward {goal} "
                           f"more than random directions", effect, item.controls.get("mean"),
                           item.vs_control.as_dict(), expect, words.vs_random_text(rank),
                           label if words.vs_random in ("supported", "not shown") else
                           f"{label}; {words.reasons['vs_random']}"))
    return out


def _with_gap_claim(column, roles, values, claims) -> list[Verdict]:
    """Claim (a) first, once per family that has both α=0 rows."""
    out = []
    families = {r.family for r in roles.values()}
    for family in sorted(families, key=str):
        base0 = next((k for k, r in roles.items() if r.family == family and r.side == "base" and r.control is None
                      and k.alpha == 0), None)
        dpo0 = next((k for k, r in roles.items() if r.family == family and r.side == "dpo" and r.control is None
                     and k.alpha == 0), None)
        gap = _gap(values, base0, dpo0)
        if gap is not None:
            expect = "higher" if gap.mean >= 0 else "lower"
            out.append(verdict(f"(a) base and DPO differ on {column.task}/{column.metric}",
                               _mean(values[base0]), _mean(values[dpo0]), gap, expect))
    return out + claims
