"""Pairwise win-rate of each steered point over the alpha=0 point, for tasks that ask for it.

A task opts in with ``metadata: {winrate_criterion: helpfulness}`` in its YAML
(the G-Eval tasks do); the sweep keeps that task's samples at every point and
judges each point's answers against the unsteered answers in both orders
(:mod:`dsteer_eval.metrics.winrate`).  Results go to
``points/<point>/winrate/<task>.json``; existing ones are kept (resume).
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from dsteer_eval.common.output_folder import atomic_write_text
from dsteer_eval.common.redaction import redact
from dsteer_eval.metrics import judge as judges  # judges.get_judge: looked up at call time (a test replaces it)
from dsteer_eval.metrics.winrate import win_rate_from_samples
from dsteer_eval.sweep.units import unit_done, unit_folder


def _samples(folder: Path, task: str) -> Path | None:
    """The samples of ``task`` in a complete unit folder (never of a cut-off one)."""
    found = sorted(folder.glob(f"samples_{task}_*.jsonl")) if unit_done(folder) else []
    return found[-1] if found else None


def _criteria(folder: Path) -> dict[str, str]:
    """``{task: criterion}`` from the configs of a complete (point, task) results file."""
    files = sorted(folder.glob("results_*.json"))
    if not files or not unit_done(folder):
        return {}
    configs = json.loads(files[-1].read_text()).get("configs", {})
    return {name: c["metadata"]["winrate_criterion"] for name, c in configs.items()
            if (c.get("metadata") or {}).get("winrate_criterion")}


def sweep_winrates(plan, *, print_fn=print) -> int:
    """Judge every missing (point, task) win-rate; returns how many were written."""

    baseline = next((p for p in plan.points if p.alpha == 0), None)
    jobs = []
    for task in plan.tasks:
        criteria = _criteria(unit_folder(plan.out, baseline, task)) if baseline else {}
        for point in plan.points:
            if point is baseline:
                continue
            for name, criterion in criteria.items():
                target = plan.out / "points" / point.name / "winrate" / f"{name}.json"
                a = _samples(unit_folder(plan.out, point, task), name)
                b = _samples(unit_folder(plan.out, baseline, task), name)
                if not target.is_file() and a and b:
                    jobs.append((point, name, criterion, a, b, target))
    if not jobs:
        if baseline is None and plan.points:
            print_fn("sweep: no win-rates: they compare each point with alpha=0, which is not in --alphas")
        return 0

    judge = judges.get_judge()
    written = 0
    for point, name, criterion, a, b, target in tqdm(jobs, desc="win-rate vs alpha=0", unit="point"):
        try:
            result = win_rate_from_samples(judge, a, b, criterion).to_dict()
        except Exception as exc:  # noqa: BLE001 - a judge outage leaves a gap, never a number
            print_fn(f"sweep: win-rate of {point.name} on {name} failed ({redact(f'{type(exc).__name__}: {exc}')}); "
                     f"re-run the sweep to retry")
            continue
        result.update({"format": "dsteer-eval/winrate", "task": name, "baseline": "alpha=0",
                       "model_args": point.model_args(plan.base_args)})
        atomic_write_text(target, json.dumps(result, indent=1) + "\n")
        written += 1
    return written
