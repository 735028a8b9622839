"""A sweep with units missing (deleted, failed, all-NaN, not run yet while the sweep still runs) still gives each
curve from the points it has, and names every missing point with its reason on the card and the page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from test_report import K, N_DOCS, make_sweep
from test_where import make_layer_sweep

from dsteer_eval.cli import main
from dsteer_eval.common.output_folder import lock_path
from dsteer_eval.report.build import build_report


def _unit(folder, point):
    return folder / "points" / point / "toy_task"


def _drop(folder, point):
    shutil.rmtree(_unit(folder, point))


def _fail(folder, point, error="RuntimeError: CUDA out of memory"):
    unit = _unit(folder, point)
    shutil.rmtree(unit)
    unit.mkdir()
    unit.joinpath("failed.json").write_text(json.dumps({"format": "dsteer-eval/failed-task", "task": "toy_task",
                                                        "error": error, "traceback": "..."}))


def _nan(folder, point, docs=None):
    per_doc = _unit(folder, point) / "per_doc.json"
    found = json.loads(per_doc.read_text())
    values = found["tasks"]["toy_task"]["metrics"]["margin"]
    for i in range(len(values)) if docs is None else docs:
        values[i] = float("nan")
    per_doc.write_text(json.dumps(found))


def _entry(report, side):
    (entry,) = [e for e in report["card"]["entries"] if e["side"] == side]
    return entry


def test_missing_units_leave_every_other_number_and_each_is_named(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "s", planted=True)
    _drop(sweep, "L2_a-0.5")
    _drop(sweep, "L2_a-1_random3")
    _nan(sweep, "L2_a-2")
    _fail(sweep, "base_L2_a1")
    report = build_report(sweep)
    dpo = _entry(report, "dpo")
    assert dpo["gap_shown"] and dpo["gap"]["n"] == N_DOCS
    (row,) = dpo["rows"]
    assert row["alpha"] == -1.0 and row["closure"]["fraction"] == pytest.approx(0.5)
    assert [r["control"] for r in row["random"]] == [i for i in range(K) if i != 3] and row["rank"]["k"] == K - 1
    assert row["random_missing"] == ["L2_a-1_random3"]
    assert _entry(report, "base")["rows"] == []
    assert report["card"]["running"] == []
    assert report["missing"] == [
        "toy_task / margin: L2_a-0.5 (never ran: no results in points/L2_a-0.5/toy_task)",
        "toy_task / margin: L2_a-1_random3 (never ran: no results in points/L2_a-1_random3/toy_task)",
        "toy_task / margin: L2_a-2 (no finite margin: every document NaN or inf)",
        "toy_task / margin: base_L2_a1 (failed: RuntimeError: CUDA out of memory)",
    ]
    assert main(["report", str(sweep), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| toy_task / margin | dpo | L2_a-1 | 50.0 % [50.0 %, 50.0 %]" in out
    assert "not measured: toy_task / margin: base_L2_a1 (failed: RuntimeError: CUDA out of memory)" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    gap = md[md.index("## The gap"):md.index("## Verdict card")]
    assert "* toy_task / margin: DPO " in gap and f"over {N_DOCS} documents" in gap
    card = md[md.index("## Verdict card"):md.index("## The authors'")]
    assert "| toy_task / margin | dpo | L2_a-1 | 50.0 %" in card
    for line in report["missing"]:
        assert f"* not measured: {line}" in card


def test_a_missing_unsteered_point_is_named_and_the_metric_is_still_listed(tmp_path):
    sweep = make_sweep(tmp_path / "s", planted=True)
    _drop(sweep, "base")
    report = build_report(sweep)
    assert [c["metric"] for c in report["curves"]] == ["margin"]
    assert report["curves"][0]["gap"] is None
    assert report["missing"] == ["toy_task / margin: base (never ran: no results in points/base/toy_task)"]


def _write_lock(sweep, pid):
    lock_path(sweep).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                            "started": "2026-12-04T00:00:00Z", "command": "dsteer-eval sweep"}))


def test_a_sweep_still_running_is_reported_as_running(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "s", planted=True)
    _drop(sweep, "L2_a-2")
    _write_lock(sweep, os.getppid())  # a live process that is not this one
    report = build_report(sweep)
    assert report["card"]["running"] == [
        f"{sweep}: still running (pid {os.getppid()} on {socket.gethostname()}, started 2026-12-04T00:00:00Z): "
        "its numbers are partial; report again when it has finished"]
    assert report["missing"] == ["toy_task / margin: L2_a-2 (not run yet: the sweep is still running)"]
    assert main(["report", str(sweep), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert f"**still running**: {sweep}: still running (pid {os.getppid()}" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    card = md[md.index("## Verdict card"):md.index("## The authors'")]
    assert "**still running**" in card and "* not measured: toy_task / margin: L2_a-2 (not run yet" in card


def test_a_stale_lock_or_this_process_own_lock_is_not_a_running_sweep(tmp_path):
    sweep = make_sweep(tmp_path / "s", planted=True)
    _drop(sweep, "L2_a-2")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    _write_lock(sweep, ended.pid)  # a killed sweep: its process has ended
    report = build_report(sweep)
    assert report["card"]["running"] == []
    assert report["missing"] == ["toy_task / margin: L2_a-2 (never ran: no results in points/L2_a-2/toy_task)"]
    _write_lock(sweep, os.getpid())  # `sweep --report`: this process holds the lock over the finished sweep
    assert build_report(sweep)["card"]["running"] == []


def test_a_missing_selection_unit_is_named_and_its_layer_is_no_candidate(tmp_path):
    sweep = make_layer_sweep(tmp_path / "s")
    shutil.rmtree(sweep / "points" / "L2_a-1" / "toy_select")
    report = build_report(sweep)
    assert report["missing"] == ["toy_select / margin: L2_a-1 (never ran: no results in points/L2_a-1/toy_select)"]
    side = report["where"][0]["sides"]["dpo"]
    assert [c["layer"] for c in side["candidates"]] == ["1", "3+4"] and side["chosen"]["layer"] == "1"
