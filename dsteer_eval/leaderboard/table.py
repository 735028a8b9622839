"""Entries -> a rows x columns leaderboard: newest entry wins each cell, best cell per column marked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dsteer_eval.leaderboard.collect import Entry, RowKey, Skipped, Source, clean, collect, number
from dsteer_eval.leaderboard.paired import paired_statistics
from dsteer_eval.models.embedded import is_embedded_name
from dsteer_eval.sweep.grid import alpha_text

PROBE_COLUMNS = (("projection margin", "projection_margin", True), ("restoration KL", "restoration_kl", False))


@dataclass(frozen=True)
class Column:
    key: str  # "task/metric", "<task> win-rate vs α=0", "projection margin", "restoration KL", or a failed task
    kind: str  # "metric" | "winrate" | "probe"
    task: str | None
    metric: str | None
    higher_is_better: bool | None

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓"}.get(self.higher_is_better, "")

    @property
    def header(self) -> str:
        return f"{self.key} {self.arrow}".rstrip()


@dataclass
class Cell:
    value: float | None = None
    stderr: float | None = None
    failed: str | None = None  # the error, for a failed run
    best: bool = False
    info: dict = field(default_factory=dict)  # n, n_failed, site, ... of sweep extras


@dataclass
class Row:
    key: RowKey
    source: Source
    label: str
    group: str  # source / model prefix of the label ("" when there is only one of each)
    metrics: dict[str, dict] = field(default_factory=dict)  # task -> {"metric,filter": {"value", "stderr"}}
    files: list[Path] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.key.model


@dataclass
class Leaderboard:
    sources: list[Source]
    rows: list[Row]
    columns: list[Column]
    cells: list[list[Cell | None]]  # [row][column]; None = missing
    paired: dict = field(default_factory=dict)  # column key -> [PairedRow] (see leaderboard/paired.py)
    claims: list = field(default_factory=list)  # [Verdict]: the D-STEER claims, computed from the paired CIs
    skipped: list[Skipped] = field(default_factory=list)  # unreadable or mis-shaped files, with the reason


def _slot(row: RowKey, kind: str, task: str | None) -> tuple:
    """What one entry fills: a task's results or failure compete for the same slot; columns name theirs by kind."""
    kind = {"results": "task", "failed": "task", "metric": "task", "probe": "probes"}.get(kind, kind)
    return row, kind, None if kind == "probes" else task


def _sort_key(row: RowKey):
    layer = (0, 0, "") if row.unsteered else (1, 0, "") if row.layer is None else (
        (2, int(row.layer), "") if row.layer.lstrip("-").isdigit() else (3, 0, row.layer))
    return row.source, row.identity, layer, -float("inf") if row.alpha is None else row.alpha


def _model_text(k: RowKey, keys: list[RowKey]) -> str:
    """What tells this row's model from the others of its folder: the model args that differ, with a
    sweep's roles named (``peft=none`` is the base side, ``control=random:<i>`` a random control, another
    ``peft=`` the DPO side) and paths shortened to their last part."""
    same = [x.identity for x in keys if x.source == k.source]
    common = set.intersection(*(set(i) for i in same))
    parts = []
    for name, value in k.identity:
        if (name, value) in common or name == "control_seed":  # the seed: the sweep's, shown with its controls
            continue
        if name == "peft":
            parts.append("base (peft=none)" if value.lower() == "none" else f"DPO (peft={Path(value).name or value})")
        elif name == "control":
            parts.append(value)
        else:
            parts.append(f"{name}={Path(value).name if '/' in value else value}")
    return ", ".join(parts) or model_label(k.identity)


def model_label(identity) -> str:
    """What a row's model is when no model arg tells it from its neighbours: the shipped DPO pair only when
    nothing else was named (no ``peft=``, ``vector=``, ``steer_path=`` or other ``pretrained=``); a named
    adapter is a DPO side; anything else is the model itself, never called DPO."""
    args = {name: value for name, value in identity if name not in ("control", "control_seed")}
    peft, pretrained = args.get("peft"), args.get("pretrained")
    if peft and peft.lower() != "none":
        return f"DPO (peft={Path(peft).name or peft})"
    if peft is None and not args.get("vector") and not args.get("steer_path") \
            and (pretrained is None or is_embedded_name(pretrained)):
        return "DPO (default)"  # the shipped pair (pair= picks which)
    if peft is not None:
        return "base (peft=none)"
    return f"model ({Path(pretrained).name or pretrained})" if pretrained else "model"


def _labels(keys: list[RowKey], sources: list[Source]) -> dict[RowKey, tuple[str, str]]:
    many_sources, many_models = len({k.source for k in keys}) > 1, len({k.identity for k in keys}) > 1
    out = {}
    for k in keys:
        model = (_model_text(k, keys) if many_models else k.model) or "default model"
        group = " · ".join(([sources[k.source].label] if many_sources else [])
                           + ([model] if many_models or k.alpha is None else []))
        if k.alpha is None:
            steering = f"layer {k.layer}" if k.layer is not None else ""
        elif k.unsteered:
            steering = "unsteered (α=0)"
        else:
            alpha = alpha_text(k.alpha)  # lossless: 1 and 1.0000001 are two rows, so two labels
            steering = f"α={alpha}" if k.layer is None else f"layer {k.layer}, α={alpha}"
        out[k] = (" · ".join(p for p in (group, steering) if p), group)
    return out


def metric_value(metrics: dict, metric: str) -> tuple[object, float | None] | None:
    """(value, stderr) of ``metric`` under filter "none" if present, else its first filter."""
    keys = [k for k in metrics if k.partition(",")[0] == metric]
    if not keys:
        return None
    found = metrics[f"{metric},none"] if f"{metric},none" in keys else metrics[keys[0]]
    return found["value"], found["stderr"]


def _cell(entry: Entry | None, column: Column) -> Cell | None:
    if entry is None:
        return None
    if entry.kind == "failed":
        return Cell(failed=entry.data["error"])
    if column.kind == "winrate":
        d = entry.data
        return Cell(number(d["win_rate"]), number(d.get("stderr")),
                    info={k: clean(d[k]) for k in ("criterion", "n", "n_failed") if k in d})
    if column.kind == "probe":
        d = entry.data[column.metric]
        return Cell(number(d.get("mean")), number(d.get("stderr")),
                    info={k: clean(v) for k, v in d.items() if k not in ("mean", "stderr")})
    found = metric_value(entry.data["metrics"], column.metric) if column.metric else None
    value = number(found[0]) if found else None
    return None if value is None else Cell(value, found[1])


def _paired_columns(columns: list[Column], entries: list[Entry]) -> list[Column]:
    """The headline metric columns, each followed by the metrics its task's YAML lists in metadata.paired."""
    extra = {}
    for e in entries:
        if e.kind == "results":
            extra.setdefault(e.task, dict.fromkeys(e.data.get("paired_metrics", [])))
    out = []
    for column in columns:
        if column.kind != "metric" or column.metric is None:
            continue
        out.append(column)
        out += [Column(f"{column.task}/{m}", "metric", column.task, m, None)
                for m in extra.get(column.task, {}) if m != column.metric]
    return out


def _mark_best(cells: list[Cell | None], higher_is_better: bool | None) -> None:
    scored = [c for c in cells if c is not None and c.value is not None]
    if higher_is_better is None or not scored:
        return
    best = (max if higher_is_better else min)(c.value for c in scored)
    for c in scored:
        c.best = c.value == best


def build_leaderboard(paths) -> Leaderboard:
    """Read every results file and sweep extra under ``paths`` (one source per folder) into a table."""
    sources, entries, skipped = collect(paths)
    by_date = sorted(entries, key=lambda e: e.date)  # stable: equal dates keep path order
    winners = {_slot(e.row, e.kind, e.task): e for e in by_date}  # the newest entry of each slot
    won = [e for e in entries if winners[_slot(e.row, e.kind, e.task)] is e]

    columns: dict[str, Column] = {}

    def add_metric_column(e: Entry) -> None:
        metric, hib = e.data["headline"], e.data["higher_is_better"].get(e.data["headline"])
        key = f"{e.task}/{metric}"
        columns.setdefault(key, Column(key, "metric", e.task, metric, hib if isinstance(hib, bool) else None))

    for e in won:
        if e.kind == "results" and e.data["headline"]:
            add_metric_column(e)
    newest_results = {e.task: e for e in by_date if e.kind == "results"}
    for e in won:  # a task that failed wherever it won still gets its headline column, if any run named one
        if e.kind == "failed" and e.task not in {c.task for c in columns.values()}:
            if e.task in newest_results and newest_results[e.task].data["headline"]:
                add_metric_column(newest_results[e.task])
            else:
                columns[e.task] = Column(e.task, "metric", e.task, None, None)
    for task in sorted({e.task for e in won if e.kind == "winrate"}):
        key = f"{task} win-rate vs α=0"
        columns[key] = Column(key, "winrate", task, "win_rate", True)
    if any(e.kind == "probes" for e in won):
        for key, metric, hib in PROBE_COLUMNS:
            columns[key] = Column(key, "probe", None, metric, hib)
    columns = list(columns.values())

    keys = sorted({e.row for e in won}, key=_sort_key)
    labels = _labels(keys, sources)
    rows = [Row(k, sources[k.source], *labels[k]) for k in keys]
    for row in rows:
        mine = [e for e in won if e.row == row.key]
        row.metrics = {e.task: e.data["metrics"] for e in mine if e.kind == "results"}
        row.files = sorted({e.path for e in mine})
    cells = [[_cell(winners.get(_slot(row.key, c.kind, c.task)), c) for c in columns] for row in rows]
    for j, column in enumerate(columns):
        _mark_best([r[j] for r in cells], column.higher_is_better)

    paired, claims = {}, []
    for column in _paired_columns(columns, won):
        found = {row.key: winners.get(_slot(row.key, "results", column.task)) for row in rows}
        found = {k: e for k, e in found.items() if e is not None and e.kind == "results"}
        rows_stats, column_claims = paired_statistics(rows, column, found)
        if rows_stats:
            paired[column.key] = rows_stats
            claims += column_claims
    return Leaderboard(sources, rows, columns, cells, paired=paired, claims=claims, skipped=skipped)
