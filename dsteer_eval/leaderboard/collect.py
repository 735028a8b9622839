"""Read lm-eval results files and sweep extras under folders into flat, dated entries.

Under each folder (recursively; hidden and staging folders skipped):

* ``results_*.json``      lm-eval's results schema: one entry per leaf task
* ``winrate/<task>.json`` a sweep's win-rate vs alpha=0
* ``probes.json``         a sweep's per-point probes
* ``failed.json``         a sweep's failed (point, task), one entry per leaf task when its group is known

Every file names its model by ``model_args`` (lm-eval's ``config.model_args`` for results files),
which :func:`row_key` turns into the row the entry belongs to.

A file that cannot be read or is not shaped as its kind must be (a 0-byte results file a full disk
left, a list where an object belongs, a string ``config``) is skipped with a warning naming it and
counted in :class:`Skipped`; a folder with nothing usable is an error naming each skipped file.
NaN/inf anywhere in a value (also inside lists and objects) become None here, before any output.
Error texts from ``failed.json`` are redacted again (:func:`dsteer_eval.common.redaction.redact`), so files
written before redaction existed leak no key into the tables.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from dsteer_eval.common.redaction import redact

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Skipped:
    """A file left out of the leaderboard, and why."""

    path: Path
    reason: str


def number(value) -> float | None:
    """``value`` as a finite float, or None (strings such as lm-eval's "N/A", bools, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def clean(value):
    """``value`` with every NaN/inf replaced by None, also inside lists and dicts (JSON cannot hold them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


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


def _read(path: Path, required: tuple[str, ...], what: str, objects: tuple[str, ...] = ()) -> dict:
    """The JSON object in ``path`` with the ``required`` keys, ``objects`` among them JSON objects."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if text.strip() else None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if data is None:
        raise ValueError(f"cannot read {path}: the file is empty ({len(text.encode())} bytes; a full disk?)")
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not {what}: a JSON {type(data).__name__}, not an object")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path} is not {what}: no {', '.join(map(repr, missing))}")
    for key in objects:
        if not isinstance(data[key], dict):
            raise ValueError(f"{path} is not {what}: {key!r} is a JSON {_json_type(data[key])}, not an object")
    return data


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _check_shape(path: Path, what: str, checks) -> None:
    """``checks``: ``(description, ok)`` pairs; the first not ok makes ``path`` not ``what``."""
    for description, ok in checks:
        if not ok:
            raise ValueError(f"{path} is not {what}: {description}")


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
    metadata = config.get("metadata")
    name = metadata.get("headline") if isinstance(metadata, dict) else None
    metric_list = config.get("metric_list")
    if not name and isinstance(metric_list, list) and metric_list and isinstance(metric_list[0], dict):
        name = metric_list[0].get("metric")
    return str(name) if name else next((k.partition(",")[0] for k in metrics), None)


def _results(source: int, path: Path) -> tuple[list[Entry], dict]:
    what = "an lm-eval results file"
    data = _read(path, ("results", "configs", "config"), what, objects=("results", "configs", "config"))
    optional = {k: data.get(k) for k in ("group_subtasks", "groups", "higher_is_better")}
    _check_shape(path, what, [(f"{k!r} is a JSON {_json_type(v)}, not an object", v is None or isinstance(v, dict)
                               or (k == "groups" and isinstance(v, list))) for k, v in optional.items()])
    _check_shape(path, what, [(f"'group_subtasks' of {g!r} is a JSON {_json_type(subs)}, not an array",
                               subs is None or isinstance(subs, list))
                              for g, subs in (optional["group_subtasks"] or {}).items()])
    date = number(data.get("date")) or path.stat().st_mtime
    row = row_key(source, data["config"].get("model_args"))
    subtasks = {g: [str(s) for s in subs] for g, subs in (optional["group_subtasks"] or {}).items() if subs}
    groups = {str(g) for g in optional["groups"] or ()} | set(subtasks)
    hib = optional["higher_is_better"] or {}
    entries = []
    for task, values in data["results"].items():
        if task in groups or task not in data["configs"]:
            continue
        _check_shape(path, what, [
            (f"'results' of {task!r} is a JSON {_json_type(values)}, not an object", isinstance(values, dict)),
            (f"'configs' of {task!r} is a JSON {_json_type(data['configs'][task])}, not an object",
             isinstance(data["configs"][task], dict))])
        metrics = task_metrics(values)
        task_hib = hib.get(task)
        metric_list = data["configs"][task].get("metric_list")
        entries.append(Entry(row, "results", task, date, path, {
            "metrics": metrics,
            "headline": headline(data["configs"][task], metrics),
            "higher_is_better": task_hib if isinstance(task_hib, dict) else {},
            # more metrics to pair than the headline: the task YAML's metadata.paired (a list)
            "paired_metrics": _paired_metrics(data["configs"][task]),
            # how lm-eval aggregated each metric: paired per-document statistics need a plain mean
            "aggregation": {str(m.get("metric")): str(m.get("aggregation")) for m in metric_list
                            if isinstance(m, dict)} if isinstance(metric_list, list) else {},
        }))
    return entries, subtasks


def _paired_metrics(config: dict) -> list[str]:
    metadata = config.get("metadata")
    found = metadata.get("paired") if isinstance(metadata, dict) else None
    return [str(m) for m in found] if isinstance(found, list) else []


def _leaf_tasks(task: str, subtasks: dict[str, list], seen=()) -> list[str]:
    if task not in subtasks or task in seen:
        return [task]
    return [leaf for sub in subtasks[task] for leaf in _leaf_tasks(sub, subtasks, (*seen, task))]


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def collect(paths) -> tuple[list[Source], list[Entry], list[Skipped]]:
    """Every entry under ``paths``, in path order, and the files skipped as unreadable or mis-shaped.

    Raises ValueError naming a missing input folder, or one with nothing usable (and its skipped files).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("give at least one results folder")
    names = [p.resolve().name or str(p) for p in paths]
    sources = [Source(name if names.count(name) == 1 else str(p), p) for name, p in zip(names, paths)]
    entries, failures, subtasks, skipped = [], [], {}, []
    for i, root in enumerate(paths):
        if not root.is_dir():
            raise ValueError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
        found = [p for p in sorted(root.rglob("*.json")) if _visible(p, root) and p.is_file()]
        before, skipped_before = len(entries) + len(failures), len(skipped)
        for path in found:
            try:
                read = _entries(i, path)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                if isinstance(exc, ValueError):  # _read/_check_shape: the reason names the file
                    shown = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                else:
                    shown = f"{path} is mis-shaped ({type(exc).__name__}: {exc})"
                reason = redact(shown)
                log.warning("leaderboard: skipped %s", reason)
                skipped.append(Skipped(path, reason))
                continue
            if read is None:
                continue
            kind, payload, groups = read
            if kind == "failed":
                failures.append(payload)
            else:
                entries += payload
            subtasks.update(groups)
        if len(entries) + len(failures) == before:
            detail = "".join(f"; skipped {s.reason}" for s in skipped[skipped_before:])
            raise ValueError(f"{root}: no lm-eval results_*.json, winrate/<task>.json, probes.json "
                             f"or failed.json found{detail}")
    for i, path, data in failures:  # a failed group fails each of its tasks, where some results file names them
        for task in _leaf_tasks(str(data["task"]), subtasks):
            entries.append(Entry(row_key(i, data["model_args"]), "failed", task, path.stat().st_mtime, path,
                                 {"error": redact(data["error"])}))
    return sources, entries, skipped


def _entries(i: int, path: Path):
    """``(kind, entries or the failure, group subtasks)`` read from ``path``; None for a file of no known kind."""
    if path.name.startswith("results_"):
        task_entries, groups = _results(i, path)
        return "results", task_entries, groups
    if path.name == "failed.json":
        data = _read(path, ("task", "model_args", "error"), "a dsteer-eval failed-task file")
        return "failed", (i, path, data), {}
    if path.name == "probes.json":
        what = "a dsteer-eval probes file"
        data = _read(path, ("model_args", "projection_margin", "restoration_kl"), what,
                     objects=("projection_margin", "restoration_kl"))
        return "probes", [Entry(row_key(i, data["model_args"]), "probes", None, path.stat().st_mtime, path, data)], {}
    if path.parent.name == "winrate":
        data = _read(path, ("task", "model_args", "win_rate"), "a dsteer-eval win-rate file")
        return "winrate", [Entry(row_key(i, data["model_args"]), "winrate", str(data["task"]), path.stat().st_mtime,
                                 path, data)], {}
    return None
