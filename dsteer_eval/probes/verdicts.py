"""The probe report's verdicts: D-STEER claims judged against their controls, from numbers only.

:func:`probe_verdicts` takes per-item numbers (per prompt or per preference pair, the same items on
both sides) and returns one verdict per claim whose numbers are present (:data:`CLAIMS`). Two kinds:

* ``mean`` claims compare per-item values xᵢ (DPO) and yᵢ (control) on the same item:
  :func:`~dsteer_eval.stats.bootstrap.paired_bootstrap` of mean(x − y). Items where either value is
  not finite are dropped and counted (``dropped``).
* ``statistic`` claims compare a statistic of the whole sample (a KL-reduction fraction, the top-1
  energy share of ΔH) that has no per-item value: :func:`statistic_bootstrap` resamples the item
  indices (the same indices for DPO and control, so the comparison stays paired), recomputes both
  statistics on every resample and takes the percentile CI of their difference.

The verdict rule is :func:`dsteer_eval.stats.verdicts.judge` (supported / contradicted / not shown
by whether the 95 % CI excludes 0, on which side). :func:`verdicts_markdown` renders
``verdicts.md`` from a probe report: the data, layer and positions, the verdict table, what each row
compares, and the headline statistics beside their null, random and i.i.d. baselines.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dsteer_eval.stats.bootstrap import CONFIDENCE, N_RESAMPLES, SEED, PairedDelta, CHUNK, paired_bootstrap
from dsteer_eval.probes.registry import Claim
from dsteer_eval.probes.suite import CLAIMS  # noqa: F401 (every registered claim, re-exported)
from dsteer_eval.stats.verdicts import Verdict, markdown, verdict


# the claims are declared by the probes that make their controls (dsteer_eval.probes.suite); CLAIMS is them all


# ------------------------------------------------------------------ statistics
def _reduction(steered: np.ndarray, unsteered: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """1 − mean(steered)/mean(unsteered) over each row of resampled indices ``idx`` (k, n)."""
    den = unsteered[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - steered[idx].mean(axis=1) / den


def _top1(matrix: np.ndarray, idx: np.ndarray, centred: bool, iterations: int = 300) -> np.ndarray:
    """Top-1 energy share σ1²/Σσ² of the rows ``idx`` (k, n) of ``matrix`` (n × d), per resample.

    A resample is the count cᵢ of each row; with D = diag(√c), G = MMᵀ and P = I − √c√cᵀ/n (centred;
    else P = I), the resampled matrix's σ² are the eigenvalues of P D G D P. σ1² = its top eigenvalue,
    by power iteration from the full sample's top right singular vector (Rayleigh quotient);
    Σσ² = its trace = Σ cᵢGᵢᵢ (− cᵀGc/n centred).
    """
    m = np.asarray(matrix, dtype=np.float64)
    n, k = m.shape[0], idx.shape[0]
    counts = np.zeros((k, n))
    np.add.at(counts, (np.arange(k)[:, None], idx), 1.0)
    sq = np.sqrt(counts)
    gram = m @ m.T

    def project(x):
        return x - sq * (sq * x).sum(1, keepdims=True) / n if centred else x

    def apply(x):
        return project(sq * ((sq * project(x)) @ gram))

    full = m - m.mean(0) if centred else m
    u1 = np.linalg.svd(full, full_matrices=False)[2][0]
    x = project(sq * (m @ u1)[None, :])
    for _ in range(iterations):
        w = apply(x)
        norm = np.linalg.norm(w, axis=1, keepdims=True)
        x = np.where(norm > 0, w / np.where(norm > 0, norm, 1.0), x)
    total = counts @ np.diag(gram)
    if centred:
        total = total - ((counts @ gram) * counts).sum(1) / n
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample of one repeated row: 0/0, dropped
        top = (apply(x) * x).sum(1) / (x * x).sum(1)
        return top / total


def _stat_fn(claim: Claim, numbers: dict, side: tuple[str, ...]) -> Callable[[np.ndarray], np.ndarray]:
    arrays = [np.asarray(numbers[k], dtype=np.float64) for k in side]
    if claim.fn == "reduction":
        return lambda idx: _reduction(arrays[0], arrays[1], idx)
    if claim.fn in ("top1", "top1_centred"):
        return lambda idx: _top1(arrays[0], idx, claim.fn == "top1_centred")
    raise ValueError(f"unknown statistic {claim.fn!r}")


def statistic_bootstrap(fx: Callable[[np.ndarray], np.ndarray], fy: Callable[[np.ndarray], np.ndarray], n: int, *,
                        n_resamples: int = N_RESAMPLES, seed: int = SEED,
                        confidence: float = CONFIDENCE) -> tuple[PairedDelta, float, float]:
    """Paired percentile bootstrap of fx − fy, statistics of a whole sample of n items.

    ``fx``/``fy`` map a (k, n) array of item indices to k statistic values. The indices are drawn
    exactly as :func:`~dsteer_eval.stats.bootstrap.bootstrap_means` draws them (seeded
    ``default_rng``, chunks of 256 resamples) and the same resample feeds both sides. Resamples where
    either statistic is not finite are dropped. Returns (PairedDelta, fx(all), fy(all)).
    """
    if n < 1:
        raise ValueError("statistic_bootstrap: no items")
    everything = np.arange(n)[None, :]
    x_all, y_all = float(fx(everything)[0]), float(fy(everything)[0])
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n_resamples, CHUNK):
        k = min(CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        diffs.append(fx(idx) - fy(idx))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    if not d.size or not (math.isfinite(x_all) and math.isfinite(y_all)):
        raise ValueError("statistic_bootstrap: the statistic is not finite on this sample")
    tail = (1 - confidence) / 2
    low, high = np.quantile(d, [tail, 1 - tail])
    return PairedDelta(n, x_all - y_all, float(low), float(high), n_resamples, seed, confidence), x_all, y_all


# ------------------------------------------------------------------ verdicts
def _judge(claim: Claim, numbers: dict, n_resamples: int, seed: int):
    if claim.kind == "mean":
        x = np.asarray(numbers[claim.x[0]], dtype=np.float64).ravel()
        y = np.zeros_like(x) if claim.y is None else np.asarray(numbers[claim.y[0]], dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"claim {claim.key}: {claim.x[0]} and {claim.y[0]} are not paired "
                             f"({x.shape[0]} vs {y.shape[0]} items)")
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if not len(x):
            return None
        delta = paired_bootstrap(x, y, n_resamples=n_resamples, seed=seed)
        return delta, float(x.mean()), float(y.mean()), int((~keep).sum())
    n = len(np.asarray(numbers[claim.x[0]]))
    if any(len(np.asarray(numbers[k])) != n for k in claim.x + claim.y):
        raise ValueError(f"claim {claim.key}: its numbers are not over the same {n} items")
    try:
        delta, x_all, y_all = statistic_bootstrap(_stat_fn(claim, numbers, claim.x),
                                                  _stat_fn(claim, numbers, claim.y), n, n_resamples=n_resamples,
                                                  seed=seed)
    except ValueError:  # undefined here (e.g. the centred spectrum of one prompt, a zero KL): no verdict
        return None
    return delta, x_all, y_all, 0


def probe_verdicts(numbers: dict, *, claims=CLAIMS, sites: dict | None = None, n_resamples: int = N_RESAMPLES,
                   seed: int = SEED) -> list[dict]:
    """One verdict dict per claim of ``claims`` (default: every registered one) whose numbers are all in ``numbers`` (a claim whose
    numbers are missing, all non-finite, or whose statistic is undefined on this sample is left out).

    ``numbers`` maps the names used in :data:`CLAIMS` to per-item arrays (``delta``/``delta_null``: N × d
    matrices). ``sites`` names the site of each claim's ``site`` ({"layer": 12, "final": 24}). Each dict
    is :meth:`Verdict.as_dict` plus ``key``, ``statistic``, ``layer``, ``position``, ``paired_over``,
    ``n`` and ``dropped`` (items with a non-finite value).
    """
    sites = sites or {}
    out = []
    for claim in claims:
        needed = claim.x + (claim.y or ())
        if any(numbers.get(k) is None for k in needed):
            continue
        judged = _judge(claim, numbers, n_resamples, seed)
        if judged is None:
            continue
        delta, effect, control, dropped = judged
        v = verdict(claim.claim, effect, control, delta, claim.expect)
        out.append({**v.as_dict(), "key": claim.key, "statistic": claim.statistic,
                    "layer": sites.get(claim.site, claim.site), "site": claim.site, "position": claim.position,
                    "paired_over": claim.over, "n": delta.n, "dropped": dropped, "kind": claim.kind})
    return out


# ------------------------------------------------------------------ markdown
def _text(x) -> str:
    """Text for a markdown table cell (a '|' would end the cell)."""
    return str(x).replace("|", "\\|")


def _cell(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return _text(x)
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def verdicts_markdown(report: dict) -> str:
    """``verdicts.md`` of a probe report (every number comes from ``report``)."""
    positions = report.get("positions", {})
    layer, final = report.get("layer"), report.get("num_layers")
    data, models, vector = report.get("data", {}), report.get("models", {}), report.get("vector", {})
    lines = ["# D-STEER probe verdicts", "",
             f"Generated by dsteer-eval {report.get('package_version', '')} from `probe_report.json` "
             f"({report.get('created', '')}); every verdict is computed from the numbers, none is typed by hand.", "",
             f"* models: base `{models.get('base')}`, DPO `{models.get('dpo')}`"
             f"{' (adapter)' if models.get('adapter') else ''}",
             f"* data: `{data.get('source') or '(not named)'}`: {data.get('prompts')} prompts, "
             f"{data.get('pairs')} pairs",
             f"* v̄: {vector.get('source', '')} ({'in-sample' if vector.get('in_sample') else 'from a file'})",
             f"* probe layer: {layer} (of {final}); `final` = site {final}, the post-norm state read by the head"]
    nulls = report.get("nulls") or {}
    if nulls.get("adapter"):
        a = nulls["adapter"]
        lines.append(f"* null adapter: {a['kind']}, seed {a['seed']}, scale {a['scale']:.4g}; mean ‖δ‖ at layer "
                     f"{a['site']}, last prompt token: DPO {a['target_mean_shift']:.4g}, null "
                     f"{a['null_mean_shift']:.4g}. v̄_null = the null's in-sample mean δ")
    elif nulls.get("error"):
        lines.append(f"* null adapter: not available ({nulls['error']})")
    elif not nulls:
        lines.append("* null adapter: not run (--no-nulls)")
    rnd = (report.get("controls") or {}).get("random_direction")
    if rnd:
        lines.append(f"* random controls: {rnd['count']} seeded norm-matched direction(s) r at layer {rnd['layer']} "
                     f"(dsteer_eval.steering.controls.random_direction, seed {rnd['seed']})")
    lines += ["* CI: 95 % paired percentile bootstrap (2000 resamples, seed 0) of DPO − control; "
              "**supported** = the CI excludes 0 on the predicted side, **contradicted** = on the other side, "
              "**not shown** = the CI contains 0",
              "* positions (the `position` column below):"]
    lines += [f"  * `{key}`: {text}" for key, text in positions.items()]
    lines.append("")
    verdicts = report.get("verdicts") or []
    lines += ["## Verdicts", ""]
    if verdicts:
        rows = [Verdict(v["claim"], v["effect"], v["control"], v["delta"], v["expect"], v["verdict"], v.get("note", ""))
                for v in verdicts]
        lines.append(markdown(rows))
        lines += ["## What each row compares", "",
                  "| claim | statistic | layer | position | paired over | n (dropped) | bootstrap |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        how = {"mean": "per-item mean of DPO − control",
               "statistic": "statistic recomputed on resampled items, same indices both sides"}
        for v in verdicts:
            where = "final" if v["site"] == "final" else f"{v['layer']}"
            lines.append(f"| {_text(v['claim'])} | {_text(v['statistic'])} | {where} | `{v['position']}` "
                         f"| {v['paired_over']} | {v['n']} ({v['dropped']}) | {how[v['kind']]} |")
        lines.append("")
    else:
        lines += ["No verdict could be computed (no controls were run).", ""]
    base = report.get("baselines") or []
    if base:
        lines += ["## Headline statistics beside their baselines", "",
                  "| statistic | layer | position | DPO | null adapter | random direction | relabelled pairs "
                  "| i.i.d. expectation |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in base:
            iid = _cell(r.get("iid"))
            if r.get("iid_formula"):
                iid = f"{iid} ({r['iid_formula']})"
            lines.append(f"| {_text(r['statistic'])} | {r['layer']} | `{r['position']}` | "
                         f"{_cell(r.get('dpo'))} | {_cell(r.get('null'))} | {_cell(r.get('random'))} | "
                         f"{_cell(r.get('relabelled'))} | {iid} |")
        lines.append("")
    return "\n".join(lines) + "\n"
