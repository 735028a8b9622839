"""When a (point, task) unit of a sweep is done: one rule, for resuming and for each freshly written unit.

A unit folder is complete when

* it holds at least one ``results_<date>.json``, and each parses as a JSON object whose ``results``
  is an object (per task);
* each ``samples_<task>_<date>.jsonl`` belongs to a results file of the same ``<date>`` whose
  ``n-samples`` names ``<task>``, ends with a newline, and holds one JSON object per line: one line
  per document and filter, so every filter the results name has the same number of lines, and at
  least the ``n-samples`` ``effective`` count (lm-eval's count of the documents evaluated);
* every task whose samples the sweep keeps (a win-rate task, or every task with ``--log-samples``)
  has its samples file.

lm-eval logs and swallows its own write errors: a full disk leaves a 0-byte or cut-off file that
would otherwise count as done, be skipped by every re-run and break the leaderboard.  So the sweep
checks each unit with :func:`check_unit` right after lm-eval wrote it (a failure fails the unit,
which is recorded and retried), and a resume re-checks with :func:`unit_done` every unit it would
skip (one left incomplete by an older version is evaluated again).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from dsteer_eval.sweep.grid import safe_name

RESULTS_PREFIX, SAMPLES_PREFIX = "results_", "samples_"


class IncompleteUnitError(OSError):
    """A unit's files are missing, cut off or unreadable (lm-eval swallowed the write error)."""


def _winrate_tasks(data: dict) -> set[str]:
    configs = data.get("configs")
    if not isinstance(configs, dict):
        return set()
    return {name for name, c in configs.items()
            if isinstance(c, dict) and isinstance(c.get("metadata"), dict) and c["metadata"].get("winrate_criterion")}


def _filters(data: dict, task: str) -> set[str]:
    values = data["results"].get(task)
    if not isinstance(values, dict):
        return set()
    return {k.partition(",")[2] for k in values if "," in k}


def _read_results(path: Path, shown: Path) -> tuple[dict | None, str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{shown} cannot be read ({exc})"
    if not text.strip():
        return None, f"{shown} is empty ({len(text.encode())} bytes)"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"{shown} is not valid JSON (cut off? {exc})"
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        return None, f"{shown} is not an lm-eval results file (no 'results' object)"
    return data, None


def _samples_problem(path: Path, shown: Path, task: str, data: dict) -> str | None:
    counts = (data.get("n-samples") or {}).get(task) if isinstance(data.get("n-samples"), dict) else None
    effective = counts.get("effective") if isinstance(counts, dict) else None
    if isinstance(effective, bool) or not isinstance(effective, int):
        return f"{shown}: its results file records no n-samples count for task {task!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"{shown} cannot be read ({exc})"
    if effective and not text.endswith("\n"):
        return f"{shown} is cut off ({len(text.encode())} bytes, no newline at the end)"
    per_filter: Counter = Counter()
    for number, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            return f"{shown}: line {number} is not a JSON object (cut off?)"
        per_filter[str(row.get("filter", "none"))] += 1
    lines = sum(per_filter.values())
    expected = _filters(data, task) or set(per_filter) or {"none"}
    missing = sorted(expected - set(per_filter)) if per_filter else sorted(expected)
    if effective and (missing or len(set(per_filter.values())) > 1 or min(per_filter.values()) < effective):
        detail = ", ".join(f"{f}: {n}" for f, n in sorted(per_filter.items())) or "none"
        return (f"{shown} holds {lines} sample line(s) (per filter: {detail}), the results file records "
                f"{effective} document(s) x {len(expected)} filter(s)")
    return None


def unit_problem(folder, *, samples_for=(), shown=None) -> str | None:
    """Why the unit in ``folder`` is not complete (naming the file as ``shown/<name>``), or None.

    ``samples_for``: tasks whose samples file must be there besides the win-rate tasks.
    """
    folder = Path(folder)
    shown = Path(shown) if shown is not None else folder
    results = sorted(folder.glob(f"{RESULTS_PREFIX}*.json"))
    if not results:
        return f"{shown}: no {RESULTS_PREFIX}*.json"
    by_date = {}
    for path in results:
        data, problem = _read_results(path, shown / path.name)
        if problem:
            return problem
        by_date[path.name[len(RESULTS_PREFIX):-len(".json")]] = data
    with_samples: set[tuple[str, str]] = set()
    for path in sorted(folder.glob(f"{SAMPLES_PREFIX}*.jsonl")):
        stem = path.name[len(SAMPLES_PREFIX):-len(".jsonl")]
        match = [(d, stem[:-len(d) - 1]) for d in by_date if stem.endswith(f"_{d}") and len(stem) > len(d) + 1]
        if not match:
            return f"{shown / path.name}: no {RESULTS_PREFIX}<date>.json of the same run beside it"
        date, task = match[0]
        problem = _samples_problem(path, shown / path.name, task, by_date[date])
        if problem:
            return problem
        with_samples.add((date, task))
    for date, data in by_date.items():
        for task in sorted(_winrate_tasks(data) | (set(samples_for) & set(data.get("configs") or {}))):
            if (date, task) not in with_samples:
                return f"{shown / f'{SAMPLES_PREFIX}{task}_{date}.jsonl'}: missing (the sweep keeps {task}'s samples)"
    return None


def unit_done(folder) -> bool:
    """The resume rule: the unit's files are all there, complete and readable."""
    return unit_problem(folder) is None


def check_unit(folder, *, samples_for=(), shown=None) -> None:
    """Raise :class:`IncompleteUnitError` naming the file when the unit in ``folder`` is not complete."""
    problem = unit_problem(folder, samples_for=samples_for, shown=shown)
    if problem:
        raise IncompleteUnitError(
            f"{problem}; lm-eval logs and swallows its write errors: is the disk full? Free space and "
            f"re-run the same command to retry this unit")


def unit_folder(out: Path, point, task: str) -> Path:
    """Where one (point, task) unit of a sweep lives: ``OUT/points/<point>/<task>/``."""
    return out / "points" / point.name / safe_name(task)
