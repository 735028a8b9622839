"""results/README.md is generated from the committed results (no typed numbers or verdicts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_results_readme_is_generated_from_the_results():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_readme.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_lee_report_page_is_generated_from_the_results():
    """results/lee_smollm2/README.md (Lee et al. on SmolLM2) is scripts/lee_report.py's output from the JSON files."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "lee_report.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _best_vector_script():
    from conftest import load_script

    return load_script("scripts/best_vector.py")


def test_the_best_vector_tables_are_rendered_from_their_numbers():
    """Every committed results/best_vector table.md (issue 36) is markdown() of its table.json (with the null run's
    table beside it where one exists): no typed number or verdict."""
    bv = _best_vector_script()
    tables = sorted(p for p in (ROOT / "results" / "best_vector").rglob("table.json") if not p.parent.name.startswith("behaviour_site"))
    assert tables
    for path in tables:
        result = json.loads(path.read_text(encoding="utf-8"))
        assert result["answers"] == bv.answers(result), path
        assert path.with_suffix(".md").read_text(encoding="utf-8") == bv.markdown(result, bv.control_of(path.parent)), path
    from conftest import load_script

    bvb = load_script("scripts/best_vector_behaviour.py")
    for path in sorted((ROOT / "results" / "best_vector").glob("*/behaviour_site*/table.json")):  # the readers' rates
        result = json.loads(path.read_text(encoding="utf-8"))
        assert path.with_suffix(".md").read_text(encoding="utf-8") == bvb.markdown(result), path


def test_best_vector_words_follow_the_numbers():
    bv = _best_vector_script()

    def arm(frac, low, high, rank=1, p=0.048, gap=True):
        return {"share": {"fraction": frac, "low": low, "high": high, "gap_shown": gap},
                "rank": None if rank is None else {"rank": rank, "p_value": p}}

    assert bv.verdict(arm(0.95, 0.85, 1.1)) == "does it"
    assert bv.verdict(arm(0.95, 0.85, 1.1, rank=2, p=0.095)) == "does it (not beyond random)"
    assert bv.verdict(arm(1.3, 1.1, 1.5)) == "overshoot"  # above 100 % is not "more"
    assert bv.verdict(arm(0.6, 0.5, 0.7, rank=None)) == "part (no random directions)"
    assert bv.verdict(arm(-0.3, -0.5, -0.1)) == "wrong way"
    assert bv.verdict(arm(0.2, -0.1, 0.5)) == "not shown"
    assert bv.verdict(arm(0.58, -6.0, 5.5, gap=False)) == "no gap shown"  # the null run: DPO's margin holds 0

    def side(kl, low, high):
        return {"arms": {"+v̄": {"kl_explained": {"value": kl, "low": low, "high": high},
                                 "share": {"fraction": 0.5, "low": 0.4, "high": 0.6, "gap_shown": True}}},
                "n": 24, "kl_dpo_base": 0.1, "dpo_margin": 1.0}

    null = {"null_adapter": {"command": "dsteer-eval train-dpo", "labels": {"swapped": 3},
                             "heldout": {"reward_accuracy": 0.5}}, "layers": {}}
    for real, floor, word in [((0.6, 0.5, 0.7), (0.2, 0.1, 0.3), "above the null"),
                              ((0.2, 0.1, 0.3), (0.6, 0.5, 0.7), "below the null"),
                              ((0.3, 0.1, 0.5), (0.35, 0.2, 0.4), "not told apart from the null")]:
        null["layers"] = {"20": {"eval": side(*floor)}}
        lines = bv.null_comparison({"layers": {"20": {"eval": side(*real)}}}, null)
        assert lines[-2].endswith(f"| {word} |"), lines[-2]


def test_best_vector_fits_v_dpo_on_train_rows_and_the_distilled_vectors_on_fit_rows(tmp_path, monkeypatch):
    """--train-rows sets only v_DPO's --limit (the train part); v* and u* keep --fit-rows (the vector part); a file
    fitted before with the guarded rule is kept, not fitted again."""
    bv = _best_vector_script()
    commands = []
    monkeypatch.setattr(bv, "run", commands.append)
    monkeypatch.setattr(bv, "guarded", lambda path, layer: path.name.startswith("distill_undo"))
    (tmp_path / "vectors").mkdir()
    (tmp_path / "vectors" / "distill_undo_site20.safetensors").write_bytes(b"")
    files = bv.fit("refusal", tmp_path / "adapter", [20], 150, tmp_path, 100000, {"max_prompt": 64, "max_completion": 32},
                   train_rows=48)
    assert set(files) == {"distill_install", "distill_undo", "dpo_vector"}
    limits = {cmd[cmd.index("--method") + 1]: (cmd[cmd.index("--part") + 1], cmd[cmd.index("--limit") + 1])
              for cmd in commands}
    assert limits == {"distill": ("vector", "100000"), "dpo-vector": ("train", "48")}  # u* kept: one distill run
    assert len(commands) == 2
