"""The continuation-only LM head of `steered`: lm-eval's numbers, with the head on the read span only."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM

from dsteer_eval.adapters import continuation_loglik
from dsteer_eval.vectors import save_vectors

# varied lengths and one shared context with one-token continuations (lm-eval's logits cache groups them)
PAIRS = [
    ("Human: How do I bake bread? Assistant:", " Mix flour, water and yeast, then wait."),
    ("Human: How do I bake bread? Assistant:", " I would rather not."),
    ("Question: 2 + 2 =", " 4"),
    ("Question: 2 + 2 =", " 5"),
    ("Question: 2 + 2 =", " four"),
    ("The quick brown fox", " jumps over the lazy dog."),
    ("A", " very long continuation that is longer than its context by a good margin, to widen the span"),
]


def reqs(pairs=PAIRS):
    return [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]


def _spy(monkeypatch):
    """Records (input length, kept positions) of every continuation-head call."""
    seen = []
    original = get_model("steered")._forward_kept

    def spy(self, inps, keep, **model_kwargs):
        seen.append((inps.shape[1], len(keep)))
        out = original(self, inps, keep, **model_kwargs)
        assert out.shape[:2] == (inps.shape[0], len(keep))
        return out

    monkeypatch.setattr(get_model("steered"), "_forward_kept", spy)
    return seen


@pytest.mark.parametrize("batch_size", [1, 3])
def test_equals_hf_and_runs_the_head_on_fewer_positions(tiny_dir, monkeypatch, batch_size):
    hf = HFLM(pretrained=tiny_dir, batch_size=batch_size, device="cpu").loglikelihood(reqs())
    seen = _spy(monkeypatch)
    lm = get_model("steered")(pretrained=tiny_dir, vector=_zero_vector(tiny_dir), layer=2,
                              alpha=0.0, batch_size=batch_size)
    ours = lm.loglikelihood(reqs())
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, hf)) <= 1e-5
    assert [a[1] for a in ours] == [b[1] for b in hf]  # greedy flags identical
    assert seen and all(kept <= width for width, kept in seen)
    assert sum(kept for _, kept in seen) < sum(width for width, _ in seen)  # the head skipped positions


def _zero_vector(tiny_dir):
    from transformers import AutoModelForCausalLM

    path = Path(tiny_dir) / "zero_v.safetensors"
    if not path.exists():
        save_vectors(path, {2: torch.zeros(32)}, model=AutoModelForCausalLM.from_pretrained(tiny_dir))
    return str(path)


@pytest.mark.parametrize("position", ["all", "completion", "prompt"])
def test_steered_numbers_equal_the_full_head_loop(tiny_dir, tiny, tmp_path, position):
    g = torch.Generator().manual_seed(5)
    path = tmp_path / "v.safetensors"
    save_vectors(path, {2: torch.randn(32, generator=g)}, model=tiny[0])
    kw = dict(pretrained=tiny_dir, vector=str(path), layer=2, alpha=3.0, position=position, batch_size=2)
    full = get_model("steered")(head_positions="all", **kw).loglikelihood(reqs())
    kept = get_model("steered")(**kw).loglikelihood(reqs())
    assert max(abs(a[0] - b[0]) for a, b in zip(kept, full)) <= 1e-5
    assert [a[1] for a in kept] == [b[1] for b in full]
    assert max(abs(a[0] - b[0]) for a, b in zip(kept, get_model("steered")(**{**kw, "alpha": 0.0})
                                                .loglikelihood(reqs()))) > 1e-3  # steering did something


def test_kept_span_covers_every_continuation():
    assert continuation_loglik.kept_span([10, 7, 4], [3, 5, 1]) == (2, 10)


def test_bad_head_positions_is_refused(tiny_dir):
    with pytest.raises(ValueError, match="head_positions='last'"):
        get_model("steered")(pretrained=tiny_dir, vector=_zero_vector(tiny_dir), layer=2, head_positions="last")


def test_model_without_logits_to_keep_falls_back(tiny_dir, monkeypatch, caplog):
    monkeypatch.setattr(continuation_loglik, "takes_logits_to_keep", lambda model: False)
    seen = _spy(monkeypatch)
    lm = get_model("steered")(pretrained=tiny_dir, vector=_zero_vector(tiny_dir), layer=2, alpha=0.0, batch_size=2)
    hf = HFLM(pretrained=tiny_dir, batch_size=2, device="cpu").loglikelihood(reqs())
    assert lm.loglikelihood(reqs()) == hf and seen == []
    assert "full-head loop" in caplog.text


def real_hh_pairs(n: int = 12) -> list[tuple[str, str]]:
    """(context, continuation) of the first short HH harmless pairs in ../shared/data: chosen and rejected
    after the same context."""
    data = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh_harmless_dev.jsonl.gz"
    if not data.is_file():
        pytest.skip(f"{data} not found (the real data sits beside the checkout)")
    pairs = []
    with gzip.open(data, "rt") as fh:
        for line in fh:
            row = json.loads(line)
            cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
            if len(row["chosen"]) < 700 and len(row["rejected"]) < 700:
                pairs += [(row["chosen"][:cut], row["chosen"][cut:]), (row["chosen"][:cut], row["rejected"][cut:])]
            if len(pairs) >= n:
                break
    return pairs


def test_real_rows_on_the_embedded_model(embedded_dir):
    """Real HH pairs (../shared/data) on SmolLM2: |Δ loglik| <= 1e-5 against --model hf, same greedy flags
    (the continuation head alone, one row per request; packed contexts: tests/adapters/test_packed_contexts.py)."""
    pairs = real_hh_pairs()
    hf = HFLM(pretrained=embedded_dir, batch_size=4, device="cpu").loglikelihood(reqs(pairs))
    lm = get_model("steered")(pretrained="smollm2", peft="none", alpha=0.0, batch_size=4, pack_contexts=False)
    assert lm._continuation_head
    ours = lm.loglikelihood(reqs(pairs))
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, hf)) <= 1e-5
    assert [a[1] for a in ours] == [b[1] for b in hf]
