"""Reliability, round 2, for sweeps: per-document values that do not depend on --log-samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from test_sweep import config, vec  # noqa: F401  (vec: a fixture)


def test_log_samples_leaves_the_per_document_values_unchanged(tiny_dir, tiny_adapter_dir, vec, tmp_path):
    """lm-eval turns the responses into strings in place when it saves samples; per_doc.json (what the
    paired statistics and the conditioned subset read) must hold the same numbers either way."""
    from dsteer_eval.leaderboard import build_leaderboard
    from dsteer_eval.sweep.runner import run_sweep

    found = {}
    for log_samples in (False, True):
        out = tmp_path / f"log_{log_samples}"
        assert run_sweep(config(tiny_dir, vec, out, alphas="-1,0", log_samples=log_samples,
                                model_args=f"pretrained={tiny_dir},peft={tiny_adapter_dir},vector={vec}"), print_fn=lambda *_: None) == 0
        per_doc = {p.relative_to(out).as_posix(): json.loads(p.read_text())
                   for p in sorted(out.glob("points/*/*/per_doc.json"))}
        board = build_leaderboard([out])
        found[log_samples] = per_doc, {k: [r.as_dict() for r in rows] for k, rows in board.paired.items()}
    plain, logged = found[False], found[True]
    assert sorted(plain[0]) == sorted(logged[0]) and plain[0]
    for unit, values in plain[0].items():
        assert values == logged[0][unit], unit
        for task in values["tasks"].values():  # log-likelihood responses stay numbers
            assert all(isinstance(x, float) for row in task["resps"] for x in row)
    assert plain[1] == logged[1]
    assert any(r["n_conditioned"] is not None for rows in plain[1].values() for r in rows)  # the subset was computed


# ------------------------------------------------------------------ one run per output folder
def _lock_file(out, pid, command="dsteer-eval sweep --output x"):
    import socket

    from dsteer_eval.common.output_folder import lock_path

    lock = lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "2026-12-03T00:00:00Z",
                                "command": command}))
    return lock


def test_a_second_sweep_into_a_held_output_is_refused_naming_the_holder(tiny_dir, vec, tmp_path):
    import subprocess
    import sys

    from dsteer_eval.common.output_folder import OutputFolderError
    from dsteer_eval.sweep.runner import run_sweep

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _lock_file(out, holder.pid, "dsteer-eval sweep --alphas -1,0 --output out")
        with pytest.raises(OutputFolderError, match=rf"in use by another run \(pid {holder.pid} on .*--alphas -1,0"):
            run_sweep(config(tiny_dir, vec, out), print_fn=lambda *_: None)
        assert lock.is_file() and not out.exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()


def test_the_cli_refuses_a_second_run_while_the_first_holds_the_folder(tiny_dir, vec, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from dsteer_eval.common.output_folder import folder_lock

    out = tmp_path / "out"
    cli = Path(sys.executable).with_name("dsteer-eval")
    with folder_lock(out, command="first run"):
        done = subprocess.run([str(cli), "sweep", "--model-args", f"pretrained={tiny_dir},vector={vec}",
                               "--alphas", "-1,0", "--layers", "2", "--tasks", "dsteer_hh_mini", "--limit", "2",
                               "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"pid {os.getpid()}" in done.stderr and "first run" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stale_lock_of_a_killed_run_is_taken_over(tiny_dir, vec, tmp_path, caplog):
    import subprocess
    import sys

    from dsteer_eval.sweep.runner import run_sweep

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    out = tmp_path / "out"
    lock = _lock_file(out, gone.pid)
    with caplog.at_level("WARNING"):
        assert run_sweep(config(tiny_dir, vec, out, alphas="-1,0", limit=2), print_fn=lambda *_: None) == 0
    assert f"its process {gone.pid} on this host has ended" in caplog.text
    assert not lock.exists() and (out / "sweep.json").is_file()  # released at the end


def test_overwrite_through_a_symlinked_output_keeps_the_link(tiny_dir, vec, tmp_path):
    from dsteer_eval.sweep.runner import run_sweep

    target = tmp_path / "real"
    target.mkdir()
    (target / "old_file.txt").write_text("from an earlier run")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert run_sweep(config(tiny_dir, vec, link, alphas="-1,0", limit=2, overwrite=True), print_fn=lambda *_: None) == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert not (target / "old_file.txt").exists() and (target / "sweep.json").is_file()


# ------------------------------------------------------------------ resume on changed task definitions
def _user_task(folder, rows):
    """A copy of dsteer_hh_mini under another name, reading its own rows (absolute sample path)."""
    from dsteer_eval.common.package_files import tasks_dir

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (Path(tasks_dir()) / "hh" / "dsteer_hh_mini.yaml").read_text()
    text = text.replace("task: dsteer_hh_mini", "task: my_hh").replace("hh/hh_mini.jsonl", str(data))
    text = text.replace("include: _hh_template_yaml", f"include: {Path(tasks_dir()) / 'hh' / '_hh_template_yaml'}")
    (folder / "my_hh.yaml").write_text(text)
    return data


def _rows():
    from dsteer_eval.common.package_files import tasks_dir

    return [json.loads(x) for x in (Path(tasks_dir()) / "hh" / "hh_mini.jsonl").read_text().splitlines()[:3]]


def test_resume_on_edited_task_documents_is_refused_naming_the_file(tiny_dir, vec, tmp_path):
    from dsteer_eval.sweep.runner import run_sweep

    out, tasks = tmp_path / "out", tmp_path / "tasks"
    data = _user_task(tasks, _rows())
    quiet = {"print_fn": lambda *_: None}
    assert run_sweep(config(tiny_dir, vec, out, alphas="-1,0", tasks="my_hh", include_path=str(tasks)), **quiet) == 0
    # unchanged: one more alpha resumes
    assert run_sweep(config(tiny_dir, vec, out, alphas="-1,0,2", tasks="my_hh", include_path=str(tasks)), **quiet) == 0
    rows = _rows()
    rows[1]["chosen"] = rows[1]["chosen"] + " (edited)"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"task my_hh: {data} changed.*--overwrite"):
        run_sweep(config(tiny_dir, vec, out, alphas="-1,0,2,3", tasks="my_hh", include_path=str(tasks)), **quiet)
    # another --include-path folder defining the same task name on other rows
    other = tmp_path / "other"
    moved = _user_task(other, _rows()[:2])
    with pytest.raises(ValueError, match=rf"task my_hh: {moved} added, {tasks / 'pairs.jsonl'} gone, {other / 'my_hh.yaml'} changed"):
        run_sweep(config(tiny_dir, vec, out, alphas="-1,0,2,3", tasks="my_hh", include_path=str(other)), **quiet)


# ------------------------------------------------------------------ secrets inside --model-args
def test_a_token_in_model_args_is_stored_nowhere_and_a_changed_one_is_noticed(tiny_dir, vec, tmp_path, capsys, caplog):
    import logging

    from dsteer_eval.sweep.runner import run_sweep

    secret, other = "hf_SECRETmodelargs12345", "hf_OTHERmodelargs67890"
    out = tmp_path / "out"
    printed = []
    args = f"pretrained={tiny_dir},vector={vec},token={secret}"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("dsteer_eval").info("model args %s", args)  # anything that logs them later
        assert run_sweep(config(tiny_dir, vec, out, alphas="-1,0", limit=2, model_args=args), print_fn=printed.append) == 0
    from dsteer_eval.leaderboard import build_leaderboard, write_leaderboard

    write_leaderboard(build_leaderboard([out]), out)
    stored = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name.startswith("results_") for p in stored) and any(p.name == "leaderboard.csv" for p in stored)
    for path in stored:
        assert secret.encode() not in path.read_bytes(), path
    seen = capsys.readouterr()
    assert secret not in seen.out + seen.err + caplog.text + "\n".join(map(str, printed))
    sweep = json.loads((out / "sweep.json").read_text())
    assert "token=<model_args token>" in sweep["settings"]["model_args"]
    changed = f"pretrained={tiny_dir},vector={vec},token={other}"
    with pytest.raises(ValueError, match="model_arg_secrets"):
        run_sweep(config(tiny_dir, vec, out, alphas="-1,0,2", limit=2, model_args=changed), print_fn=printed.append)
    # the same token resumes
    assert run_sweep(config(tiny_dir, vec, out, alphas="-1,0,2", limit=2, model_args=args), print_fn=printed.append) == 0


# ------------------------------------------------------------------ row labels
def test_a_model_without_an_adapter_is_never_labelled_dpo(tmp_path):
    from test_leaderboard import acc, md_cells, write_results

    from dsteer_eval.leaderboard import build_leaderboard
    from dsteer_eval.leaderboard.render import markdown

    plain = tmp_path / "plain"
    write_results(plain / "u", "pretrained=/models/llama,vector=v.safetensors,layer=2,alpha=0", {"t": acc(0.5)})
    write_results(plain / "a", "pretrained=/models/llama,vector=v.safetensors,layer=2,alpha=-1", {"t": acc(0.4)})
    write_results(plain / "c", "pretrained=/models/llama,vector=v.safetensors,layer=2,alpha=-1,control=random:0",
                  {"t": acc(0.45)})
    rows = md_cells(markdown(build_leaderboard([plain])))
    labels = [r for r in rows if r != "run"]
    assert labels and not any("DPO" in r for r in labels), labels
    assert "model (llama) · unsteered (α=0)" in labels and "model (llama) · layer 2, α=-1" in labels
    shipped = tmp_path / "shipped"  # the shipped pair: nothing named but the steering
    write_results(shipped / "u", "layer=20,alpha=0", {"t": acc(0.5)})
    write_results(shipped / "b", "peft=none,layer=20,alpha=0", {"t": acc(0.3)})
    rows = md_cells(markdown(build_leaderboard([shipped])))
    assert "DPO (default) · unsteered (α=0)" in rows and "base (peft=none) · unsteered (α=0)" in rows


# ------------------------------------------------------------------ the ceiling honours the steering settings
def test_the_ceiling_steers_as_the_model_args_say_and_records_it(tiny_dir, tiny, tmp_path):
    from test_tasks import write_vector

    from dsteer_eval.sweep.ceiling import ceiling_for

    vec = write_vector(tmp_path / "v.safetensors", tiny[0])
    rule = {"start": 0.5, "steps": 2, "max_new_tokens": 4, "batch_size": 2}
    prompts = ["Human: hi\n\nAssistant:", "Human: bread?\n\nAssistant:"]
    plain = ceiling_for({"pretrained": tiny_dir, "vector": str(vec)}, 2, prompts, device="cpu", **rule)
    unit = ceiling_for({"pretrained": tiny_dir, "vector": str(vec), "unit": "true", "dtype": "bfloat16"}, 2, prompts,
                       device="cpu", **rule)
    ablate = ceiling_for({"pretrained": tiny_dir, "vector": str(vec), "mode": "ablate"}, 2, prompts, device="cpu", **rule)
    assert plain["vector_norm"] != pytest.approx(1.0) and unit["vector_norm"] == pytest.approx(1.0, abs=1e-6)
    assert unit["steering"]["unit"] is True and unit["steering"]["dtype"] == "bfloat16"
    assert unit["model_dtype"] == "bfloat16" and plain["model_dtype"] == "float32"
    assert ablate["steering"]["mode"] == "ablate" and ablate["negative"]["grid"] == []
    assert ablate["negative"]["skipped"] == "mode=ablate has no negative alpha" and ablate["positive"]["grid"]
    for key in ("unit", "mode", "position", "norm_preserve", "control", "control_seed", "dtype"):
        assert key in plain["steering"]


def test_a_sweep_refuses_a_ceiling_measured_with_other_steering(tiny_dir, tiny, tmp_path):
    from test_tasks import write_vector

    from dsteer_eval.sweep import ceiling
    from dsteer_eval.sweep.runner import SweepConfig, plan_sweep

    vec = write_vector(tmp_path / "v.safetensors", tiny[0])
    file = tmp_path / "ceiling.json"
    steering = ceiling.steering_settings({"unit": "true"})
    file.write_text(json.dumps({"format": ceiling.FORMAT, "layer": "2", "negative": {"ceiling": 4.0},
                                "positive": {"ceiling": 0.5}, "steering": steering}))
    cfg = dict(layers="2", tasks="dsteer_hh_mini", alphas="rel:-1,0,1", ceiling=str(file))
    with pytest.raises(ValueError, match=r"other steering settings \(unit=True there, False here\)"):
        plan_sweep(SweepConfig(model_args=f"pretrained={tiny_dir},vector={vec}", output=str(tmp_path / "a"), **cfg))
    plan = plan_sweep(SweepConfig(model_args=f"pretrained={tiny_dir},vector={vec},unit=true", output=str(tmp_path / "b"),
                                  **cfg))
    assert plan.alphas == (-4.0, 0.0, 0.5)
    with pytest.raises(ValueError, match=r"mode='add' there, 'ablate' here"):
        plan_sweep(SweepConfig(model_args=f"pretrained={tiny_dir},vector={vec},unit=true,mode=ablate",
                               output=str(tmp_path / "c"), **(cfg | {"alphas": "rel:0,1"})))
