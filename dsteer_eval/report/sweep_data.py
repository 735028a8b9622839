"""A sweep folder as the report reads it: its points (side, layer, α, control) and, per point and task, the
per-document values every sweep unit writes (``per_doc.json``); for each unit without them, why (it failed,
it never ran, the sweep is still running), so that the report names every point it could not use."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dsteer_eval.leaderboard.paired import doc_values
from dsteer_eval.report.sweep_running import still_running
from dsteer_eval.stats.bootstrap import finite_number
from dsteer_eval.sweep.plan import FORMAT as SWEEP_FORMAT
from dsteer_eval.sweep.units import unit_folder

FAILED = "failed.json"


@dataclass(frozen=True)
class Point:
    name: str
    side: str  # "dpo" | "base"
    layer: str | None
    alpha: float
    control: int | None  # random direction index, or None for v̄


@dataclass
class SweepData:
    folder: Path
    points: list[Point]
    tasks: list[str]
    values: dict = field(default_factory=dict)  # (point name, task) -> {metric: {doc_id: value}}
    texts: dict = field(default_factory=dict)  # (point name, task) -> {doc_id: generated text} (generation tasks)
    settings: dict = field(default_factory=dict)
    ceiling: dict | None = None  # OUT/ceiling.json when the sweep measured or was given one
    absent: dict = field(default_factory=dict)  # (point name, task) -> why the unit has no per-document values
    running: str | None = None  # the live run holding the folder's lock (a sweep still running), else None
    provenance: dict = field(default_factory=dict)  # sweep.json's provenance (its models' identities)

    def metric(self, point: str, task: str, metric: str) -> dict | None:
        return (self.values.get((point, task)) or {}).get(metric)

    def metrics(self, task: str) -> list[str]:
        """Metrics with a per-document number at some point of ``task`` (count columns ``n_*`` left out): a
        point that lacks one is named by the report (:meth:`why_missing`), never a reason to drop the metric."""
        found = set()
        for point in self.points:
            found |= {m for m, vals in (self.values.get((point.name, task)) or {}).items()
                      if not m.startswith("n_") and any(finite_number(v) for v in vals.values())}
        return sorted(found)

    def same_as(self, task: str, metrics: list[str]) -> dict[str, str]:
        """``{metric: an earlier metric of the list}`` for each metric whose per-document values equal the earlier
        one's at every point (``acc`` = ``refusal_acc`` when every document is harmful): shown once."""
        found = {}
        for i, metric in enumerate(metrics):
            for earlier in metrics[:i]:
                if earlier not in found and all(self.metric(p.name, task, metric) == self.metric(p.name, task, earlier)
                                                for p in self.points):
                    found[metric] = earlier
                    break
        return found

    def why_missing(self, point: str, task: str, metric: str) -> str | None:
        """Why ``point`` has no finite per-document ``metric`` of ``task`` (None when it has one)."""
        if (point, task) in self.absent:
            return self.absent[(point, task)]
        values = self.metric(point, task, metric)
        if values is None:
            return f"no per-document {metric} in its values"
        if not any(finite_number(v) for v in values.values()):
            return f"no finite {metric}: every document NaN or inf"
        return None

    def find(self, side: str, alpha: float, layer=None, control=None) -> Point | None:
        for p in self.points:
            if p.side == side and p.alpha == alpha and p.control == control and \
                    (alpha == 0 or layer is None or str(p.layer) == str(layer)):
                return p
        return None


def read_sweep(folder) -> SweepData:
    """Read ``folder/sweep.json`` and every point's ``per_doc.json``; a unit that failed or never ran is
    left out with its reason in ``absent`` (the report names the points it lacks), and a live lock on the
    folder marks the sweep as still running."""
    folder = Path(folder)
    record = folder / "sweep.json"
    try:
        meta = json.loads(record.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: not a finished dsteer-eval sweep (no readable sweep.json: {exc})") from None
    if meta.get("format") != SWEEP_FORMAT:
        raise ValueError(f"{record}: format is {meta.get('format')!r}, not {SWEEP_FORMAT!r}")
    points = [Point(p["name"], p["side"], None if p.get("layer") is None else str(p["layer"]), float(p["alpha"]),
                    p.get("control")) for p in meta.get("points", [])]
    data = SweepData(folder, points, list(meta.get("tasks", [])), settings=meta.get("settings") or {},
                     provenance=meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {})
    data.running = still_running(folder)
    for point in points:
        for task in data.tasks:
            unit = unit_folder(folder, point, task)
            results = sorted(unit.glob("results_*.json"))
            found = doc_values(results[-1], task) if results else None  # per_doc.json (or samples) beside it
            if found is None:
                data.absent[(point.name, task)] = _why_absent(unit, folder, bool(results), data.running)
            else:
                data.values[(point.name, task)] = found["metrics"]
                texts = {doc: r[0] for doc, r in (found.get("resps") or {}).items()
                         if isinstance(r, list) and r and isinstance(r[0], str)}
                if texts:
                    data.texts[(point.name, task)] = texts
    ceiling = folder / "ceiling.json"
    if ceiling.is_file():
        data.ceiling = json.loads(ceiling.read_text())
    return data


def _why_absent(unit: Path, folder: Path, has_results: bool, running: str | None) -> str:
    if (unit / FAILED).is_file():
        try:
            error = json.loads((unit / FAILED).read_text()).get("error")
        except (OSError, ValueError, AttributeError):
            error = None
        lines = str(error or "").strip().splitlines()
        return f"failed: {lines[0][:200] if lines else f'see {unit.relative_to(folder).as_posix()}/{FAILED}'}"
    if has_results:
        return "no per-document values beside its results (per_doc.json or samples)"
    if running:
        return "not run yet: the sweep is still running"
    return f"never ran: no results in {unit.relative_to(folder).as_posix()}"
