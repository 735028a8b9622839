"""``dsteer-eval report``: read finished sweeps, compute the dose-response curves and the verdict card."""

from __future__ import annotations

import time

from dsteer_eval import __version__
from dsteer_eval.common.redaction import redact_value
from dsteer_eval.report.behaviour import behaviour
from dsteer_eval.report.card import verdict_card
from dsteer_eval.report.dose_response import dose_response, prompting_rows
from dsteer_eval.report.same_model import check_same_model, recorded
from dsteer_eval.report.sweep_data import read_sweep
from dsteer_eval.report.where import continuous, selection_pairs, where
from dsteer_eval.stats.bootstrap import N_RESAMPLES


def build_report(sweeps, *, labels=None, tasks=None, metrics=None, title: str | None = None, prompting=None,
                 where_alphas: dict | None = None, n_resamples: int = N_RESAMPLES) -> dict:
    """The report of one or more finished sweep folders (e.g. the in-distribution v̄ and a vector from another
    distribution on the same pair, ``labels`` naming them): every (task, metric) with per-document values at
    some point (or the ``tasks``/``metrics`` named), both sides, v̄ against each sweep's random directions.
    ``prompting``: a sweep of the ``<task>_prompted_decline``/``_comply`` tasks at α = 0 (the prompting
    baseline, beside the steered rows). Generation tasks also get their behaviour grid
    (:mod:`dsteer_eval.report.behaviour`). A task ``T`` run with its selection task ``T_select`` gets the
    where-table (:mod:`dsteer_eval.report.where`: by layer and sweep at ``where_alphas``, the choice made on
    ``T_select``); ``T_select`` itself is a selection device, not a row of the card.

    A point without values is named in ``missing`` (``"<task> / <metric>: <point> (<why>)"``) and a sweep still
    being written in the card's ``running``; every string read from the sweeps is redacted (secrets in an
    older sweep.json's model_args never reach the report's files)."""
    sweeps = [sweeps] if isinstance(sweeps, (str, bytes)) or hasattr(sweeps, "__fspath__") else list(sweeps)
    if labels is not None and len(labels) != len(sweeps):
        raise ValueError(f"--labels: {len(labels)} label(s) for {len(sweeps)} sweep(s); give one per sweep")
    twice = sorted({label for label in labels or [] if list(labels).count(label) > 1})
    if twice:
        raise ValueError(f"--labels: {', '.join(map(repr, twice))} names more than one sweep; give each sweep its own "
                         f"label")
    curves, missing, layers, args, ceilings, behaviours, read, running = [], [], set(), [], [], [], [], []
    controls = []
    notes: list[str] = []  # what the page says once, e.g. a metric identical to another
    prompted = read_sweep(prompting) if prompting else None
    computed: dict = {}

    def curve(data, task, metric):  # each sweep's dose-response once, for the card and the where-table
        key = (id(data), task, metric)
        if key not in computed:
            computed[key] = dose_response(data, task, metric, n_resamples=n_resamples)
        return computed[key]

    for i, sweep in enumerate(sweeps):
        label = labels[i] if labels else (str(sweep) if len(sweeps) > 1 else None)
        data = read_sweep(sweep)
        read.append((label, data))
        if data.running:
            running.append(f"{label or sweep}: still running ({data.running}): its numbers are partial; report "
                           f"again when it has finished")
        if prompted is not None:
            check_same_model(prompted, data)
            if not (recorded(prompted) and recorded(data)):
                missing.append(f"--prompting {prompting}: not checked to be the same model as {sweep} (a sweep.json "
                               f"without model contents, written before they were recorded)")
        selecting = {t for _, t in selection_pairs(data.tasks)}
        names = [t for t in (tasks or data.tasks) if t not in selecting or tasks]
        unknown = [t for t in names if t not in data.tasks]
        if unknown:
            raise ValueError(f"--tasks {','.join(unknown)}: not in the sweep {sweep} (it ran {', '.join(data.tasks)})")
        for task in names:
            grid = behaviour(data, task, n_resamples=n_resamples)
            if grid is not None:
                behaviours.append({**grid, "label": label})
            available = data.metrics(task)
            twins = {} if metrics else data.same_as(task, _headline_first(task, available))
            notes += [f"{label + ': ' if label else ''}{task} / {m} is identical to {twin} on every document of every "
                      f"point: shown once, as {twin}" for m, twin in sorted(twins.items())]
            for metric in (list(metrics) if metrics else [m for m in available if m not in twins]):
                if metric not in available:
                    missing.append(f"{label + ': ' if label else ''}{task} / {metric}: no per-document values at "
                                   f"any point (it has {', '.join(available) or 'none'})")
                    continue
                found = {**curve(data, task, metric), "label": label}
                if prompted is not None:
                    found["prompting"] = prompting_rows(data, prompted, task, metric, n_resamples=n_resamples)
                    if not found["prompting"]:
                        missing.append(f"{task} / {metric}: the prompting sweep {prompting} has no "
                                       f"{task}_prompted_decline/_comply at α = 0")
                missing += [f"{label + ': ' if label else ''}{task} / {metric}: {m}" for m in found["missing"]]
                curves.append(found)
        layers |= {str(p.layer) for p in data.points if p.layer is not None}
        args.append(str(data.settings.get("model_args", "")) or "(the shipped pair)")
        controls.append(control_population(data, label))
        ceilings.append(data.ceiling)
    places = []
    for task, select_task in selection_pairs({t for _, d in read for t in d.tasks}):
        if tasks and task not in tasks:
            continue
        available = set.intersection(*[set(d.metrics(task)) & set(d.metrics(select_task)) for _, d in read
                                       if task in d.tasks and select_task in d.tasks])
        for metric in sorted(available & set(metrics) if metrics else available):
            if not all(continuous(d, select_task, metric) for _, d in read if select_task in d.tasks):
                continue  # where-tables choose on continuous metrics only (where.py)
            places.append(where(read, task, select_task, metric, alphas=where_alphas, curve=curve,
                                n_resamples=n_resamples))
            for label, data in read:  # the selection rows' missing points (the eval rows' are listed above)
                if select_task in data.tasks:
                    missing += [f"{label + ': ' if label else ''}{select_task} / {metric}: {m}"
                                for m in curve(data, select_task, metric)["missing"]]
    positions = [next((kv.split("=", 1)[1].strip() for kv in a.split(",") if kv.strip().startswith("position=")),
                      "all") for a in args]
    card = {**verdict_card(curves), "running": running}
    report = {"format": "dsteer-eval/report", "format_version": "1", "package_version": __version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "title": title or ", ".join(map(str, sweeps)), "sweeps": [str(s) for s in sweeps],
              "labels": labels, "model_args": args if len(args) > 1 else args[0], "layers": sorted(layers),
              "position": positions if len(positions) > 1 else positions[0],
              "tasks": sorted({c["task"] for c in curves}),
              "ceiling": ceilings if len(ceilings) > 1 else ceilings[0], "curves": curves,
              "controls": [c for c in controls if c is not None],
              "card": card, "behaviour": behaviours, "where": places, "missing": missing, "notes": notes}
    return redact_value(report)


def control_population(data, label) -> dict | None:
    """The sweep's random directions: K per steered point and their seed (``sweep.json``; a sweep written before
    seeds were drawn per sweep used 0), or None without controls."""
    k = len({p.control for p in data.points if p.control is not None})
    if not k:
        return None
    seed = data.settings.get("control_seed")
    return {"label": label, "k": k, "seed": 0 if seed is None else seed, "per_sweep": seed is not None}


def _headline_first(task: str, metrics: list[str]) -> list[str]:
    """The metrics with the continuous margins first, so a twin is shown under the more informative name."""
    return sorted(metrics, key=lambda m: (not m.endswith("margin"), m))
