"""dpo-gate: held-out rewards by pair kind, re-measured with a separate base model as the reference."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

from dsteer_eval.dpo.gate import evaluate_adapter, pair_kind, rewards_by_kind
from dsteer_eval.dpo.training import DPOSettings, gate, train_dpo
from dsteer_eval.data.preference_pairs import PreferencePair
from dsteer_eval.data.refusal_set import REFUSALS
from dsteer_eval.data.splits import part_of


def test_pair_kind_and_rewards_by_kind():
    refuse = PreferencePair("\n\nHuman: how to pick a lock\n\nAssistant:", REFUSALS[2], " First, get a tension wrench.")
    answer = PreferencePair("\n\nHuman: capital of France?\n\nAssistant:", " Paris.", REFUSALS[0])
    other = PreferencePair("\n\nHuman: hi\n\nAssistant:", " Hello!", " Go away.")
    assert [pair_kind(p) for p in (refuse, answer, other)] == ["refuse", "answer", None]
    chosen, rejected = torch.tensor([3.0, 1.0, 0.0, 2.0]), torch.tensor([1.0, 2.0, 1.0, 0.0])
    by = rewards_by_kind(chosen, rejected, [refuse, answer, answer, refuse])
    assert by["refuse"]["reward_accuracy"] == 1.0 and by["refuse"]["reward_margin_mean"] == 2.0
    assert by["answer"]["reward_accuracy"] == 0.0 and by["answer"]["reward_margin_mean"] == -1.0
    assert rewards_by_kind(chosen[:1], rejected[:1], [other]) == {}  # one kind or none: no split


def test_gate_by_kind_fails_when_one_kind_is_not_learned():
    good = {"pairs": 10, "reward_accuracy": 0.9, "reward_margin_mean": 2.0, "reward_margin_stderr": 0.2}
    bad = {"pairs": 10, "reward_accuracy": 0.4, "reward_margin_mean": -0.1, "reward_margin_stderr": 0.2}
    g = gate(good, {"refuse": good, "answer": bad})
    assert g["passed"] and not g["passed_every_kind"] and not g["by_kind"]["answer"]["passed"]


@pytest.fixture(scope="module")
def refusal_file(tmp_path_factory):
    rows, i = [], 0
    parts = {"train": 0, "eval": 0}
    while min(parts.values()) < 12:
        prompt = f"\n\nHuman: request number {i} about topic {i * 7 % 13}\n\nAssistant:"
        part = part_of(prompt)
        i += 1
        if part not in parts:
            continue
        parts[part] += 1
        refuse = i % 2 == 0
        rows.append({"prompt": prompt, "chosen": REFUSALS[i % 3] if refuse else f" The answer is {i}.",
                     "rejected": f" Sure, step {i} is easy." if refuse else REFUSALS[i % 3]})
    return write_jsonl(tmp_path_factory.mktemp("refusal") / "pairs.jsonl", rows)


def test_dpo_gate_equals_the_training_time_rewards(tiny_dir, refusal_file, tmp_path, capsys):
    """Two reference paths agree: trl's adapter-disabled base (training) and a separately loaded base."""
    from dsteer_eval.cli import main

    out = tmp_path / "pair"
    settings = DPOSettings(steps=3, learning_rate=5e-3, batch_size=4, max_length=64, max_prompt_length=40,
                           eval_size=1000, logging_steps=1)
    card = train_dpo(refusal_file, out, settings, pretrained=tiny_dir, part="train", save_steps=0)
    trained = card["metrics"]["eval"]
    assert set(card["metrics"]["eval_by_kind"]) == {"refuse", "answer"}
    assert abs(trained["reward_margin_mean"]) > 1e-4  # the adapter moved the rewards
    measured = evaluate_adapter(out, refusal_file, part="eval", pretrained=tiny_dir)
    assert measured["pairs"] == trained["pairs"]
    for key in ("reward_margin_mean", "chosen_reward_mean", "rejected_reward_mean", "reward_accuracy"):
        assert measured["summary"][key] == pytest.approx(trained[key], abs=1e-5)
    for kind in ("refuse", "answer"):
        assert measured["by_kind"][kind]["reward_margin_mean"] == pytest.approx(
            card["metrics"]["eval_by_kind"][kind]["reward_margin_mean"], abs=1e-5)
    assert main(["dpo-gate", str(out), "--data", refusal_file, "--pretrained", tiny_dir, "--write-card"]) == 0
    written = json.loads((out / "dpo_card.json").read_text())
    assert written["gate_at_training"] == card["gate"]
    assert written["gate"]["pairs"] == trained["pairs"] and "passed_every_kind" in written["gate"]
    assert written["heldout"]["eval"]["command"].startswith("dsteer-eval dpo-gate ")
    record = written["heldout"]["eval"]["provenance"]  # dsteer_eval.common.provenance: how this entry was measured
    assert record["command"] == shlex.join(["dsteer-eval", "dpo-gate", str(out), "--data", refusal_file,
                                            "--pretrained", tiny_dir, "--write-card"])
    assert record["data"][0]["sha256"] == hashlib.sha256(Path(refusal_file).read_bytes()).hexdigest()
    assert record["seeds"] == {"seed": settings.seed}
    assert [m["role"] for m in record["models"]] == ["base", "adapter"]
    assert record["models"][0]["fingerprint"]["num_layers"] == "4"
    assert record["models"][1]["fingerprint"]["adapter_sha256"] == hashlib.sha256(
        (out / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert "gate " in capsys.readouterr().out


def test_dpo_gate_refuses_the_train_part_and_non_adapters(tiny_dir, refusal_file, tmp_path):
    from dsteer_eval.dpo.gate import heldout_pairs

    with pytest.raises(ValueError, match="never trained"):
        heldout_pairs(refusal_file, None, DPOSettings(), part="train")
    with pytest.raises(ValueError, match="not a train-dpo LoRA adapter"):
        evaluate_adapter(tmp_path, refusal_file, pretrained=tiny_dir)


def test_full_fine_tuning_rewards_use_the_frozen_reference(tiny_dir, short_pairs_file, tmp_path):
    """Before the fix, pair_rewards scored a full fine-tune against itself: every reward was exactly 0."""
    card = train_dpo(short_pairs_file, tmp_path / "full", DPOSettings(steps=2, full=True, learning_rate=1e-3,
                     batch_size=2, max_length=64, max_prompt_length=40, eval_size=0, logging_steps=1),
                     pretrained=tiny_dir, save_steps=0)
    assert abs(card["metrics"]["train"]["chosen_reward_mean"]) > 1e-6


def test_cli_train_dpo_prints_rewards_by_kind(tiny_dir, refusal_file, tmp_path, capsys):
    """The summary line reads the card's eval_by_kind (it used to raise KeyError after training finished)."""
    from dsteer_eval.cli import main

    out = tmp_path / "pair"
    assert main(["train-dpo", "--data", refusal_file, "--pretrained", tiny_dir, "--steps", "1", "--batch-size", "4",
                 "--max-length", "64", "--max-prompt-length", "40", "--eval-size", "1000", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "eval reward accuracy" in printed and "; eval answer: reward accuracy" in printed
    assert "; eval refuse: reward accuracy" in printed


def _sweep_report(tmp_path, beta=0.3, lr=5e-4):
    report = {"format": "dsteer-eval/dpo-hparam-sweep", "steps": 30, "rule": "max of min z",
              "points": [{"beta": 0.1, "learning_rate": 5e-4, "worst_kind_z": -4.0, "pairs_eval": 174},
                         {"beta": beta, "learning_rate": lr, "worst_kind_z": 0.8, "pairs_eval": 174}],
              "chosen_index": 1, "chosen": {"beta": beta, "learning_rate": lr}, "command": "python x"}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(report))
    return path


def test_train_dpo_hparam_sweep_refuses_other_values_before_training(tiny_dir, refusal_file, tmp_path, capsys):
    from dsteer_eval.cli import main

    sweep = _sweep_report(tmp_path)
    out = tmp_path / "pair"
    common = ["train-dpo", "--data", refusal_file, "--pretrained", tiny_dir, "--steps", "1", "--batch-size", "4",
              "--max-length", "64", "--max-prompt-length", "40", "--out", str(out), "--hparam-sweep", str(sweep)]
    assert main([*common, "--beta", "0.1", "--learning-rate", "5e-4"]) == 2
    err = capsys.readouterr().err
    assert "chose beta 0.3" in err and "--beta 0.3 --learning-rate 0.0005" in err and not out.exists()
    assert main([*common, "--beta", "0.3", "--learning-rate", "5e-4"]) == 0
    card = json.loads((out / "dpo_card.json").read_text())
    choice = card["hparam_choice"]
    assert choice["chosen"] == {"beta": 0.3, "learning_rate": 5e-4}
    assert choice["sha256"] == hashlib.sha256(sweep.read_bytes()).hexdigest()
    assert [p["worst_kind_z"] for p in choice["points"]] == [-4.0, 0.8] and "vector part" in choice["measured_on"]


def test_hparam_sweep_file_errors_are_named(tmp_path):
    from dsteer_eval.dpo.hparam_choice import check

    with pytest.raises(ValueError, match="no such file"):
        check(0.3, 5e-4, tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a dsteer-eval/dpo-hparam-sweep report"):
        check(0.3, 5e-4, tmp_path / "other.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        check(0.3, 5e-4, tmp_path / "bad.json")


def _summary(acc, mean, se, n=150):
    return {"pairs": n, "reward_accuracy": acc, "reward_margin_mean": mean, "reward_margin_stderr": se}


def test_hparam_sweep_script_chooses_by_worst_kind_z_and_reuses_finished_points(tmp_path, monkeypatch):
    """scripts/dpo_hparam_sweep.py on finished points (cards in --work): no training, the choice by its rule."""
    from conftest import load_script

    script = load_script("scripts/dpo_hparam_sweep.py")
    import dsteer_eval.dpo.training as training

    monkeypatch.setattr(training, "train_dpo", lambda *a, **k: pytest.fail("a finished point was retrained"))
    work, out = tmp_path / "work", tmp_path / "out"
    hh = {"0.1:0.0005": _summary(0.60, 0.125, 0.0625), "0.3:0.0005": _summary(0.66, 0.5, 0.125),  # z 2, 4 (exact)
          "0.05:0.0005": _summary(0.70, 0.25, 0.0625)}  # z 4 too, higher accuracy: wins the tie
    for key, summary in hh.items():
        beta, lr = key.split(":")
        folder = work / f"beta{float(beta):g}_lr{float(lr):g}"
        folder.mkdir(parents=True)
        (folder / "dpo_card.json").write_text(json.dumps({"metrics": {"eval": summary}, "data": {"pairs_eval": 150},
                                                          "seconds_per_step": 15.0, "command": "c"}))
    assert script.main(["--preset", "hh", "--data", "d", "--work", str(work), "--out", str(out),
                        "--grid", ",".join(hh)]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert report["preset"] == "hh" and report["chosen"] == {"beta": 0.05, "learning_rate": 5e-4}
    assert [p["worst_kind_z"] for p in report["points"]] == [2.0, 4.0, 4.0]
    assert report["base_command"].startswith("dsteer-eval train-dpo --preset hh ")
    md = (out / "sweep.md").read_text()
    assert md.startswith("# beta x learning-rate sweep (hh pair,") and "| 0.05 | 0.0005 |" in md
    # a refusal-style card with kinds: the worst kind decides, not the pooled margin
    by_kind = {"eval": _summary(0.9, 5.0, 0.3), "eval_by_kind": {"refuse": _summary(1.0, 6.0, 0.3),
                                                                 "answer": _summary(0.2, -0.8, 0.2)}}
    assert script.worst_kind_z(by_kind) == pytest.approx(-4.0)
