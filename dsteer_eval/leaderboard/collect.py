"""Read lm-eval results files and sweep extras under folders into flat, dated entries.

Under each folder (recursively; hidden and staging folders skipped):

* ``results_*.json``      lm-eval's results schema: one entry per leaf task
* ``winrate/<task>.json`` a sweep's win-rate vs alpha=0
* ``probes.json``         a sweep's per-point probes
* ``failed.json``         a sweep's failed (point, task), one entry per leaf task when its group is known

Every file names its model by ``model_args`` (lm-eval's ``config.model_args`` for results files),
which :func:`row_key` turns into the row the entry belongs to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

RUNTIME_KEYS = ("batch_size", "device", "dtype")  # how a model ran, not which model


@dataclass(frozen=True)
class RowKey:
    source: int  # index of the folder in the list given
    identity: tuple[tuple[str, str], ...]  # model_args minus steering and runtime keys, sorted
    layer: str | None  # None when absent and for the unsteered row
    alpha: float | None  # None when absent (or not one number)

    @property
    def unsteered(self) -> bool:
        return self.alpha == 0

    @property
    def model(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.identity)


@dataclass(frozen=True)
class Entry:
    row: RowKey
    kind: str  # "results" | "failed" | "winrate" | "probes"
    task: str | None
    date: float  # results: lm-eval's `date`; otherwise the file's mtime
    path: Path
    data: dict


@dataclass(frozen=True)
class Source:
    label: str
    path: Path


def number(value) -> float | None:
    """``value`` as a finite float, or None (strings such as lm-eval's "N/A", bools, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def clean(value):
    """``value`` with NaN/inf replaced by None (JSON cannot hold them)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def parse_model_args(model_args) -> dict[str, str]:
    """lm-eval's ``k=v,k=v`` string or its dict form as ``{key: str(value)}``."""
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    pairs = (item.partition("=") for item in str(model_args or "").split(",") if item.strip())
    return {k.strip(): v.strip() for k, _, v in pairs}


def row_key(source: int, model_args) -> RowKey:
    args = parse_model_args(model_args)
    try:
        alpha = float(args["alpha"])
        alpha = alpha if math.isfinite(alpha) else None
    except (KeyError, ValueError):
        alpha = None
    identity = {k: v for k, v in args.items()
                if k not in RUNTIME_KEYS and k != "layer" and not (k == "alpha" and alpha is not None)}
    layer = None if alpha == 0 else args.get("layer")
    return RowKey(source, tuple(sorted(identity.items())), layer, 0.0 if alpha == 0 else alpha)


def _read(path: Path, required: tuple[str, ...], what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not {what}: no {', '.join(map(repr, missing))}")
    return data


def task_metrics(values: dict) -> dict[str, dict]:
    """``{"metric,filter": {"value", "stderr"}}`` from one task's lm-eval results (stderr "N/A" -> None)."""
    out = {}
    for key, value in values.items():
        metric, comma, filt = key.partition(",")
        if not comma or (metric.endswith("_stderr") and f"{metric[:-7]},{filt}" in values):
            continue
        out[key] = {"value": clean(value), "stderr": number(values.get(f"{metric}_stderr,{filt}"))}
    return out


def headline(config: dict, metrics: dict) -> str | None:
    """The task's ``metadata.headline``, else the first of its ``metric_list``, else its first metric."""
    name = (config.get("metadata") or {}).get("headline")
    if not name and config.get("metric_list"):
        name = config["metric_list"][0].get("metric")
    return str(name) if name else next((k.partition(",")[0] for k in metrics), None)


def _results(source: int, path: Path) -> tuple[list[Entry], dict]:
    data = _read(path, ("results", "configs", "config"), "an lm-eval results file")
    date = number(data.get("date")) or path.stat().st_mtime
    row = row_key(source, data["config"].get("model_args"))
    subtasks = {g: subs for g, subs in (data.get("group_subtasks") or {}).items() if subs}
    groups = set(data.get("groups") or {}) | set(subtasks)
    entries = []
    for task, values in data["results"].items():
        if task in groups or task not in data["configs"]:
            continue
        metrics = task_metrics(values)
        entries.append(Entry(row, "results", task, date, path, {
            "metrics": metrics,
            "headline": headline(data["configs"][task], metrics),
            "higher_is_better": (data.get("higher_is_better") or {}).get(task) or {},
        }))
    return entries, subtasks


def _leaf_tasks(task: str, subtasks: dict[str, list], seen=()) -> list[str]:
    if task not in subtasks or task in seen:
        return [task]
    return [leaf for sub in subtasks[task] for leaf in _leaf_tasks(sub, subtasks, (*seen, task))]


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def collect(paths) -> tuple[list[Source], list[Entry]]:
    """Every entry under ``paths``, in path order; raises ValueError naming a missing, empty or bad input."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("give at least one results folder")
    names = [p.resolve().name or str(p) for p in paths]
    sources = [Source(name if names.count(name) == 1 else str(p), p) for name, p in zip(names, paths)]
    entries, failures, subtasks = [], [], {}
    for i, root in enumerate(paths):
        if not root.is_dir():
            raise ValueError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
        found = [p for p in sorted(root.rglob("*.json")) if _visible(p, root) and p.is_file()]
        before = len(entries) + len(failures)
        for path in found:
            if path.name.startswith("results_"):
                task_entries, groups = _results(i, path)
                entries += task_entries
                subtasks.update(groups)
            elif path.name == "failed.json":
                data = _read(path, ("task", "model_args", "error"), "a dsteer-eval failed-task file")
                failures.append((i, path, data))
            elif path.name == "probes.json":
                data = _read(path, ("model_args", "projection_margin", "restoration_kl"), "a dsteer-eval probes file")
                entries.append(Entry(row_key(i, data["model_args"]), "probes", None, path.stat().st_mtime, path, data))
            elif path.parent.name == "winrate":
                data = _read(path, ("task", "model_args", "win_rate"), "a dsteer-eval win-rate file")
                entries.append(Entry(row_key(i, data["model_args"]), "winrate", str(data["task"]),
                                     path.stat().st_mtime, path, data))
        if len(entries) + len(failures) == before:
            raise ValueError(f"{root}: no lm-eval results_*.json, winrate/<task>.json, probes.json "
                             f"or failed.json found")
    for i, path, data in failures:  # a failed group fails each of its tasks, where some results file names them
        for task in _leaf_tasks(str(data["task"]), subtasks):
            entries.append(Entry(row_key(i, data["model_args"]), "failed", task, path.stat().st_mtime, path,
                                 {"error": str(data["error"])}))
    return sources, entries
