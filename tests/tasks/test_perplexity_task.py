"""The held-out plain-text perplexity task (``dsteer_perplexity_hh``, dsteer_eval.metrics.perplexity; issue 35
item 1): exact per-document numbers, non-finite documents counted apart, and through lm-eval the steered model at
alpha = 0 scores exactly what plain ``hf`` scores."""

from __future__ import annotations

import math

import pytest

from dsteer_eval.metrics.aggregations import finite_mean
from dsteer_eval.metrics.perplexity import doc_text, process_results
from test_tasks import evaluate, write_vector


def test_per_document_numbers_are_exact_and_a_nonfinite_one_is_counted_apart():
    doc = {"chosen": "Human: hi there\n\nAssistant: héllo"}  # 5 words, 34 bytes (é is two)
    got = process_results(doc, [(-20.0, False)])
    assert got["word_perplexity"] == (-20.0, 5) and got["byte_perplexity"] == (-20.0, 34)
    assert got["doc_bits_per_byte"] == pytest.approx(20.0 / (34 * math.log(2)), rel=1e-12) and got["n_nonfinite"] == 0
    bad = process_results(doc, [float("-inf")])
    assert bad["n_nonfinite"] == 1 and bad["word_perplexity"] == (0.0, 0) and math.isnan(bad["doc_bits_per_byte"])
    assert finite_mean([1.0, float("nan"), 3.0]) == 2.0 and math.isnan(finite_mean([float("nan")]))
    assert doc_text({"text": "plain"}) == "plain"
    with pytest.raises(ValueError, match="no text to score"):
        doc_text({"chosen": "  "})


def test_steered_at_alpha_zero_scores_exactly_what_hf_scores(tiny_dir, tiny, tmp_path):
    vector = write_vector(tmp_path / "v.safetensors", tiny[0])
    hf = evaluate(f"pretrained={tiny_dir},device=cpu", ["dsteer_perplexity_hh"], 3, model="hf")
    steered = evaluate(f"pretrained={tiny_dir},vector={vector},layer=2,alpha=0,device=cpu", ["dsteer_perplexity_hh"], 3)
    a, b = hf["results"]["dsteer_perplexity_hh"], steered["results"]["dsteer_perplexity_hh"]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none", "doc_bits_per_byte,none"):
        assert a[metric] == b[metric] and math.isfinite(a[metric])
    samples = steered["samples"]["dsteer_perplexity_hh"]
    lls = [s["resps"][0][0] if isinstance(s["resps"][0], list) else s["resps"][0] for s in samples]
    lls = [float(x[0] if isinstance(x, (list, tuple)) else x) for x in lls]
    nbytes = [len(doc_text(s["doc"]).encode("utf-8")) for s in samples]
    assert b["bits_per_byte,none"] == pytest.approx(-sum(lls) / (sum(nbytes) * math.log(2)), rel=1e-9)
    assert b["n_nonfinite,none"] == 0
