"""Sweep and leaderboard reliability (issue 12): redaction, full disk, resume fingerprint, alpha folders,
malformed result files."""

from __future__ import annotations

import errno
import html
import json
import logging
import math
import os
import pathlib
import shutil
from pathlib import Path

import pytest

from test_leaderboard import acc, md_cells, write_json, write_results
from test_tasks import write_vector

KEY = "sk-test-SECRET-4242424242"


@pytest.fixture(scope="module")
def vec(tiny, tmp_path_factory):
    return write_vector(tmp_path_factory.mktemp("relvec") / "v.safetensors", tiny[0])


@pytest.fixture
def fast_tasks(monkeypatch):
    """lm-eval's TaskManager indexing only dsteer-eval's tasks (and --include-path): seconds faster per plan."""
    import lm_eval.tasks

    from dsteer_eval.adapters.plugin import tasks_dir

    real, made = lm_eval.tasks.TaskManager, {}

    def manager(include_path=None, **_):
        key = str(include_path)
        if key not in made:
            made[key] = real(include_path=[tasks_dir()] + ([include_path] if include_path else []),
                             include_defaults=False)
        return made[key]

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", manager)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("DSTEER_TOXICITY_SCORER", "DSTEER_TOXICITY_LABEL", "DSTEER_JUDGE", "DSTEER_JUDGE_BASE_URL",
                 "DSTEER_REFERENCE_MODEL", "PERSPECTIVE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def config(tiny_dir, vec, out, **overrides):
    from dsteer_eval.sweep.runner import SweepConfig

    values = dict(model_args=f"pretrained={tiny_dir},vector={vec}", alphas="0,1", layers="2",
                  tasks="dsteer_hh_mini", output=str(out), limit=2, batch_size=4)
    return SweepConfig(**(values | overrides))


def strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# ------------------------------------------------------------------ 9a: lossless alpha folders
ALPHAS = [1.0, 1.0000001, 0.1 + 0.2, 1 / 3, -2.5e-8, 1e22, -123456789.0, 0.5]


def test_close_alphas_get_distinct_lossless_folders_model_args_and_labels(tmp_path):
    from dsteer_eval.leaderboard import build_leaderboard
    from dsteer_eval.leaderboard.collect import row_key
    from dsteer_eval.sweep.grid import Point, parse_alpha_grid, points

    grid = points((2,), parse_alpha_grid("1,1.0000001"))
    assert [p.name for p in grid] == ["L2_a1", "L2_a1.0000001"]
    assert [p.model_args("pretrained=m") for p in grid] == ["pretrained=m,layer=2,alpha=1",
                                                           "pretrained=m,layer=2,alpha=1.0000001"]
    names = [Point(2, a).name for a in ALPHAS]
    assert len(set(names)) == len(ALPHAS), names
    for alpha, name in zip(ALPHAS, names):
        assert name.startswith("L2_a")
        assert float(name[len("L2_a"):]) == alpha  # exact, not approximately
        assert row_key(0, Point(2, alpha).model_args("pretrained=m")).alpha == alpha
    assert Point(-4, -1.0).name == "L-4_a-1" and Point("final", 0.5).name == "Lfinal_a0.5"  # earlier names kept

    for p in grid:
        write_results(tmp_path / "points" / p.name / "t", p.model_args("pretrained=m"), {"t": acc(p.alpha / 2)})
    board = build_leaderboard([tmp_path])
    assert [r.label for r in board.rows] == ["layer 2, α=1", "layer 2, α=1.0000001"]
    assert [r.key.alpha for r in board.rows] == [1.0, 1.0000001]


# ------------------------------------------------------------------ 2: the one "unit complete" rule
def _results_file(folder: Path, date: str, *, n=2, winrate=False, filters=("none",)) -> dict:
    config = {"task": "t", "metadata": {"winrate_criterion": "helpfulness"} if winrate else {"version": 1}}
    data = {"results": {"t": {"alias": "t", **{f"acc,{f}": 0.5 for f in filters}}}, "configs": {"t": config},
            "n-samples": {"t": {"original": 10, "effective": n}}, "config": {"model_args": "alpha=0"}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"results_{date}.json").write_text(json.dumps(data))
    return data


def _samples(folder: Path, date: str, rows) -> Path:
    path = folder / f"samples_t_{date}.jsonl"
    path.write_text("".join(json.dumps({"doc_id": i, "filter": f}) + "\n" for i, f in rows))
    return path


def test_unit_done_only_for_complete_parseable_files(tmp_path):
    from dsteer_eval.sweep.runner import unit_done

    date = "2024-05-01T10-00-00.123456"
    cases = {}

    def case(name):
        folder = tmp_path / name
        folder.mkdir()
        cases[name] = folder
        return folder

    _results_file(case("complete"), date)
    f = case("complete_with_samples")
    _results_file(f, date, winrate=True, filters=("none", "strict"))
    _samples(f, date, [(0, "none"), (1, "none"), (0, "strict"), (1, "strict")])
    (case("empty_results") / f"results_{date}.json").write_bytes(b"")
    (case("cut_results") / f"results_{date}.json").write_text('{"results": {"t": {"acc,none": 0.')
    (case("list_results") / f"results_{date}.json").write_text('{"results": [1, 2], "configs": {}}')
    f = case("short_samples")
    _results_file(f, date, winrate=True)
    _samples(f, date, [(0, "none")])
    f = case("cut_samples")
    _results_file(f, date, winrate=True)
    cut_text = '{"doc_id": 0, "filter": "none"}\n{"doc_id": 1, "fil'  # 50 bytes: the disk filled mid-line
    _samples(f, date, [(0, "none"), (1, "none")]).write_text(cut_text)
    f = case("missing_filter")
    _results_file(f, date, winrate=True, filters=("none", "strict"))
    _samples(f, date, [(0, "none"), (1, "none")])
    f = case("missing_samples")
    _results_file(f, date, winrate=True)
    case("nothing")

    assert {name: unit_done(folder) for name, folder in cases.items()} == {
        "complete": True, "complete_with_samples": True, "empty_results": False, "cut_results": False,
        "list_results": False, "short_samples": False, "cut_samples": False, "missing_filter": False,
        "missing_samples": False, "nothing": False}
    from dsteer_eval.sweep import units

    problem = {name: units.unit_problem(folder, shown=Path("OUT") / name) for name, folder in cases.items()}
    results, samples = f"results_{date}.json", f"samples_t_{date}.jsonl"
    assert problem["empty_results"] == f"{Path('OUT/empty_results') / results} is empty (0 bytes)"
    assert problem["cut_results"].startswith(f"{Path('OUT/cut_results') / results} is not valid JSON (cut off?")
    assert problem["list_results"] == f"{Path('OUT/list_results') / results} is not an lm-eval results file " \
                                      f"(no 'results' object)"
    assert problem["short_samples"] == (f"{Path('OUT/short_samples') / samples} holds 1 sample line(s) (per filter: "
                                        f"none: 1), the results file records 2 document(s) x 1 filter(s)")
    assert problem["cut_samples"] == f"{Path('OUT/cut_samples') / samples} is cut off (50 bytes, no newline at the end)"
    assert problem["missing_filter"] == (f"{Path('OUT/missing_filter') / samples} holds 2 sample line(s) (per filter: "
                                         f"none: 2), the results file records 2 document(s) x 2 filter(s)")
    assert problem["missing_samples"] == (f"{Path('OUT/missing_samples') / samples}: missing (the sweep keeps t's "
                                          f"samples)")
    assert problem["nothing"] == f"{Path('OUT/nothing')}: no results_*.json"
    # the sweep also names the tasks whose samples it kept (--log-samples)
    assert units.unit_problem(cases["complete"], samples_for=["t"]).endswith("missing (the sweep keeps t's samples)")


def test_full_disk_fails_the_unit_naming_the_file_then_a_rerun_completes_it(tiny_dir, vec, tmp_path, monkeypatch,
                                                                           fast_tasks, clean_env, capsys):
    """ENOSPC in lm-eval's results write (which lm-eval logs and swallows) leaves a 0-byte results file."""
    from dsteer_eval.cli import main
    from dsteer_eval.sweep import runner

    out = tmp_path / "out"
    cut = []
    real_write_text = pathlib.Path.write_text

    def full_disk(self, data, *args, **kwargs):
        if self.name.startswith("results_"):
            cut.append(self)
            real_write_text(self, "")  # open() truncated the file, the write found no space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_text", full_disk)
        failures = runner.run_sweep(config(tiny_dir, vec, out), print_fn=lambda line: None)
    assert failures == 2 and len(cut) == 2
    for written, point in zip(cut, ["unsteered", "L2_a1"]):
        folder = out / "points" / point / "dsteer_hh_mini"
        failed = json.loads((folder / "failed.json").read_text())
        assert failed["error"].startswith(f"IncompleteUnitError: {folder / written.name} is empty (0 bytes); "
                                          f"lm-eval logs and swallows its write errors: is the disk full?")
        assert not list(folder.glob("results_*"))  # the cut file never counts as done

    lines = []
    assert runner.run_sweep(config(tiny_dir, vec, out), print_fn=lines.append) == 0
    assert "(0 of 2 units already done)" in lines[0]
    for point in ["unsteered", "L2_a1"]:
        folder = out / "points" / point / "dsteer_hh_mini"
        assert not (folder / "failed.json").exists() and runner.unit_done(folder)
        [results] = folder.glob("results_*.json")
        assert json.loads(results.read_text())["n-samples"]["dsteer_hh_mini"]["effective"] == 2
    capsys.readouterr()
    assert main(["leaderboard", str(out), "--no-plots"]) == 0
    rows = strict_json(out / "leaderboard.json")["rows"]
    assert [r["label"] for r in rows] == ["unsteered (α=0)", "layer 2, α=1"]
    assert all(cell["status"] == "ok" for r in rows for cell in r["cells"].values())


# ------------------------------------------------------------------ 1: redaction of exception texts
@pytest.fixture
def key_leaking_task(tmp_path):
    from dsteer_eval.adapters.plugin import tasks_dir

    folder = tmp_path / "leak_task"
    folder.mkdir()
    (folder / "leak.py").write_text(
        "import os\n\ndef process_results(doc, results):\n"
        "    raise RuntimeError('Perspective answered 403 for ' + os.environ['PERSPECTIVE_API_KEY'])\n")
    (folder / "hh_leak.yaml").write_text(
        f"include: {Path(tasks_dir()) / 'hh' / 'dsteer_hh_mini.yaml'}\ntask: hh_leak\n"
        "process_results: !function leak.process_results\n")
    return str(folder)


def test_a_key_in_an_exception_reaches_neither_failed_json_nor_the_leaderboard(
        tiny_dir, vec, tmp_path, monkeypatch, fast_tasks, clean_env, key_leaking_task, capsys):
    from dsteer_eval.cli import main
    from dsteer_eval.sweep import runner

    from dsteer_eval.common.redaction import redact

    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    mask = redact(KEY)
    assert KEY not in mask
    out = tmp_path / "out"
    assert runner.run_sweep(config(tiny_dir, vec, out, alphas="0", tasks="hh_leak", include_path=key_leaking_task),
                            print_fn=lambda line: None) == 1
    failed_file = out / "points" / "unsteered" / "hh_leak" / "failed.json"
    failed = json.loads(failed_file.read_text())
    assert failed["error"] == f"RuntimeError: Perspective answered 403 for {mask}"
    assert f"Perspective answered 403 for {mask}" in failed["traceback"] and "leak.py" in failed["traceback"]
    assert KEY not in failed_file.read_text()
    # a failed.json written before redaction existed: the leaderboard redacts it again
    write_json(out / "points" / "L2_a1" / "hh_leak" / "failed.json", {
        "format": "dsteer-eval/failed-task", "task": "hh_leak",
        "model_args": f"pretrained={tiny_dir},vector={vec},layer=2,alpha=1",
        "error": f"RuntimeError: Perspective answered 403 for {KEY}", "traceback": f"... {KEY}"})

    capsys.readouterr()
    assert main(["leaderboard", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr()
    assert KEY not in printed.out + printed.err
    for name in ("leaderboard.md", "leaderboard.json", "leaderboard.html", "leaderboard.csv"):
        assert KEY not in (out / name).read_text(encoding="utf-8"), name
    rows = strict_json(out / "leaderboard.json")["rows"]
    assert [r["cells"]["hh_leak"] for r in rows] == [
        {"status": "failed", "error": f"RuntimeError: Perspective answered 403 for {mask}"}] * 2
    page = (out / "leaderboard.html").read_text()
    assert f'title="RuntimeError: Perspective answered 403 for {html.escape(mask)}"' in page


# ------------------------------------------------------------------ 8: resume fingerprint
def _plan_and_record(cfg):
    from dsteer_eval.sweep import runner

    plan = runner.plan_sweep(cfg)
    runner._write_record(plan)
    return plan


def test_resume_refuses_a_changed_scorer_judge_or_reference_model(tiny_dir, vec, tmp_path, monkeypatch, fast_tasks,
                                                                  clean_env):
    from dsteer_eval.sweep import runner

    cfg = config(tiny_dir, vec, tmp_path / "out")
    _plan_and_record(cfg)
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())["settings"]
    assert (record["toxicity_scorer"], record["judge"], record["reference_model"]) == ("offline", "smollm2", None)
    changes = [("DSTEER_TOXICITY_SCORER", "perspective", "toxicity_scorer: 'offline' then, 'perspective' now"),
               ("DSTEER_JUDGE", f"hf:{tiny_dir}", f"judge: 'smollm2' then, 'hf:{tiny_dir}' now"),
               ("DSTEER_REFERENCE_MODEL", f"hf:{tiny_dir}", f"reference_model: None then, 'hf:{tiny_dir}' now"),
               ("PERSPECTIVE_API_KEY", KEY, "toxicity_scorer: 'offline' then, 'perspective' now")]
    for name, value, said in changes:
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError) as err:
            runner.plan_sweep(cfg)
        message = str(err.value)
        assert said in message, message
        assert "resuming would mix incomparable results" in message
        assert "Choose a new folder (--output) or pass --overwrite" in message
        assert KEY not in message
        monkeypatch.delenv(name)
    runner.plan_sweep(cfg)  # back to the recorded settings: resumes


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_resume_refuses_changed_model_adapter_or_judge_files_at_the_same_path(
        tiny_dir, tiny_adapter_dir, vec, tmp_path, monkeypatch, fast_tasks, clean_env):
    from dsteer_eval.sweep import runner

    model, adapter, judge = tmp_path / "model", tmp_path / "adapter", tmp_path / "judge"
    shutil.copytree(tiny_dir, model)
    shutil.copytree(tiny_adapter_dir, adapter)
    shutil.copytree(tiny_dir, judge)
    monkeypatch.setenv("DSTEER_JUDGE", f"hf:{judge}")
    cfg = config(tiny_dir, vec, tmp_path / "out", model_args=f"pretrained={model},peft={adapter},vector={vec}")
    _plan_and_record(cfg)
    contents = json.loads((tmp_path / "out" / "sweep.json").read_text())["settings"]["contents"]
    assert set(contents) == {"pretrained=", "peft=", "judge", "task dsteer_hh_mini"}  # task: its YAML, template, data

    # a copy put back at the same path and newer mtimes are no change
    shutil.copytree(model, tmp_path / "model_copy")
    shutil.rmtree(model)
    (tmp_path / "model_copy").rename(model)
    for path in adapter.rglob("*"):
        os.utime(path, (1e9, 1e9))
    runner.plan_sweep(cfg)

    for folder, file, name in [(model, "model.safetensors", "pretrained="),
                               (adapter, "adapter_model.safetensors", "peft="), (judge, "model.safetensors", "judge")]:
        saved = (folder / file).read_bytes()
        _flip_last_byte(folder / file)  # retrained in place: same path, same size, other weights
        with pytest.raises(ValueError) as err:
            runner.plan_sweep(cfg)
        message = str(err.value)
        assert f"the contents of {name} ({folder.resolve()}) changed: sha256 {contents[name]['sha256'][:16]} then" \
            in message, message
        assert "Choose a new folder (--output) or pass --overwrite" in message
        (folder / file).write_bytes(saved)
        runner.plan_sweep(cfg)


def test_resume_accepts_a_model_whose_files_appear_only_after_the_first_run(tmp_path):
    """A hub model is downloaded by the first run: its hash is recorded then, not refused as a change."""
    from dsteer_eval.sweep import runner
    from dsteer_eval.sweep.fingerprint import content

    assert content("no-such-org/no-such-model-xyz") == {"sha256": None, "path": "no-such-org/no-such-model-xyz"}
    settings = {k: None for k in runner.FINGERPRINT_KEYS} | {"fingerprint_version": runner.FINGERPRINT_VERSION}
    out = tmp_path / "out"
    out.mkdir()
    first = settings | {"contents": {"pretrained=": {"sha256": None, "path": "org/m"}}}
    (out / "sweep.json").write_text(json.dumps({"settings": first}))
    found = settings | {"contents": {"pretrained=": {"sha256": "a" * 64, "path": "/cache/org/m"}}}
    runner.check_output(out, found, overwrite=False)
    (out / "sweep.json").write_text(json.dumps({"settings": found}))
    retrained = settings | {"contents": {"pretrained=": {"sha256": "b" * 64, "path": "/cache/org/m"}}}
    with pytest.raises(ValueError, match=r"the contents of pretrained= \(/cache/org/m\) changed: sha256 "
                                         r"aaaaaaaaaaaaaaaa then, bbbbbbbbbbbbbbbb now"):
        runner.check_output(out, retrained, overwrite=False)

    # a sweep.json of an earlier version (no fingerprint_version): its own keys are compared, the new ones adopted
    (out / "sweep.json").write_text(json.dumps({"settings": {k: None for k in runner.FIRST_KEYS}}))
    runner.check_output(out, retrained | {"judge": "openai:x"}, overwrite=False)
    with pytest.raises(ValueError, match="model_args: None then, 'pretrained=m' now"):
        runner.check_output(out, retrained | {"model_args": "pretrained=m"}, overwrite=False)


def test_content_hash_reads_size_and_first_and_last_mib_only(tmp_path):
    from dsteer_eval.sweep.fingerprint import MIB, file_digest, path_digest

    path = tmp_path / "w.bin"
    data = bytearray(os.urandom(5 * MIB))
    path.write_bytes(bytes(data))
    digest = file_digest(path)
    for where, same in [(2 * MIB, True), (10, False), (5 * MIB - 10, False)]:
        changed = bytearray(data)
        changed[where] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert (file_digest(path) == digest) is same, where
    path.write_bytes(bytes(data) + b"\0")
    assert file_digest(path) != digest
    (tmp_path / "d").mkdir()
    shutil.copy(path, tmp_path / "d" / "a.bin")
    before = path_digest(tmp_path / "d")
    (tmp_path / "d" / ".cache").mkdir()  # hidden entries are not contents
    (tmp_path / "d" / ".cache" / "x").write_text("x")
    assert path_digest(tmp_path / "d") == before
    (tmp_path / "d" / "a.bin").rename(tmp_path / "d" / "b.bin")
    assert path_digest(tmp_path / "d") != before


# ------------------------------------------------------------------ 9b: malformed result files
def test_malformed_files_are_skipped_with_a_warning_naming_them(tmp_path, caplog, capsys):
    from dsteer_eval.cli import main
    from dsteer_eval.leaderboard import build_leaderboard, write_leaderboard

    src = tmp_path / "sweep"
    write_results(src / "good", "pretrained=m,layer=2,alpha=1", {"t": acc(0.5)}, date=1)
    bad = {
        "list_results": write_json(src / "a" / "results_1.json", {"results": [1, 2], "configs": {}, "config": {}}),
        "string_config": write_json(src / "b" / "results_1.json", {"results": {}, "configs": {}, "config": "x"}),
        "task_list": write_json(src / "c" / "results_1.json", {"results": {"t": [0.5]}, "configs": {"t": {}},
                                                                "config": {"model_args": "alpha=2"}}),
        "empty": src / "d" / "results_1.json",
        "probe_list": write_json(src / "e" / "probes.json", {"model_args": "alpha=1", "projection_margin": [1],
                                                              "restoration_kl": {}}),
    }
    bad["empty"].parent.mkdir()
    bad["empty"].write_bytes(b"")  # what a full disk left
    with caplog.at_level(logging.WARNING, logger="dsteer_eval.leaderboard.collect"):
        board = build_leaderboard([src])
    assert [r.label for r in board.rows] == ["layer 2, α=1"] and [c.key for c in board.columns] == ["t/acc"]
    reasons = {s.path: s.reason for s in board.skipped}
    assert set(reasons) == set(bad.values())
    assert reasons[bad["list_results"]] == (f"{bad['list_results']} is not an lm-eval results file: 'results' is a "
                                            f"JSON array, not an object")
    assert reasons[bad["string_config"]] == (f"{bad['string_config']} is not an lm-eval results file: 'config' is a "
                                             f"JSON string, not an object")
    assert reasons[bad["task_list"]] == (f"{bad['task_list']} is not an lm-eval results file: 'results' of 't' is a "
                                         f"JSON array, not an object")
    assert reasons[bad["empty"]] == f"cannot read {bad['empty']}: the file is empty (0 bytes; a full disk?)"
    assert reasons[bad["probe_list"]] == (f"{bad['probe_list']} is not a dsteer-eval probes file: "
                                          f"'projection_margin' is a JSON array, not an object")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(warned) == sorted(f"leaderboard: skipped {r}" for r in reasons.values())

    written = write_leaderboard(board, tmp_path / "lb", plots=False)
    markdown = written["markdown"].read_text()
    assert "\nSkipped 5 unreadable or mis-shaped file(s):\n" in markdown
    assert all(f"- {r}" in markdown for r in reasons.values())
    data = strict_json(written["json"])
    assert sorted(s["path"] for s in data["skipped"]) == sorted(str(p) for p in bad.values())
    assert "Skipped 5 unreadable or mis-shaped file(s)" in written["html"].read_text()

    capsys.readouterr()
    assert main(["leaderboard", str(src), "--out", str(tmp_path / "cli"), "--no-plots"]) == 0
    assert "Skipped 5 unreadable or mis-shaped file(s):" in capsys.readouterr().out  # the count is printed


def test_a_folder_with_only_unreadable_files_names_them(tmp_path):
    from dsteer_eval.leaderboard import build_leaderboard

    empty = tmp_path / "run" / "m" / "results_1.json"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")
    with pytest.raises(ValueError) as err:
        build_leaderboard([tmp_path / "run"])
    assert str(err.value) == (f"{tmp_path / 'run'}: no lm-eval results_*.json, winrate/<task>.json, probes.json or "
                              f"failed.json found; skipped cannot read {empty}: the file is empty (0 bytes; a full "
                              f"disk?)")


def test_nan_inside_lists_and_objects_gives_strict_json_and_renders(tmp_path):
    from dsteer_eval.leaderboard import build_leaderboard, write_leaderboard

    src = tmp_path / "run"
    values = {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1, "hist,none": [0.1, math.nan, math.inf],
                    "detail,none": {"a": [-math.inf, 1.0], "b": math.nan}, "bad,none": math.nan}}
    write_results(src / "p", "pretrained=m,layer=2,alpha=1", values, date=1)  # json.dumps writes NaN/Infinity tokens
    write_json(src / "p" / "probes.json", {
        "model_args": "pretrained=m,layer=2,alpha=1",
        "projection_margin": {"mean": 1.0, "stderr": 0.1, "per_prompt": [math.nan]},
        "restoration_kl": {"mean": math.nan, "stderr": None}})
    board = build_leaderboard([src])
    written = write_leaderboard(board, tmp_path / "lb")
    data = strict_json(written["json"])
    [row] = data["rows"]
    assert row["metrics"]["t"]["hist,none"] == {"value": [0.1, None, None], "stderr": None}
    assert row["metrics"]["t"]["detail,none"] == {"value": {"a": [None, 1.0], "b": None}, "stderr": None}
    assert row["metrics"]["t"]["bad,none"] == {"value": None, "stderr": None}
    assert row["cells"]["projection margin"] == {"status": "ok", "value": 1.0, "stderr": 0.1, "best": True,
                                                 "per_prompt": [None]}
    assert row["cells"]["restoration KL"] == {"status": "missing", "value": None, "stderr": None, "best": False}
    md = md_cells(written["markdown"].read_text())
    assert md["layer 2, α=1"] == ["**0.500 ± 0.100 ↑**", "**1.000 ± 0.100 ↑**", "—"]
    assert "<table" in written["html"].read_text()
