"""``dsteer-eval report``: read finished sweeps, compute the dose-response curves and the verdict card."""

from __future__ import annotations

import time

from dsteer_eval import __version__
from dsteer_eval.report.card import verdict_card
from dsteer_eval.report.dose_response import dose_response
from dsteer_eval.report.sweep_data import read_sweep
from dsteer_eval.stats.bootstrap import N_RESAMPLES


def build_report(sweep, *, tasks=None, metrics=None, title: str | None = None,
                 n_resamples: int = N_RESAMPLES) -> dict:
    """The report of one finished sweep folder: every (task, metric) with per-document values at every point
    (or the ``tasks``/``metrics`` named), both sides, v̄ against the sweep's random directions."""
    data = read_sweep(sweep)
    tasks = list(tasks or data.tasks)
    unknown = [t for t in tasks if t not in data.tasks]
    if unknown:
        raise ValueError(f"--tasks {','.join(unknown)}: not in the sweep {sweep} (it ran {', '.join(data.tasks)})")
    curves, missing = [], []
    for task in tasks:
        available = data.metrics(task)
        wanted = list(metrics) if metrics else available
        for metric in wanted:
            if metric not in available:
                missing.append(f"{task} / {metric}: no per-document values at every point (it has "
                               f"{', '.join(available) or 'none'})")
                continue
            curve = dose_response(data, task, metric, n_resamples=n_resamples)
            missing += [f"{task} / {metric}: {m}" for m in curve["missing"]]
            curves.append(curve)
    settings = data.settings
    args = str(settings.get("model_args", ""))
    position = next((kv.split("=", 1)[1] for kv in args.split(",") if kv.startswith("position=")), "all")
    return {"format": "dsteer-eval/report", "format_version": "1", "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "title": title or str(sweep), "sweeps": str(sweep), "model_args": args or "(the shipped pair)",
            "layers": sorted({str(p.layer) for p in data.points if p.layer is not None}), "position": position,
            "tasks": tasks, "ceiling": data.ceiling, "curves": curves, "card": verdict_card(curves),
            "missing": missing}
