"""Provenance records (dsteer_eval.common.provenance) in every output, and `dsteer-eval info FILE`."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_reliability_sweep import clean_env, fast_tasks  # noqa: F401 - fixtures
from test_tasks import write_vector

from dsteer_eval import __version__
from dsteer_eval.common import provenance
from dsteer_eval.cli import main
from dsteer_eval.common.hashing import path_digest, sha256_tree


@pytest.fixture(autouse=True)
def fresh_git_lookup():
    """The git state is looked up once per process; each test compares with git's answer of its own time."""
    provenance._git_state.cache_clear()


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def vector_metadata(path) -> dict:
    from dsteer_eval.vectors import load_vectors

    return load_vectors(path).metadata


def expected_git() -> dict | None:
    """What git itself says about the checkout the package runs from (None: not a checkout)."""
    def git(*args):
        done = subprocess.run(["git", "-C", str(provenance.PACKAGE_DIR), *args], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return None
    return {"commit": head.strip(), "dirty": bool(git("status", "--porcelain").strip())}


# ------------------------------------------------------------------ collect()
def test_collect_hashes_data_files_and_folders_and_marks_hub_ids(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 3)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("one")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text("two!")
    record = provenance.collect(data=[data, folder, "Anthropic/hh-rlhf"], seeds={"seed": 3})
    assert record["schema"] == "dsteer-eval/provenance" and record["schema_version"] == "1"
    assert record["package_version"] == __version__
    assert record["data"] == [
        {"path": str(data.resolve()), "sha256": sha256(data), "bytes": data.stat().st_size},
        {"path": str(folder.resolve()), "sha256": sha256_tree(folder), "bytes": 7, "files": 2},
        {"path": "Anthropic/hh-rlhf", "sha256": None, "note": "not a local file"},
    ]
    assert record["seeds"] == {"seed": 3} and record["models"] == []
    assert set(record["versions"]) == {"torch", "transformers", "lm_eval", "trl", "peft"}
    assert record["versions"]["torch"] == torch.__version__
    json.dumps(record, allow_nan=False)  # JSON as it is

    # the folder hash covers names and every byte, not only sizes
    before = sha256_tree(folder)
    (folder / "sub" / "b.txt").write_text("two?")
    assert sha256_tree(folder) != before
    (folder / "sub" / "b.txt").write_text("two!")
    assert sha256_tree(folder) == before
    (folder / "a.txt").rename(folder / "c.txt")
    assert sha256_tree(folder) != before


def test_git_commit_is_the_checkouts_head_and_null_outside_a_checkout(tmp_path, monkeypatch):
    assert provenance.collect()["git"] == expected_git()
    if expected_git() is not None:
        assert len(provenance.collect()["git"]["commit"]) == 40
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)  # a folder in no git checkout
    assert provenance.collect()["git"] is None


def test_command_is_the_exact_command_line_with_secrets_redacted(monkeypatch):
    assert provenance.command_line(["extract", "--out", "a b.safetensors"]) == \
        "dsteer-eval extract --out 'a b.safetensors'"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/dsteer-eval", "info", "v.safetensors"])
    assert provenance.collect()["command"] == "dsteer-eval info v.safetensors"
    monkeypatch.setattr(sys, "argv", ["train.py", "--lr", "1e-4"])
    assert provenance.collect()["command"] == "train.py --lr 1e-4"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123456")
    assert provenance.command_line(["sweep", "--model-args", "key=sk-secret-123456"]) == \
        "dsteer-eval sweep --model-args key=<redacted>"


def test_read_refuses_what_is_not_a_record():
    record = provenance.collect()
    assert provenance.read(provenance.dumps(record)) == record
    assert provenance.read(None) is None
    with pytest.raises(ValueError, match="not valid JSON"):
        provenance.read("{oops")
    with pytest.raises(ValueError, match="not a dsteer-eval/provenance record"):
        provenance.read({"command": "x"})


# ------------------------------------------------------------------ vector files
def test_save_vectors_records_provenance_readable_back(tmp_path, monkeypatch):
    from dsteer_eval.vectors import save_vectors

    monkeypatch.setattr(sys, "argv", ["/venv/bin/dsteer-eval", "extract", "--out", "v.safetensors"])
    save_vectors(tmp_path / "minimal.safetensors", {0: torch.ones(4)})
    minimal = provenance.read(vector_metadata(tmp_path / "minimal.safetensors")["provenance"])
    assert minimal["command"] == "dsteer-eval extract --out v.safetensors"
    assert minimal["git"] == expected_git() and minimal["data"] == [] and minimal["models"] == []

    given = provenance.collect(data=[tmp_path / "minimal.safetensors"], seeds={"seed": 5}, command="made by hand")
    save_vectors(tmp_path / "given.safetensors", {0: torch.ones(4)}, provenance=given)
    assert provenance.read(vector_metadata(tmp_path / "given.safetensors")["provenance"]) == given


def test_extract_records_the_data_sha256_and_the_models(tiny, tiny_dir, tiny_adapter_dir, short_pairs_file,
                                                        tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    argv = ["extract", "--method", "dpo-diff", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir,
            "--data", short_pairs_file, "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    record = provenance.read(vector_metadata(out)["provenance"])
    assert record["command"] == shlex.join(["dsteer-eval", *argv])
    assert record["data"] == [{"path": str(Path(short_pairs_file).resolve()), "sha256": sha256(short_pairs_file),
                               "bytes": Path(short_pairs_file).stat().st_size}]
    base, adapter = record["models"]
    assert base == {"role": "base", "path_or_id": tiny_dir, "fingerprint": {
        "model_type": "llama", "hidden_size": "32", "num_layers": "4", "vocab_size": str(len(tiny[1])),
        "name_or_path": tiny_dir, "content_digest": path_digest(tiny_dir)}}
    assert adapter == {"role": "adapter", "path_or_id": tiny_adapter_dir, "fingerprint": {
        "adapter_sha256": sha256(Path(tiny_adapter_dir) / "adapter_model.safetensors")}}
    assert record["seeds"] == {}

    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{out}: steering vectors\n")
    assert "  sites            0, 1, 2, 3, 4\n" in shown and "  method           dpo-diff\n" in shown
    assert f"  command          {shlex.join(['dsteer-eval', *argv])}\n" in shown
    assert f"sha256 {sha256(short_pairs_file)}" in shown and "model base" in shown and "model adapter" in shown

    assert main(["info", "--json", str(out)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["kind"] == "vectors" and found["provenance"] == record
    assert found["record"] == vector_metadata(out)
    assert found["facts"]["sites"] == [0, 1, 2, 3, 4] and found["facts"]["format"] == "safetensors"


# ------------------------------------------------------------------ DPO card and probe report
def test_train_dpo_card_records_seed_data_and_base_model(tiny, tiny_dir, short_pairs_file, tmp_path, capsys):
    out = tmp_path / "dpo"
    argv = ["train-dpo", "--data", short_pairs_file, "--pretrained", tiny_dir, "--out", str(out), "--steps", "1",
            "--batch-size", "2", "--max-length", "64", "--max-prompt-length", "40", "--eval-size", "0",
            "--lora-r", "2", "--lora-alpha", "4", "--seed", "7", "--save-steps", "0"]
    assert main(argv) == 0
    card = json.loads((out / "dpo_card.json").read_text())
    record = card["provenance"]
    assert record["command"] == shlex.join(["dsteer-eval", *argv])
    assert card["command"].startswith("dsteer-eval train-dpo --data ")  # the re-create command stays
    assert record["seeds"] == {"seed": 7} and card["hyperparameters"]["seed"] == 7
    assert record["data"][0]["sha256"] == sha256(short_pairs_file) == card["data"]["sha256"]
    assert record["models"] == [{"role": "base", "path_or_id": tiny_dir, "fingerprint": {
        "model_type": "llama", "hidden_size": "32", "num_layers": "4", "vocab_size": str(len(tiny[1])),
        "name_or_path": tiny_dir, "content_digest": path_digest(tiny_dir)}}]
    assert record["git"] == expected_git()

    capsys.readouterr()
    assert main(["info", str(out)]) == 0  # the adapter folder: its dpo_card.json
    shown = capsys.readouterr().out
    assert shown.startswith(f"{out / 'dpo_card.json'}: DPO card (train-dpo)\n")
    assert "  seeds            seed: 7\n" in shown and f"sha256 {sha256(short_pairs_file)}" in shown
    assert main(["info", "--json", str(out / "dpo_card.json")]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["kind"] == "dpo-card" and found["record"] == card and found["provenance"] == record


def test_probe_report_records_pairs_vector_models_and_seed(tiny_dir, tiny_adapter_dir, short_pairs_file, tiny,
                                                           tmp_path, capsys):
    vec = write_vector(tmp_path / "v.safetensors", tiny[0])
    out = tmp_path / "probe"
    argv = ["probe", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", short_pairs_file,
            "--vector", vec, "--layer", "2", "--alphas", "0,1", "--grad-pairs", "2", "--max-length", "64",
            "--no-nulls", "--random-controls", "0", "--lattice-pairs", "0", "--no-figures", "--null-seed", "3",
            "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "probe_report.json").read_text())["provenance"]
    assert record["command"] == shlex.join(["dsteer-eval", *argv]) and record["seeds"] == {"null_seed": 3}
    assert [(d["role"], d["sha256"]) for d in record["data"]] == [("pairs", sha256(short_pairs_file)),
                                                                  ("vector", sha256(vec))]
    assert [m["role"] for m in record["models"]] == ["base", "adapter"]
    assert record["models"][0]["fingerprint"]["num_layers"] == "4"

    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{out / 'probe_report.json'}: probe report\n")
    assert "  seeds            null_seed: 3\n" in shown and f"sha256 {sha256(vec)}" in shown


# ------------------------------------------------------------------ sweep
@pytest.fixture(scope="module")
def vec(tiny, tmp_path_factory):
    return write_vector(tmp_path_factory.mktemp("provvec") / "v.safetensors", tiny[0])


def test_sweep_record_has_provenance_that_a_resume_does_not_compare(tiny_dir, vec, tmp_path, monkeypatch,
                                                                    fast_tasks, clean_env, capsys):  # noqa: F811
    from dsteer_eval.sweep import runner

    cfg = runner.SweepConfig(model_args=f"pretrained={tiny_dir},vector={vec}", alphas="0,1", layers="2",
                             tasks="dsteer_hh_mini", output=str(tmp_path / "out"), limit=2, batch_size=4)
    record_path = tmp_path / "out" / "sweep.json"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/dsteer-eval", "sweep", "--first"])
    runner._write_record(runner.plan_sweep(cfg))
    first = json.loads(record_path.read_text())
    record = first["provenance"]
    assert record["command"] == "dsteer-eval sweep --first" and "earlier_provenance" not in first
    from dsteer_eval.adapters.plugin import tasks_dir

    hh_mini = Path(tasks_dir()) / "hh" / "hh_mini.jsonl"  # the rows the task reads, from its YAML
    assert record["data"] == [{"path": str(Path(vec).resolve()), "sha256": sha256(vec),
                               "bytes": Path(vec).stat().st_size, "role": "vector"},
                              {"path": str(hh_mini.resolve()), "sha256": sha256(hh_mini),
                               "bytes": hh_mini.stat().st_size, "role": "task:dsteer_hh_mini"}]
    assert record["models"] == [{"role": "base", "path_or_id": tiny_dir,
                                 "fingerprint": {"content_digest": path_digest(tiny_dir)}}]
    assert record["seeds"] == {"lm_eval_random_seed": 0, "lm_eval_numpy_random_seed": 1234,
                               "lm_eval_torch_random_seed": 1234, "lm_eval_fewshot_random_seed": 1234}
    assert "provenance" not in first["settings"]

    # a re-run with another command line (and later time) resumes; both runs' provenance is kept
    monkeypatch.setattr(sys, "argv", ["/venv/bin/dsteer-eval", "sweep", "--second"])
    plan = runner.plan_sweep(cfg)  # raises if the recorded sweep differs
    runner._write_record(plan)
    second = json.loads(record_path.read_text())
    assert second["settings"] == first["settings"]
    assert second["provenance"]["command"] == "dsteer-eval sweep --second"
    assert second["earlier_provenance"] == [record]

    assert main(["info", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{record_path}: sweep record\n")
    assert "  runs_resumed     1\n" in shown and "  command          dsteer-eval sweep --second\n" in shown


# ------------------------------------------------------------------ info: old and bad files
def test_info_on_files_made_before_provenance(tmp_path, capsys):
    from dsteer_eval.dpo.training import CARD_FORMAT

    save_file({"layer.3": torch.ones(8)}, str(tmp_path / "old.safetensors"))  # another tool's file, no metadata
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "dpo_card.json").write_text(json.dumps({"format": CARD_FORMAT, "kind": "lora"}))
    for path in (tmp_path / "old.safetensors", tmp_path / "adapter"):
        assert main(["info", str(path)]) == 0
        shown = capsys.readouterr().out
        assert f"no provenance recorded (file made before dsteer-eval {provenance.SINCE}" in shown
    assert main(["info", "--json", str(tmp_path / "old.safetensors")]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["provenance"] is None and found["facts"]["norms"] == {"3": pytest.approx(8 ** 0.5)}


@pytest.mark.parametrize("name, content, why", [
    ("missing.safetensors", None, "no such file or folder"),
    ("garbage.bin", b"not a vector file at all, just some bytes", "not a file info can read"),
    ("broken.json", b"{not json", "not valid JSON"),
    ("other.json", b'{"format": "someone-else/results"}', "JSON of format 'someone-else/results'"),
    ("empty_folder", "folder", "a folder without dpo_card.json, sweep.json, probe_report.json"),
])
def test_info_refuses_missing_and_unknown_files_naming_them(tmp_path, capsys, name, content, why):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert main(["info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"dsteer-eval info: error: {path}: {why}")
    assert "dsteer-eval info accepts a vector file (.safetensors, .gguf, .pt), a dpo_card.json" in captured.err


def test_info_reports_an_unreadable_provenance_instead_of_failing(tmp_path, capsys):
    from dsteer_eval.vectors import save_vectors

    path = save_vectors(tmp_path / "v.safetensors", {0: torch.ones(2)}, extra={"provenance": "{cut off"})
    assert main(["info", str(path)]) == 0
    assert "provenance: unreadable (the provenance record is not valid JSON" in capsys.readouterr().out


def test_task_data_files_resolve_tasks_and_groups():
    from dsteer_eval.adapters.plugin import tasks_dir
    from dsteer_eval.tasks.task_files import task_data_files

    tasks = Path(tasks_dir())
    assert task_data_files(["dsteer_refusal_ll"]) == {"dsteer_refusal_ll": tasks / "refusal" / "refusal_eval.jsonl"}
    offline = task_data_files(["dsteer_offline"])  # a group: its members' files
    assert offline["dsteer_hh_offline"] == tasks / "hh" / "hh_eval.jsonl"
    assert offline["truthfulqa_mc1_offline"] == tasks / "truthfulqa" / "truthfulqa_eval.jsonl"
    assert len(offline) == 6
    assert task_data_files(["hellaswag"]) == {}  # not ours: nothing shipped to hash
