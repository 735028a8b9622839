"""`dsteer-eval sweep`: grid checks, shared lower layers, resumable output, failures, probes, win-rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_tasks import env_vars, evaluate, write_vector

BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
           TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def vec(tiny, tmp_path_factory):
    return write_vector(tmp_path_factory.mktemp("sweepvec") / "v.safetensors", tiny[0])


def config(tiny_dir, vec, out, **overrides):
    from dsteer_eval.sweep.runner import SweepConfig

    values = dict(model_args=f"pretrained={tiny_dir},vector={vec}", alphas="-1,0,2", layers="2",
                  tasks="dsteer_hh_mini", output=str(out), limit=3, batch_size=4)
    return SweepConfig(**(values | overrides))


# ------------------------------------------------------------------ grid checks
@pytest.mark.parametrize("overrides, message", [
    ({"alphas": ""}, "--alphas"),
    ({"alphas": "-1,,1"}, "no empty items"),
    ({"alphas": "-1,big,1"}, "'big' is not a number"),
    ({"alphas": "-1,1,-1.0"}, "given twice"),
    ({"alphas": "0,-0"}, "given twice"),
    ({"alphas": "1,inf"}, "not finite"),
    ({"layers": "99"}, "out of range"),
    ({"layers": "2,-3"}, "2 and -3 are the same site"),
    ({"layers": "2,2"}, "twice"),
    ({"layers": "two"}, "neither an integer nor 'final'"),
    ({"layers": "1+1"}, "names a layer twice"),
    ({"layers": "1+2,2+1"}, "1\\+2 and 2\\+1 steer the same layers"),
    ({"layers": "1+2,2+-4"}, "steer the same layers"),
    ({"layers": "2,1+2,1+2"}, "given twice"),
    ({"layers": "1+99"}, "out of range"),
    ({"layers": "1+"}, "empty item"),
    ({"tasks": "dsteer_hh_mini,no_such_task"}, "unknown task 'no_such_task'"),
    ({"tasks": "dsteer_hh_mni"}, "did you mean dsteer_hh_mini"),
    ({"tasks": "dsteer_hh_mini,dsteer_hh_mini"}, "names a task twice"),
    ({"limit": 0}, "--limit"),
])
def test_bad_grids_fail_before_any_model_loads(tiny_dir, vec, tmp_path, monkeypatch, overrides, message):
    from dsteer_eval.sweep import runner

    monkeypatch.setattr(runner, "_load", lambda plan: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=message):
        runner.run_sweep(config(tiny_dir, vec, tmp_path / "out", **overrides))
    assert not (tmp_path / "out").exists()


def test_the_task_index_is_built_once_per_process_until_a_task_file_changes(tmp_path, monkeypatch):
    """plan_sweep's TaskManager (indexing lm-eval's ~15k tasks takes seconds) is reused for the same include path while
    its YAML files are unchanged; a YAML added or edited there, another path, or another TaskManager class builds a new
    one."""
    import lm_eval.tasks

    from dsteer_eval.sweep import plan

    built = []

    class Counting:
        def __init__(self, include_path=None):
            built.append(include_path)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Counting)
    monkeypatch.setattr(plan, "_MANAGERS", {})
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.yaml").write_text("task: a\n")
    first = plan.task_manager_for(str(folder))
    assert plan.task_manager_for(str(folder)) is first and built == [str(folder)]
    (folder / "b.yaml").write_text("task: b\n")  # a task added: a new index
    second = plan.task_manager_for(str(folder))
    assert second is not first and len(built) == 2
    (folder / "a.yaml").write_text("task: a2\n")  # an edit (size changed)
    assert plan.task_manager_for(str(folder)) is not second and len(built) == 3
    plan.task_manager_for(None)
    plan.task_manager_for(None)
    assert built[3:] == [None]
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", type("Other", (Counting,), {}))
    plan.task_manager_for(None)
    assert built[4:] == [None]  # a patched TaskManager is never served the real one's index (or the reverse)


def test_bad_model_args_and_output_folders_fail_before_loading(tiny_dir, vec, tmp_path, monkeypatch):
    from dsteer_eval.sweep import runner

    monkeypatch.setattr(runner, "_load", lambda plan: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match="alpha= is the swept axis"):
        runner.run_sweep(config(tiny_dir, vec, tmp_path / "a", model_args=f"pretrained={tiny_dir},vector={vec},alpha=1"))
    with pytest.raises(ValueError, match="vector=nope.safetensors: no such file"):
        runner.run_sweep(config(tiny_dir, vec, tmp_path / "b", model_args=f"pretrained={tiny_dir},vector=nope.safetensors"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a sweep folder"):
        runner.run_sweep(config(tiny_dir, vec, tmp_path / "c"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "sweep.json").write_text(json.dumps({"settings": {"model_args": "pretrained=other", "limit": 3}}))
    with pytest.raises(ValueError, match="other settings .*model_args"):
        runner.run_sweep(config(tiny_dir, vec, tmp_path / "d"))


def test_cli_reports_bad_grid_with_exit_2(tiny_dir, vec, tmp_path, capsys):
    from dsteer_eval.cli import main

    code = main(["sweep", "--model-args", f"pretrained={tiny_dir},vector={vec}", "--alphas", "-1,-1",
                 "--tasks", "dsteer_hh_mini", "--output", str(tmp_path / "o")])
    assert code == 2
    assert "--alphas '-1,-1': '-1' is given twice" in capsys.readouterr().err


def test_grid_points_share_alpha_zero():
    from dsteer_eval.sweep.grid import Point, parse_alpha_grid, parse_layer_grid, points

    grid = points(parse_layer_grid("10, 20,final"), parse_alpha_grid("-1,0,0.5"))
    assert [p.name for p in grid] == ["unsteered", "L10_a-1", "L10_a0.5", "L20_a-1", "L20_a0.5", "Lfinal_a-1",
                                      "Lfinal_a0.5"]
    assert Point(20, -1.0).model_args("pretrained=x") == "pretrained=x,layer=20,alpha=-1"
    assert Point(None, 0.0).model_args("") == "alpha=0"


# ------------------------------------------------------- shared lower layers
def _requests():
    from lm_eval.api.instance import Instance

    texts = [("Human: How do I bake bread? Assistant:", " Mix flour, water and yeast."),
             ("The quick brown fox", " jumps over the lazy dog."), ("What is the capital of France?", " Paris."),
             ("A stitch in time", " saves nine."), ("Human: Tell me something rude.", " I would rather be kind."),
             ("The lazy dog", " sleeps."), ("Human: Say something nice. Assistant:", " You are doing well."),
             ("Paris is", " the capital of France."), ("Mix flour", " and bake."), ("Tell me", " a joke."),
             ("Human: What is", " the capital?"), ("The quick", " brown fox jumps.")]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(texts)]


@pytest.mark.parametrize("extra", ["", "position=prompt", "peft"])
def test_shared_lower_layers_equal_separate_runs(tiny_dir, vec, tiny_adapter_dir, extra):
    from dsteer_eval.adapters.steered import SteeredLM
    from dsteer_eval.sweep.sweep_lm import SweepLM

    kwargs = {"pretrained": tiny_dir, "vector": vec, "batch_size": 4}
    if extra == "peft":
        kwargs["peft"] = tiny_adapter_dir
    elif extra:
        kwargs["position"] = extra.split("=")[1]
    requests = _requests()
    lm = SweepLM(**kwargs, layer=1, alpha=0.0)
    worst = 0.0
    for layer in (2, "final", -4):
        for alpha in (0.0, -2.0, 0.5, 3.0):
            lm.set_point(layer, alpha)
            got = lm.loglikelihood(requests, disable_tqdm=True)
            want = SteeredLM(**kwargs, layer=layer, alpha=alpha).loglikelihood(requests, disable_tqdm=True)
            assert [g[1] for g in got] == [w[1] for w in want]  # is-greedy flags
            worst = max(worst, max(abs(g[0] - w[0]) for g, w in zip(got, want)))
    assert worst <= 1e-4
    stats = lm.shared.stats
    assert stats["replayed"] == 3 * 3 * 3  # per layer: 3 batches recorded at alpha=0, replayed for 3 alphas
    # + the packed-context check: the run's first batch once more as plain rows (position=all only)
    checked = 1 if extra != "position=prompt" else 0
    assert lm._pack_check.get("done", False) == bool(checked)
    assert stats["full"] == 3 * 3 + checked and stats["verified_max_abs_diff"] <= 1e-4


def test_replay_check_turns_the_cache_off_when_it_would_be_wrong(tiny_dir, vec, caplog):
    from dsteer_eval.adapters.steered import SteeredLM
    from dsteer_eval.sweep.sweep_lm import SweepLM

    requests = _requests()
    lm = SweepLM(pretrained=tiny_dir, vector=vec, batch_size=4, layer=2, alpha=0.0)
    lm.set_point(2, 0.0)
    lm.loglikelihood(requests, disable_tqdm=True)
    for key in lm.shared._store:  # what an architecture the replay does not fit would produce
        lm.shared._store[key] = lm.shared._store[key] + 1.0
    lm.set_point(2, 1.5)
    got = lm.loglikelihood(requests, disable_tqdm=True)
    want = SteeredLM(pretrained=tiny_dir, vector=vec, batch_size=4, layer=2, alpha=1.5).loglikelihood(
        requests, disable_tqdm=True)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert lm.shared.enabled is False and "computing every layer from now on" in caplog.text


def test_cache_budget_zero_means_every_layer_every_time(tiny_dir, vec, monkeypatch):
    from dsteer_eval.sweep.sweep_lm import SweepLM

    monkeypatch.setenv("DSTEER_SWEEP_CACHE_MB", "0")
    lm = SweepLM(pretrained=tiny_dir, vector=vec, batch_size=4, layer=2, alpha=0.0)
    for alpha in (0.0, 1.0):
        lm.set_point(2, alpha)
        lm.loglikelihood(_requests(), disable_tqdm=True)
    assert lm.shared.stats == {"stored": 0, "replayed": 0, "full": 0, "verified_max_abs_diff": None}
    monkeypatch.setenv("DSTEER_SWEEP_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="DSTEER_SWEEP_CACHE_MB"):
        SweepLM(pretrained=tiny_dir, vector=vec, batch_size=4, layer=2, alpha=0.0)


# ------------------------------------------------------------ a whole sweep
@pytest.fixture(scope="module")
def failing_task(tmp_path_factory):
    from dsteer_eval.adapters.plugin import tasks_dir

    folder = tmp_path_factory.mktemp("failing_task")
    (folder / "boom.py").write_text("def process_results(doc, results):\n    raise RuntimeError('boom')\n")
    (folder / "hh_boom.yaml").write_text(
        f"include: {Path(tasks_dir()) / 'hh' / 'dsteer_hh_mini.yaml'}\ntask: hh_boom\n"
        "process_results: !function boom.process_results\n")
    return str(folder)


@pytest.fixture(scope="module")
def swept(tiny_dir, vec, failing_task, tmp_path_factory):
    """One in-process sweep: HH + G-Eval + a failing task, 2 layers, probes, tiny judge."""
    from dsteer_eval.sweep.runner import run_sweep

    out = tmp_path_factory.mktemp("swept") / "out"
    lines = []
    from conftest import degeneration_screening_off

    with env_vars(DSTEER_JUDGE=f"hf:{tiny_dir}"), degeneration_screening_off():
        failures = run_sweep(config(tiny_dir, vec, out, layers="2,final", tasks="dsteer_hh_mini,dsteer_geval_mini,hh_boom",
                                    include_path=failing_task, probes=True), print_fn=lines.append)
    return out, failures, lines


def _results(folder: Path) -> dict:
    return json.loads(next(folder.glob("results_*.json")).read_text())


def test_each_point_is_an_lm_eval_run_with_the_same_numbers(swept, tiny_dir, vec):
    out, _, _ = swept
    record = _results(out / "points" / "L2_a-1" / "dsteer_hh_mini")
    assert record["config"]["model"] == "steered"
    assert record["config"]["model_args"] == f"pretrained={tiny_dir},vector={vec},layer=2,alpha=-1"
    assert {"results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "task_hashes"} <= record.keys()
    plain = evaluate(record["config"]["model_args"], ["dsteer_hh_mini"], 3)["results"]["dsteer_hh_mini"]
    for key in ("acc,none", "acc_norm,none", "logprob_margin,none", "logprob_margin_stderr,none"):
        assert record["results"]["dsteer_hh_mini"][key] == pytest.approx(plain[key], abs=1e-6), key
    assert not list((out / "points").glob("*/dsteer_hh_mini/samples_*"))  # no --log-samples: HH keeps none
    assert list((out / "points").glob("*/dsteer_geval_mini/samples_dsteer_geval_mini_*.jsonl"))  # win-rate task


def test_a_failing_task_is_recorded_as_failed_and_the_rest_runs(swept):
    out, failures, _ = swept
    points = ["unsteered", "L2_a-1", "L2_a2", "Lfinal_a-1", "Lfinal_a2"]
    assert sorted(p.name for p in (out / "points").iterdir()) == sorted(points)
    assert failures == len(points)
    for point in points:
        failed = json.loads((out / "points" / point / "hh_boom" / "failed.json").read_text())
        assert failed["error"] == "RuntimeError: boom" and failed["task"] == "hh_boom"
        assert not list((out / "points" / point / "hh_boom").glob("results_*"))
        assert _results(out / "points" / point / "dsteer_hh_mini")["n-samples"]["dsteer_hh_mini"]["effective"] == 3


def test_point_probes_measure_the_steering(swept, vec):
    from dsteer_eval.vectors import load_vectors

    out, _, _ = swept
    unsteered = json.loads((out / "points" / "unsteered" / "probes.json").read_text())
    assert unsteered["reference"] == "unsteered"  # no adapter: the reference is the model itself
    assert unsteered["projection_margin"]["mean"] == 0.0 and unsteered["restoration_kl"]["mean"] == 0.0
    v_final = load_vectors(vec).vectors[4].float()
    for alpha in (-1.0, 2.0):
        probe = json.loads((out / "points" / f"Lfinal_a{alpha:g}" / "probes.json").read_text())
        # steering the final state moves its projection on v̂ by exactly alpha * |v|
        assert probe["projection_margin"]["site"] == 4
        assert probe["projection_margin"]["mean"] == pytest.approx(alpha * float(v_final.norm()), rel=1e-5)
        assert probe["restoration_kl"]["mean"] > 0


def test_win_rates_vs_alpha_zero(swept, tiny_dir):
    from dsteer_eval.metrics.judge import build_judge
    from dsteer_eval.metrics.winrate import win_rate_from_samples

    out, _, _ = swept
    folder = out / "points"
    result = json.loads((folder / "L2_a2" / "winrate" / "dsteer_geval_mini.json").read_text())
    from conftest import degeneration_screening_off

    with degeneration_screening_off():
        again = win_rate_from_samples(build_judge(f"hf:{tiny_dir}"),
                                      next((folder / "L2_a2" / "dsteer_geval_mini").glob("samples_*.jsonl")),
                                      next((folder / "unsteered" / "dsteer_geval_mini").glob("samples_*.jsonl")),
                                      "helpfulness")
        assert result["win_rate"] == pytest.approx(again.win_rate, abs=1e-9) and result["n"] == 3
        assert result["criterion"] == "helpfulness" and result["model_args"].endswith("layer=2,alpha=2")
        assert not (folder / "unsteered" / "winrate").exists()


def test_rerun_skips_finished_units_and_retries_failed_ones(swept, tiny_dir, vec, failing_task, monkeypatch):
    from dsteer_eval.sweep import runner

    out, _, _ = swept
    before = {p: p.stat().st_mtime_ns for p in out.glob("points/*/dsteer_*/results_*.json")}
    evaluated = []
    real = runner._evaluate_unit
    monkeypatch.setattr(runner, "_evaluate_unit", lambda lm, plan, point, task, folder: (
        evaluated.append((point.name, task)), real(lm, plan, point, task, folder))[1])
    lines = []
    with env_vars(DSTEER_JUDGE=f"hf:{tiny_dir}"):  # the judge is part of the sweep's fingerprint: keep it
        failures = runner.run_sweep(config(tiny_dir, vec, out, layers="2,final",
                                           tasks="dsteer_hh_mini,dsteer_geval_mini,hh_boom", include_path=failing_task,
                                           probes=True), print_fn=lines.append)
    assert failures == 5 and sorted(evaluated) == sorted((p, "hh_boom") for p in
                                                         ["unsteered", "L2_a-1", "L2_a2", "Lfinal_a-1", "Lfinal_a2"])
    assert "(15 of 20 units already done)" in lines[0]  # 10 task units + 5 probe units
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("points/*/dsteer_*/results_*.json")}


def _sweep_cmd(tiny_dir, vec, out):
    return [str(BIN / "dsteer-eval"), "sweep", "--model-args", f"pretrained={tiny_dir},vector={vec}",
            "--alphas", "-1,0,1,2", "--layers", "2", "--tasks", "dsteer_hh_mini,truthfulqa_mc2_mini",
            "--limit", "4", "--batch-size", "2", "--no-plots", "--output", str(out)]


def test_sigkill_mid_sweep_then_rerun_gives_the_same_leaderboard(tiny_dir, vec, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_sweep_cmd(tiny_dir, vec, killed), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(killed.glob("points/*/*/results_*.json"))) < 3 and time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(killed.glob("points/*/*/results_*.json")))
    assert 3 <= done < 8, done
    rerun = subprocess.run(_sweep_cmd(tiny_dir, vec, killed), env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"({done} of 8 units already done)" in rerun.stdout
    assert not list(killed.rglob("*.tmp*"))  # the killed run's staging folder is gone
    from dsteer_eval.cli import main

    assert main(_sweep_cmd(tiny_dir, vec, clean)[1:]) == 0  # the uninterrupted run, in this process (faster)

    def metrics(root):
        return {(p.parent.parent.name, p.parent.name): {k: v for k, v in json.loads(p.read_text())["results"].items()}
                for p in root.glob("points/*/*/results_*.json")}

    assert metrics(killed) == metrics(clean)
    board = lambda root: [{k: v for k, v in row.items() if k != "sources"} for row in
                          json.loads((root / "leaderboard.json").read_text())["rows"]]
    assert board(killed) == board(clean)
