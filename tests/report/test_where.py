"""Where it works: the layer is chosen on the selection documents and reported on the eval documents, never
chosen on the eval rows; a planted sweep where the two disagree shows which one decides."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsteer_eval.cli import main
from dsteer_eval.report.build import build_report
from dsteer_eval.report.where import selection_pairs
from dsteer_eval.sweep.plan import FORMAT as SWEEP_FORMAT

N, K = 60, 20  # K >= 19: vs random can be decided
TASKS = ("toy", "toy_select")
# fraction of the gap each layer closes at alpha -1: on the selection rows layer 2 leads, on eval rows layer 1
PLANTED = {"toy": {"1": 0.8, "2": 0.5, "3+4": 0.2}, "toy_select": {"1": 0.3, "2": 0.6, "3+4": 0.1}}


def _write(folder, name, values_by_task):
    for task, values in values_by_task.items():
        unit = folder / "points" / name / task
        unit.mkdir(parents=True)
        unit.joinpath("results_2026-12-04T00-00-00.json").write_text("{}")
        unit.joinpath("per_doc.json").write_text(json.dumps({"format": "dsteer-eval/per-doc", "tasks": {task: {
            "doc_id": list(range(N)), "metrics": {"margin": [float(v) for v in values]}}}}))


def make_layer_sweep(folder, planted=PLANTED, seed=1, noise=0.0):
    rng = np.random.default_rng(seed)
    base = {t: rng.normal(0, 1, N) for t in TASKS}
    dpo = {t: base[t] + 3.0 + rng.normal(0, 0.2, N) for t in TASKS}
    points = [("unsteered", "dpo", None, 0.0, None, dpo), ("base", "base", None, 0.0, None, base)]
    for layer in planted["toy"]:
        moved = {t: dpo[t] + planted[t][layer] * (base[t] - dpo[t]) + rng.normal(0, noise, N) for t in TASKS}
        points.append((f"L{layer}_a-1", "dpo", layer, -1.0, None, moved))
        points += [(f"L{layer}_a-1_random{i}", "dpo", layer, -1.0, i, {t: dpo[t] + rng.normal(0, 0.2, N) for t in TASKS})
                   for i in range(K)]
    for name, _, _, _, _, values in points:
        _write(folder, name, values)
    (folder / "sweep.json").write_text(json.dumps({"format": SWEEP_FORMAT, "tasks": list(TASKS), "points": [
        {"name": n, "side": s, "layer": layer, "alpha": a, "control": c} for n, s, layer, a, c, _ in points],
        "settings": {"model_args": "pretrained=tiny"}}))
    return folder


def test_selection_pairs_find_each_task_with_its_selection_task():
    assert selection_pairs(["a", "a_select", "b_select", "c"]) == [("a", "a_select")]


def test_the_layer_is_chosen_on_the_selection_rows_and_reported_on_eval(tmp_path):
    report = build_report(make_layer_sweep(tmp_path / "s"))
    assert {e["task"] for e in report["card"]["entries"]} == {"toy"}  # the selection task is not a card row
    (entry,) = report["where"]
    side = entry["sides"]["dpo"]
    by = {c["layer"]: c for c in side["candidates"]}
    assert set(by) == {"1", "2", "3+4"}
    for layer, c in by.items():
        assert c["eval"]["fraction"] == pytest.approx(PLANTED["toy"][layer])
        assert c["select"]["fraction"] == pytest.approx(PLANTED["toy_select"][layer])
        assert c["rank"]["rank"] == 1 and c["verdicts"]["vs_random"] == "supported"
    assert side["chosen"]["layer"] == "2" and side["chosen"]["eval"]["fraction"] == pytest.approx(0.5)
    assert side["best_on_eval"]["layer"] == "1" and "optimistic" in side["best_on_eval"]["note"]
    assert [c["chosen"] for c in side["candidates"]] == [False, True, False]
    assert entry["sides"]["base"]["candidates"] == [] and entry["sides"]["base"]["chosen"] is None


def test_the_runner_up_and_the_difference_ci_are_reported(tmp_path):
    side = build_report(make_layer_sweep(tmp_path / "s"))["where"][0]["sides"]["dpo"]
    runner = side["runner_up"]
    # on the selection rows: layer 2 at 0.6 (distance 0.4), layer 1 at 0.3 (distance 0.7): 0.3 nearer, exactly
    assert runner["layer"] == "1" and runner["difference"]["mean"] == pytest.approx(0.3)
    assert runner["difference"]["low"] > 0 and runner["resolved"] is True
    close = {"toy": PLANTED["toy"], "toy_select": {"1": 0.58, "2": 0.6, "3+4": 0.1}}
    tied = build_report(make_layer_sweep(tmp_path / "t", close, noise=1.0))["where"][0]["sides"]["dpo"]["runner_up"]
    assert abs(tied["difference"]["mean"]) < 0.3 and tied["resolved"] is False  # within noise: not resolved
    assert tied["difference"]["low"] < 0 < tied["difference"]["high"]


def test_a_broken_candidate_that_wins_on_accuracy_is_never_chosen(tmp_path):
    """The authors' five-layer set at one scalar: its margin moves 159 % the wrong way (a broken model), while
    its 0/1 accuracy lands exactly on the base's. The where-table is built on the continuous margin only, and
    there the broken set is not eligible."""
    broken = {"toy": {"1": 0.3, "2": 0.4, "3+4": -1.59}, "toy_select": {"1": 0.3, "2": 0.45, "3+4": -1.59}}
    folder = make_layer_sweep(tmp_path / "s", broken)
    for task in TASKS:  # an accuracy: 1 where the margin is positive; base 0.0 everywhere, DPO 1.0
        for point in (folder / "points").iterdir():
            unit = point / task / "per_doc.json"
            found = json.loads(unit.read_text())
            margin = found["tasks"][task]["metrics"]["margin"]
            acc = [0.0] * N if point.name == "base" or point.name.startswith("L3+4_a-1") and "random" not in \
                point.name else [float(m > 1.5) for m in margin]
            found["tasks"][task]["metrics"]["acc"] = acc
            unit.write_text(json.dumps(found))
    report = build_report(folder)
    assert [e["metric"] for e in report["where"]] == ["margin"]  # no where-table chosen on accuracy
    side = report["where"][0]["sides"]["dpo"]
    by = {c["layer"]: c for c in side["candidates"]}
    assert "does not move toward the target" in by["3+4"]["excluded"]
    assert side["chosen"]["layer"] == "2"
    assert side["best_on_eval"]["layer"] == "2"  # nearest the target on eval too: the wrong-way set never wins


def test_changing_only_the_eval_rows_never_changes_the_choice(tmp_path):
    flipped = {"toy": {"1": 0.1, "2": 0.2, "3+4": 0.9}, "toy_select": PLANTED["toy_select"]}
    side = build_report(make_layer_sweep(tmp_path / "s", flipped))["where"][0]["sides"]["dpo"]
    assert side["chosen"]["layer"] == "2" and side["best_on_eval"]["layer"] == "3+4"


def test_the_report_page_shows_the_where_table(tmp_path, capsys):
    assert main(["report", str(make_layer_sweep(tmp_path / "s")), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Where it works: by layer and position" in md and "selection rows: gap closed" in md
    assert "| — | 2 **← chosen** | 60.0 % | 50.0 % [" in md and "where_toy_margin.png" in md
    assert (tmp_path / "rep" / "where_toy_margin.png").is_file()
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "rep2"), "--where-alphas", "-2,1"]) == 0
    assert json.loads((tmp_path / "rep2" / "report.json").read_text())["where"][0]["sides"]["dpo"]["candidates"] == []
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "rep3"), "--where-alphas", "1,-1"]) == 2
    assert "--where-alphas 1,-1: give the DPO side's alpha (negative) and the base side's (positive)" in \
        capsys.readouterr().err
