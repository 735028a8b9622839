"""The leaderboard: tables and plots from real lm-eval output folders and from hand-written sweep folders."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

from dsteer_eval.leaderboard import build_leaderboard, write_leaderboard
from dsteer_eval.leaderboard.render import markdown

PNG = b"\x89PNG\r\n\x1a\n"


def md_cells(markdown: str) -> dict[str, list[str]]:
    """``{row label: [cell texts]}`` of a Markdown table, plus the header under "run"."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| -"):  # the separator line
            continue
        parts = [p.strip() for p in line.strip("|").split(" | ")]
        out[parts[0]] = parts[1:]
    return out


def check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG, path
    assert matplotlib.image.imread(path).ndim == 3  # decodes


# --------------------------------------------------------------------------- real lm-eval output


@pytest.fixture(scope="module")
def lm_eval_out(tiny, tiny_dir, tmp_path_factory):
    """``lm_eval --model steered --output_path OUT`` at alpha=-1 and alpha=0 (layer 2), as the CLI writes it:
    dsteer_hh_mini plus a user task whose metadata names logprob_margin as its headline."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from dsteer_eval.adapters.plugin import tasks_dir
    from test_tasks import write_vector

    root = tmp_path_factory.mktemp("lb_real")
    include = root / "tasks"
    include.mkdir()
    (include / "hh_headline.yaml").write_text(
        f"task: hh_headline\ninclude: {tasks_dir()}/hh/dsteer_hh_mini.yaml\n"
        f"metadata:\n  version: 2.0\n  headline: logprob_margin\n")

    vector = write_vector(root / "v.safetensors", tiny[0])
    out = root / "out"
    task_manager = TaskManager(include_path=[tasks_dir(), str(include)], include_defaults=False)  # fast to index
    for alpha in (-1.0, 0.0):
        tracker = EvaluationTracker(output_path=str(out))
        results = lm_eval.simple_evaluate(
            model="steered", model_args={"pretrained": tiny_dir, "vector": vector, "layer": 2, "alpha": alpha},
            tasks=["dsteer_hh_mini", "hh_headline"], limit=3, batch_size=4, evaluation_tracker=tracker,
            task_manager=task_manager)
        results.pop("samples", None)
        tracker.save_results_aggregated(results=results, samples=None)
    files = [json.loads(f.read_text()) for f in out.rglob("results_*.json")]
    assert len(files) == 2
    return out, {data["config"]["model_args"]["alpha"]: data for data in files}


def test_real_lm_eval_folder_table_files_and_plots(lm_eval_out, tmp_path):
    out, by_alpha = lm_eval_out
    board = build_leaderboard([out])
    assert [r.label for r in board.rows] == ["unsteered (α=0)", "layer 2, α=-1"]
    assert [(r.key.alpha, r.key.layer, r.key.unsteered) for r in board.rows] == [(0.0, None, True), (-1.0, "2", False)]
    # headline: dsteer_hh_mini's first metric_list entry; hh_headline's metadata.headline
    assert [c.key for c in board.columns] == ["dsteer_hh_mini/acc", "hh_headline/logprob_margin"]
    assert [c.header for c in board.columns] == ["dsteer_hh_mini/acc ↑", "hh_headline/logprob_margin ↑"]
    raw = [by_alpha[0.0]["results"], by_alpha[-1.0]["results"]]  # in row order
    for j, (task, metric) in enumerate([("dsteer_hh_mini", "acc"), ("hh_headline", "logprob_margin")]):
        values = [res[task][f"{metric},none"] for res in raw]
        assert [board.cells[i][j].value for i in range(2)] == values
        assert [board.cells[i][j].stderr for i in range(2)] == [res[task][f"{metric}_stderr,none"] for res in raw]
        assert [board.cells[i][j].best for i in range(2)] == [v == max(values) for v in values]
    for row, res in zip(board.rows, raw):
        for task in ("dsteer_hh_mini", "hh_headline"):
            assert {k: m["value"] for k, m in row.metrics[task].items()} == {
                k: v for k, v in res[task].items() if "," in k and "_stderr," not in k}
            assert row.metrics[task]["skipped_pairs,none"]["stderr"] is None  # lm-eval wrote "N/A"

    written = write_leaderboard(board, tmp_path / "lb")
    assert set(written) == {"markdown", "csv", "json", "html", "plots"}
    md = md_cells(written["markdown"].read_text())
    assert md["run"] == ["dsteer_hh_mini/acc ↑", "hh_headline/logprob_margin ↑"]
    assert md_cells(markdown(board)) == md
    margins = [res["hh_headline"]["logprob_margin,none"] for res in raw]
    for label, res in zip(["unsteered (α=0)", "layer 2, α=-1"], raw):
        acc, acc_se = res["dsteer_hh_mini"]["acc,none"], res["dsteer_hh_mini"]["acc_stderr,none"]
        m, m_se = res["hh_headline"]["logprob_margin,none"], res["hh_headline"]["logprob_margin_stderr,none"]
        want_m = f"{m:.1f} ± {m_se:.1f}"  # |margin| >= 100 on the random tiny model: one decimal
        assert abs(m) >= 100
        assert md[label][1] == (f"**{want_m} ↑**" if m == max(margins) else want_m)
        assert md[label][0].strip("*").startswith(f"{acc:.3f} ± {acc_se:.3f}")

    rows = list(csv.DictReader(written["csv"].open(encoding="utf-8")))
    assert [r["run"] for r in rows] == ["unsteered (α=0)", "layer 2, α=-1"]
    assert [float(r["hh_headline/logprob_margin"]) for r in rows] == margins
    assert [float(r["hh_headline/logprob_margin stderr"]) for r in rows] == [
        res["hh_headline"]["logprob_margin_stderr,none"] for res in raw]
    assert [r["alpha"] for r in rows] == ["0.0", "-1.0"] and [r["layer"] for r in rows] == ["", "2"]

    data = json.loads(written["json"].read_text())
    assert (data["format"], data["format_version"]) == ("dsteer-eval/leaderboard", "1")
    assert [c["direction"] for c in data["columns"]] == ["higher", "higher"]
    assert [r["unsteered"] for r in data["rows"]] == [True, False]
    for r, res in zip(data["rows"], raw):
        cell = r["cells"]["hh_headline/logprob_margin"]
        assert cell == {"status": "ok", "value": res["hh_headline"]["logprob_margin,none"],
                        "stderr": res["hh_headline"]["logprob_margin_stderr,none"],
                        "best": res["hh_headline"]["logprob_margin,none"] == max(margins)}
        assert r["metrics"]["dsteer_hh_mini"]["acc_norm,none"]["value"] == res["dsteer_hh_mini"]["acc_norm,none"]

    page = written["html"].read_text()
    assert "<table" in page and "data:image/png;base64," in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in text and "<link" not in text and "<script" not in text
    assert "layer 2, α=-1" in page

    metric_plots = {f"{task}__{k.partition(',')[0]}.png" for task in ("dsteer_hh_mini", "hh_headline")
                    for k, v in raw[0][task].items() if "," in k and "_stderr," not in k}
    assert {p.name for p in written["plots"].iterdir()} == metric_plots | {"overview.png"}
    for path in written["plots"].iterdir():
        check_png(path)


# --------------------------------------------------------------------------- hand-written folders


def write_results(folder: Path, model_args, values: dict, *, date=None, hib=None, headlines=None,
                  groups=None, stamp="x") -> Path:
    """An lm-eval results file; ``values = {task: {"metric,filter": v, "metric_stderr,filter": s}}``."""
    folder.mkdir(parents=True, exist_ok=True)
    headlines = headlines or {}
    configs = {task: {"task": task,
                      "metric_list": [{"metric": k.partition(",")[0]} for k in v if "_stderr," not in k],
                      "metadata": {"version": 1.0, **({"headline": headlines[task]} if task in headlines else {})}}
               for task, v in values.items()}
    results = {task: {"alias": task, "sample_len": 3, **v} for task, v in values.items()}
    for group in groups or {}:
        results[group] = {"alias": group, " ": " "}
    data = {"results": results, "group_subtasks": groups or {},
            "configs": configs, "higher_is_better": {t: hib if hib is not None else {"acc": True} for t in values},
            "n-samples": {t: {"original": 3, "effective": 3} for t in values},
            "config": {"model": "steered", "model_args": model_args}}
    if date is not None:
        data["date"] = date
    path = folder / f"results_{stamp}.json"
    path.write_text(json.dumps(data))
    return path


def write_json(path: Path, data: dict, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def acc(v, se=0.01):
    return {"acc,none": v, "acc_stderr,none": se}


def test_newest_file_wins_and_alpha_zero_is_one_row_at_any_layer(tmp_path):
    src = tmp_path / "sweep"
    write_results(src / "a", "pretrained=m,layer=2,alpha=-1", {"t": acc(0.1)}, date=100)
    write_results(src / "b", "alpha=-1.0,layer=2,pretrained=m,batch_size=8", {"t": acc(0.2)}, date=200)
    write_results(src / "c", "pretrained=m,layer=2,alpha=-1", {"t": acc(0.3)}, date=150)
    write_results(src / "d", "pretrained=m,layer=5,alpha=0", {"t": acc(0.5)}, date=300)
    late = write_results(src / "e", {"pretrained": "m", "layer": 2, "alpha": 0.0, "device": "cpu"}, {"t": acc(0.4)})
    os.utime(late, (350, 350))  # no `date`: the file's mtime counts
    board = build_leaderboard([src])
    assert [r.label for r in board.rows] == ["unsteered (α=0)", "layer 2, α=-1"]
    assert [r.model for r in board.rows] == ["pretrained=m", "pretrained=m"]
    assert [row[0].value for row in board.cells] == [0.4, 0.2]
    assert board.rows[0].files == [late]
    assert [row[0].best for row in board.cells] == [True, False]


def test_failed_cells_show_failed_and_never_a_number(tmp_path):
    src = tmp_path / "sweep"
    both = {"t": acc(0.6), "u": acc(0.7)}
    # alpha=-1: a group run (t, u) at date 100, then the group failed (newer): both cells failed
    write_results(src / "p1" / "grp", "m=1,layer=2,alpha=-1", both, date=100, groups={"grp": ["t", "u"]})
    write_json(src / "p1" / "grp2" / "failed.json", {"format": "dsteer-eval/failed-task", "task": "grp",
                                                     "model_args": "m=1,layer=2,alpha=-1",
                                                     "error": "RuntimeError: boom"}, mtime=200)
    # alpha=1: an older failure of t is ignored, the newer results count
    write_json(src / "p2" / "t0" / "failed.json", {"format": "dsteer-eval/failed-task", "task": "t",
                                                   "model_args": "m=1,layer=2,alpha=1", "error": "old"}, mtime=200)
    write_results(src / "p2" / "t", "m=1,layer=2,alpha=1", {"t": acc(0.9, 0.02)}, date=300)
    # alpha=2: a task that never produced results anywhere gets its own column
    write_json(src / "p3" / "v" / "failed.json", {"format": "dsteer-eval/failed-task", "task": "v",
                                                  "model_args": "m=1,layer=2,alpha=2", "error": "OSError: x"})
    board = build_leaderboard([src])
    assert [r.label for r in board.rows] == ["layer 2, α=-1", "layer 2, α=1", "layer 2, α=2"]
    assert [c.key for c in board.columns] == ["t/acc", "u/acc", "v"]
    md = md_cells(markdown(board))
    assert md["layer 2, α=-1"] == ["failed", "failed", "—"]
    assert md["layer 2, α=1"] == ["**0.900 ± 0.020 ↑**", "—", "—"]
    assert md["layer 2, α=2"] == ["—", "—", "failed"]
    assert [[c.best if c else None for c in row] for row in board.cells] == [
        [False, False, None], [True, None, None], [None, None, False]]

    written = write_leaderboard(board, tmp_path / "out", plots=False)
    assert "plots" not in written and not (tmp_path / "out" / "plots").exists()
    rows = json.loads(written["json"].read_text())["rows"]
    assert rows[0]["cells"] == {"t/acc": {"status": "failed", "error": "RuntimeError: boom"},
                                "u/acc": {"status": "failed", "error": "RuntimeError: boom"}}
    assert rows[0]["metrics"] == {}
    assert rows[1]["cells"]["t/acc"] == {"status": "ok", "value": 0.9, "stderr": 0.02, "best": True}
    assert rows[2]["cells"] == {"v": {"status": "failed", "error": "OSError: x"}}
    table = list(csv.reader(written["csv"].open(encoding="utf-8")))
    assert table[0][5:] == ["t/acc", "t/acc stderr", "u/acc", "u/acc stderr", "v", "v stderr"]
    assert table[1][5:] == ["failed", "", "failed", "", "", ""]
    page = written["html"].read_text()
    assert page.count('<td class="failed" title="RuntimeError: boom">failed</td>') == 2
    assert "data:image/png" not in page


def test_stderr_na_headline_groups_and_non_numeric_metrics(tmp_path):
    src = tmp_path / "run"
    values = {"t": {"acc,none": 0.5, "acc_stderr,none": "N/A", "scorer,scored": "offline:x",
                    "n,scored": 3, "n_stderr,scored": "N/A"},
              "h": {"acc,none": 0.25, "acc_stderr,none": 0.1, "margin,none": 1234.5678, "margin_stderr,none": 12.0,
                    "margin,strict": 7.0}}
    write_results(src, "pretrained=m,layer=final,alpha=0.5", values, date=1, headlines={"h": "margin"},
                  hib={"acc": True, "n": False}, groups={"grp": ["t", "h"]})
    board = build_leaderboard([src])
    assert [c.header for c in board.columns] == ["t/acc ↑", "h/margin"]  # h: metadata.headline, no direction
    [[t, h]] = board.cells
    assert (t.value, t.stderr, t.best) == (0.5, None, True)
    assert (h.value, h.stderr, h.best) == (1234.5678, 12.0, False)  # filter "none" preferred
    assert md_cells(markdown(board))["layer final, α=0.5"] == ["**0.500 ↑**", "1234.6 ± 12.0"]
    [row] = board.rows
    assert set(row.metrics) == {"t", "h"}  # the group entry is skipped
    assert row.metrics["t"]["scorer,scored"] == {"value": "offline:x", "stderr": None}
    written = write_leaderboard(board, tmp_path / "out")
    assert json.loads(written["json"].read_text())["rows"][0]["metrics"]["t"]["scorer,scored"]["value"] == "offline:x"
    assert {p.name for p in written["plots"].iterdir()} == {
        "overview.png", "t__acc.png", "t__n__scored.png", "h__acc.png", "h__margin.png", "h__margin__strict.png"}


def test_winrate_and_probe_columns(tmp_path):
    src = tmp_path / "sweep"
    points = {"unsteered": (0, None, None), "L2_a-1": (-1, 0.7, (-2.0, 0.01)), "L2_a1": (1, 0.4, (2.0, 1.5))}
    for name, (alpha, win, probe) in points.items():
        args = "pretrained=m,alpha=0" if alpha == 0 else f"pretrained=m,layer=2,alpha={alpha}"
        write_results(src / "points" / name / "t", args, {"t": acc(0.5 + alpha / 10)}, date=10)
        margin, kl = probe or (0.0, 0.5)
        write_json(src / "points" / name / "probes.json", {
            "format": "dsteer-eval/point-probes", "model_args": args,
            "projection_margin": {"mean": margin, "stderr": 0.1, "n": 8, "site": 4},
            "restoration_kl": {"mean": kl, "stderr": None, "n": 8}})
        if win is not None:
            write_json(src / "points" / name / "winrate" / "geval.json", {
                "format": "dsteer-eval/winrate", "task": "geval", "criterion": "helpfulness", "win_rate": win,
                "stderr": 0.05, "n": 10, "n_failed": 1, "model_args": args})
    board = build_leaderboard([src])
    assert [r.label for r in board.rows] == ["unsteered (α=0)", "layer 2, α=-1", "layer 2, α=1"]
    assert [c.header for c in board.columns] == [
        "t/acc ↑", "geval win-rate vs α=0 ↑", "projection margin ↑", "restoration KL ↓"]
    values = [[c.value if c else None for c in row] for row in board.cells]
    assert values == [[0.5, None, 0.0, 0.5], [0.4, 0.7, -2.0, 0.01], [0.6, 0.4, 2.0, 1.5]]
    assert [[bool(c and c.best) for c in row] for row in board.cells] == [
        [False, False, False, False], [False, True, False, True], [True, False, True, False]]
    md = md_cells(markdown(board))
    assert md["unsteered (α=0)"][1] == "—"
    assert md["layer 2, α=-1"][1:] == ["**0.700 ± 0.050 ↑**", "-2.000 ± 0.100", "**0.0100 ↓**"]
    written = write_leaderboard(board, tmp_path / "out")
    rows = json.loads(written["json"].read_text())["rows"]
    assert rows[1]["cells"]["geval win-rate vs α=0"] == {"status": "ok", "value": 0.7, "stderr": 0.05, "best": True,
                                                         "criterion": "helpfulness", "n": 10, "n_failed": 1}
    assert rows[2]["cells"]["projection margin"] == {"status": "ok", "value": 2.0, "stderr": 0.1, "best": True,
                                                     "n": 8, "site": 4}
    names = {p.name for p in written["plots"].iterdir()}
    assert names == {"overview.png", "t__acc.png", "geval_win-rate_vs_alpha_0.png", "projection_margin.png",
                     "restoration_KL.png"}
    for path in written["plots"].iterdir():
        check_png(path)


def test_ties_directions_and_sources(tmp_path):
    a, b = tmp_path / "runs_a", tmp_path / "runs_b"
    hib = {"acc": True, "loss": False}
    for src, alpha, acc_v, loss in [(a, -1, 0.5, 1.0), (a, 1, 0.7, 1.0), (b, -1, 0.7, 3.0)]:
        write_results(src / f"a{alpha}", f"pretrained=m,layer=3,alpha={alpha}",
                      {"t": acc(acc_v), "l": {"loss,none": loss}, "q": {"x,none": acc_v}}, hib=hib, date=1)
    write_results(a / "hf", "pretrained=m,dtype=float32", {"t": acc(0.1)}, hib=hib, date=1)
    board = build_leaderboard([a, b])
    assert [r.label for r in board.rows] == [
        "runs_a · pretrained=m", "runs_a · layer 3, α=-1", "runs_a · layer 3, α=1", "runs_b · layer 3, α=-1"]
    assert [c.header for c in board.columns] == ["t/acc ↑", "l/loss ↓", "q/x"]
    assert [[bool(c and c.best) for c in row] for row in board.cells] == [
        [False, False, False], [False, True, False], [True, True, False], [True, False, False]]
    md = md_cells(markdown(board))
    assert md["runs_a · layer 3, α=1"] == ["**0.700 ± 0.010 ↑**", "**1.000 ↓**", "0.700"]
    assert md["runs_a · pretrained=m"] == ["0.100 ± 0.010", "—", "—"]


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'nope'}: no such folder")):
        build_leaderboard([tmp_path / "nope"])
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape(f"{empty}: no lm-eval results_*.json")):
        build_leaderboard([empty])
    broken = tmp_path / "broken" / "m" / "results_2024.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"results": {')
    with pytest.raises(ValueError, match=re.escape(f"cannot read {broken}")):
        build_leaderboard([broken.parent.parent])
    broken.write_text('{"results": {}}')
    with pytest.raises(ValueError, match=re.escape(f"{broken} is not an lm-eval results file: no 'configs', 'config'")):
        build_leaderboard([broken.parent.parent])
    bad_probe = write_json(tmp_path / "probe" / "probes.json", {"model_args": "alpha=1"})
    with pytest.raises(ValueError, match=re.escape(f"{bad_probe} is not a dsteer-eval probes file")):
        build_leaderboard([bad_probe.parent])
