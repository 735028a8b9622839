"""The D-STEER report on sweeps with a known answer: a planted direction that closes exactly |α|/2 of the gap
on every document (random directions move nothing), and a null where v̄ is one more random direction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsteer_eval.cli import main
from dsteer_eval.report.build import build_report
from dsteer_eval.sweep.plan import FORMAT as SWEEP_FORMAT

N_DOCS, K = 120, 20  # K >= 19: the empirical p can reach 0.05


def _write_point(folder, name, values, degenerate=None):
    unit = folder / "points" / name / "toy_task"
    unit.mkdir(parents=True)
    metrics = {"margin": [float(v) for v in values]}
    if degenerate is not None:
        metrics["n_degenerate"] = [int(x) for x in degenerate]
    unit.joinpath("results_2026-12-04T00-00-00.json").write_text("{}")  # a finished unit has its results file
    unit.joinpath("per_doc.json").write_text(json.dumps(
        {"format": "dsteer-eval/per-doc", "tasks": {"toy_task": {"doc_id": list(range(len(values))),
                                                                  "metrics": metrics}}}))


def make_sweep(folder, *, planted: bool, k: int = K, seed: int = 0):
    """base ~ N(0, 1); DPO = base + 2 + noise. v̄ at α on the DPO side: planted = DPO − (|α|/2)·(DPO − base) per
    document (fraction |α|/2 exactly); null = DPO + noise like the randoms. Base side α = 1: planted installs
    half the gap."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, N_DOCS)
    dpo = base + 2.0 + rng.normal(0, 0.3, N_DOCS)
    points = [{"name": "unsteered", "side": "dpo", "layer": None, "alpha": 0.0, "control": None},
              {"name": "base", "side": "base", "layer": None, "alpha": 0.0, "control": None}]
    _write_point(folder, "unsteered", dpo)
    _write_point(folder, "base", base)
    for side, alpha in (("dpo", -0.5), ("dpo", -1.0), ("dpo", -2.0), ("base", 1.0)):
        start, target = (dpo, base) if side == "dpo" else (base, dpo)
        name = f"{'base_' if side == 'base' else ''}L2_a{alpha:g}"
        moved = start + (abs(alpha) / 2) * (target - start) if planted else start + rng.normal(0, 0.3, N_DOCS)
        points.append({"name": name, "side": side, "layer": "2", "alpha": alpha, "control": None})
        _write_point(folder, name, moved, degenerate=[abs(alpha) >= 2] * N_DOCS)
        for i in range(k):
            points.append({"name": f"{name}_random{i}", "side": side, "layer": "2", "alpha": alpha, "control": i})
            _write_point(folder, f"{name}_random{i}", start + rng.normal(0, 0.3, N_DOCS))
    (folder / "sweep.json").write_text(json.dumps({"format": SWEEP_FORMAT, "tasks": ["toy_task"], "points": points,
                                                   "settings": {"model_args": "pretrained=tiny,layer=2"}}))
    (folder / "ceiling.json").write_text(json.dumps({"negative": {"ceiling": 1.5}, "positive": {"ceiling": 4.0}}))
    return folder


def _rows(report, side):
    (entry,) = [e for e in report["card"]["entries"] if e["side"] == side]
    return entry, {r["alpha"]: r for r in entry["rows"]}


def test_a_planted_direction_closes_exactly_its_share_and_beats_every_random_direction(tmp_path):
    report = build_report(make_sweep(tmp_path / "s", planted=True))
    entry, rows = _rows(report, "dpo")
    assert entry["gap_shown"] and entry["gap"]["mean"] > 1.9
    for alpha, expected in ((-0.5, 0.25), (-1.0, 0.5), (-2.0, 1.0)):
        c = rows[alpha]["closure"]
        assert c["fraction"] == pytest.approx(expected) and c["low"] == pytest.approx(expected)
        assert rows[alpha]["rank"]["rank"] == 1 and rows[alpha]["rank"]["p_value"] == pytest.approx(1 / (K + 1))
        assert rows[alpha]["verdicts"]["moves"] == "supported" and rows[alpha]["verdicts"]["vs_random"] == "supported"
        assert abs(rows[alpha]["random_mean"]) < 0.1 and len(rows[alpha]["random"]) == K
    assert rows[-0.5]["verdicts"]["half"] == "contradicted" and rows[-1.0]["verdicts"]["half"] == "supported"
    assert rows[-2.0]["beyond_ceiling"] is True and rows[-1.0]["beyond_ceiling"] is False
    assert rows[-2.0]["degeneration_rate"] == 1.0 and rows[-1.0]["degeneration_rate"] == 0.0
    assert entry["best"]["alpha"] == -1.0  # -2 is beyond the ceiling: not eligible
    view = rows[-1.0]["per_document"]  # every document moved exactly half its own gap toward the base
    assert view["wrong_way"] == 0.0 and sum(view["histogram"]["counts"]) == N_DOCS
    assert 0.3 < rows[-1.0]["random_wrong_way"] < 0.7
    _, base_rows = _rows(report, "base")
    assert base_rows[1.0]["closure"]["fraction"] == pytest.approx(0.5)


def test_a_null_direction_is_not_told_apart_from_random_ones(tmp_path):
    report = build_report(make_sweep(tmp_path / "s", planted=False))
    _, rows = _rows(report, "dpo")
    for row in rows.values():
        c = row["closure"]
        assert c["low"] < 0.15 and abs(c["fraction"]) < 0.1  # moves no real share of the gap
        assert row["verdicts"]["half"] == "contradicted"
        assert row["verdicts"]["vs_random"] in ("not shown", "not decided")  # never supported
    assert all(0.3 < row["per_document"]["wrong_way"] < 0.7 for row in rows.values())
    ranks = [row["rank"]["rank"] for row in rows.values()]
    assert max(ranks) > 1  # somewhere a random direction does at least as well


def test_k8_is_underpowered_k20_supports_and_the_cli_prints_the_card(tmp_path, capsys):
    """The same planted v̄, rank 1 either way: with K = 8 p = 1/9 can never reach 0.05 (underpowered, as the
    committed K = 8 runs are now labelled); with K = 20 it is 1/21 and the verdict is supported."""
    _, eight = _rows(build_report(make_sweep(tmp_path / "k8", planted=True, k=8)), "dpo")
    assert eight[-1.0]["rank"]["rank"] == 1 and eight[-1.0]["rank"]["p_value"] == pytest.approx(1 / 9)
    assert eight[-1.0]["verdicts"]["vs_random"] == "underpowered (K = 8 < 19)"
    _, twenty = _rows(build_report(make_sweep(tmp_path / "k20", planted=True, k=20)), "dpo")
    assert twenty[-1.0]["verdicts"]["vs_random"] == "supported"
    sweep = make_sweep(tmp_path / "s", planted=True, k=3)
    _, rows = _rows(build_report(sweep), "dpo")
    assert rows[-1.0]["verdicts"]["vs_random"] == "underpowered (K = 3 < 19)" and rows[-1.0]["rank"]["k"] == 3
    assert main(["report", str(sweep), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| toy_task / margin | dpo | L2_a-1 | 50.0 % [50.0 %, 50.0 %]" in out and "underpowered (K = 3 < 19)" in out
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "dose_response_toy_task_margin.png" in md and (tmp_path / "rep" / "dose_response_toy_task_margin.png").is_file()
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["format"] == "dsteer-eval/report"


def test_bad_input_names_the_fix(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 2
    assert "not a finished dsteer-eval sweep" in capsys.readouterr().err
    sweep = make_sweep(tmp_path / "s", planted=True)
    assert main(["report", str(sweep), "--tasks", "nope", "--out", str(tmp_path / "rep2")]) == 2
    assert "--tasks nope: not in the sweep" in capsys.readouterr().err


def test_two_sweeps_side_by_side_keep_their_labels(tmp_path, capsys):
    """In- vs cross-distribution: the pair's own v̄ (planted) beside another vector (null) on the same pair."""
    own, other = make_sweep(tmp_path / "own", planted=True), make_sweep(tmp_path / "other", planted=False)
    report = build_report([own, other], labels=["in-distribution", "cross-distribution"])
    by = {(e["label"], e["side"]): e for e in report["card"]["entries"]}
    assert by[("in-distribution", "dpo")]["best"]["fraction"] == pytest.approx(0.5)
    assert abs(by[("cross-distribution", "dpo")]["rows"][1]["closure"]["fraction"]) < 0.1
    assert main(["report", str(own), str(other), "--labels", "v̄ (in-distribution),v̄ (cross)", "--out",
                 str(tmp_path / "brackets")]) == 0  # labels with brackets: the page still finds its figures
    assert "data:image/png;base64," in (tmp_path / "brackets" / "report.html").read_text()
    capsys.readouterr()
    assert main(["report", str(own), str(other), "--labels", "in-distribution,cross-distribution",
                 "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| in-distribution: toy_task / margin | dpo | L2_a-1 | 50.0 %" in out
    assert "| cross-distribution: toy_task / margin | dpo | L2_a-1 |" in out
    assert (tmp_path / "rep" / "dose_response_in-distribution_toy_task_margin.png").is_file()
    with pytest.raises(ValueError, match="--labels: 1 label\\(s\\) for 2 sweep\\(s\\)"):
        build_report([own, other], labels=["one"])


def write_prompting_sweep(folder):
    """A prompting sweep on make_sweep's documents (seed 0): α = 0 on both sides of the instructed tasks, the
    decline instruction closing exactly a quarter of the gap on the base, the comply instruction nothing."""
    rng = np.random.default_rng(0)  # the same documents as make_sweep's seed 0
    base = rng.normal(0, 1, N_DOCS)
    dpo = base + 2.0 + rng.normal(0, 0.3, N_DOCS)
    points = [{"name": "unsteered", "side": "dpo", "layer": None, "alpha": 0.0, "control": None},
              {"name": "base", "side": "base", "layer": None, "alpha": 0.0, "control": None}]
    for point, values, task in (("base", base + 0.25 * (dpo - base), "toy_task_prompted_decline"),
                                ("unsteered", dpo, "toy_task_prompted_comply")):
        unit = folder / "points" / point / task
        unit.mkdir(parents=True)
        unit.joinpath("results_2026-12-04T00-00-00.json").write_text("{}")
        unit.joinpath("per_doc.json").write_text(json.dumps({"tasks": {task: {
            "doc_id": list(range(N_DOCS)), "metrics": {"margin": [float(v) for v in values]}}}}))
    (folder / "sweep.json").write_text(json.dumps({"format": SWEEP_FORMAT, "points": points, "settings": {},
                                                   "tasks": ["toy_task_prompted_decline", "toy_task_prompted_comply"]}))
    return folder


def test_the_prompting_baseline_stands_beside_the_steered_rows(tmp_path, capsys):
    """A prompting sweep (α = 0 on both sides, the instructed tasks): the decline instruction on the base closes
    exactly a quarter of the gap, the comply instruction on DPO nothing."""
    main_sweep = make_sweep(tmp_path / "s", planted=True)
    folder = write_prompting_sweep(tmp_path / "p")
    report = build_report(main_sweep, prompting=folder)
    by = {e["side"]: e["prompting"] for e in report["card"]["entries"]}
    assert by["base"]["closure"]["fraction"] == pytest.approx(0.25) and by["base"]["instruction"] == "decline"
    assert by["dpo"]["closure"]["fraction"] == pytest.approx(0.0) and by["dpo"]["verdicts"]["half"] == "contradicted"
    assert main(["report", str(main_sweep), "--prompting", str(folder), "--out", str(tmp_path / "rep")]) == 0
    assert "| toy_task / margin | base | prompting: decline instruction (reference) | 25.0 %" in capsys.readouterr().out


def test_the_instructed_tasks_put_the_instruction_in_the_first_human_turn():
    from lm_eval.tasks import get_task_dict

    from dsteer_eval.sweep.plan import task_manager_for  # one index per process (seconds each)

    from dsteer_eval.metrics.refusal import INSTRUCTIONS

    names = ["dsteer_refusal_ll", "dsteer_refusal_ll_prompted_decline", "dsteer_refusal_ll_prompted_comply"]
    tasks = get_task_dict(names, task_manager_for())
    plain, decline, comply = (list(tasks[n].test_docs()) for n in names)
    assert len(plain) == len(decline) == len(comply) == 321
    for a, d, c in zip(plain, decline, comply):
        for doc, which in ((d, "decline"), (c, "comply")):
            assert doc["prompt"] == a["prompt"].replace("Human: ", f"Human: {INSTRUCTIONS[which]}\n\n", 1)
            assert (doc["chosen"], doc["rejected"], doc["key"]) == (a["chosen"], a["rejected"], a["key"])
