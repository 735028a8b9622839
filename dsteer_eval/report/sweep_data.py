"""A finished sweep folder as the report reads it: its points (side, layer, α, control) and, per point and
task, the per-document values every sweep unit writes (``per_doc.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dsteer_eval.leaderboard.paired import doc_values
from dsteer_eval.stats.bootstrap import finite_number
from dsteer_eval.sweep.plan import FORMAT as SWEEP_FORMAT


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

    def metric(self, point: str, task: str, metric: str) -> dict | None:
        return (self.values.get((point, task)) or {}).get(metric)

    def metrics(self, task: str) -> list[str]:
        """Metrics with a per-document number in every point of ``task`` (count columns ``n_*`` left out)."""
        found = None
        for point in self.points:
            have = {m for m, vals in (self.values.get((point.name, task)) or {}).items()
                    if not m.startswith("n_") and any(finite_number(v) for v in vals.values())}
            found = have if found is None else found & have
        return sorted(found or ())

    def find(self, side: str, alpha: float, layer=None, control=None) -> Point | None:
        for p in self.points:
            if p.side == side and p.alpha == alpha and p.control == control and \
                    (alpha == 0 or layer is None or str(p.layer) == str(layer)):
                return p
        return None


def read_sweep(folder) -> SweepData:
    """Read ``folder/sweep.json`` and every point's ``per_doc.json``; a unit that failed or never ran is
    left out (the report names the points it lacks)."""
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
    data = SweepData(folder, points, list(meta.get("tasks", [])), settings=meta.get("settings", {}))
    for point in points:
        for task in data.tasks:
            results = sorted((folder / "points" / point.name / task).glob("results_*.json"))
            found = doc_values(results[-1], task) if results else None  # per_doc.json (or samples) beside it
            if found is not None:
                data.values[(point.name, task)] = found["metrics"]
                texts = {doc: r[0] for doc, r in (found.get("resps") or {}).items()
                         if isinstance(r, list) and r and isinstance(r[0], str)}
                if texts:
                    data.texts[(point.name, task)] = texts
    ceiling = folder / "ceiling.json"
    if ceiling.is_file():
        data.ceiling = json.loads(ceiling.read_text())
    return data
