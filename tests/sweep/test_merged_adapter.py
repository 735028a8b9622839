"""A sweep's DPO side with the LoRA weights merged once: same numbers, base side untouched, and the
model back to an ordinary PEFT model between calls (probes toggle the adapter themselves)."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from dsteer_eval.vectors import save_vectors

PAIRS = [("Human: How do I bake bread? Assistant:", " Mix flour, water and yeast."),
         ("The quick brown fox", " jumps over the lazy dog."),
         ("What is the capital of France?", " Paris")]


def _ll(lm):
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)]
    return [ll for ll, _ in lm.loglikelihood(reqs)]


@pytest.fixture(scope="module")
def vector(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    save_vectors(path, {2: torch.randn(32, generator=torch.Generator().manual_seed(7))}, model=tiny[0])
    return str(path)


def _lm(tiny_dir, tiny_adapter_dir, vector, merge):
    from dsteer_eval.sweep.sweep_lm import SweepLM

    return SweepLM(pretrained=tiny_dir, peft=tiny_adapter_dir, vector=vector, layer=2, alpha=0.0, batch_size=2,
                   merge_adapter=merge)


def test_merged_dpo_side_matches_the_adapter_and_leaves_the_base_side_bit_identical(tiny_dir, tiny_adapter_dir,
                                                                                      vector):
    merged, plain = _lm(tiny_dir, tiny_adapter_dir, vector, True), _lm(tiny_dir, tiny_adapter_dir, vector, False)
    assert merged._merged is not None and plain._merged is None
    weights = [(w, base) for w, base, _ in merged._merged._pairs]
    assert len(weights) == 4 * 7  # every all-linear LoRA layer of the 4-layer tiny Llama
    results = {}
    for side, alpha in (("dpo", 0.0), ("dpo", -3.0), ("base", 0.0), ("base", 3.0)):
        got = []
        for lm in (merged, plain):
            lm.set_point(2, alpha, side)
            got.append(_ll(lm))
        results[side, alpha] = got
        # between calls: the ordinary PEFT model, base weights in place
        assert all(w.data_ptr() == base.data_ptr() for w, base in weights)
    for (side, alpha), (a, b) in results.items():
        if side == "base":
            assert a == b  # adapter off: the very same weights
        else:
            assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
    assert results["dpo", 0.0][1] != results["base", 0.0][1]  # the adapter really changes the model
    # the adapter toggles as before outside the sweep's calls
    for lm in (merged, plain):
        lm.set_point(2, 0.0, "dpo")
    with torch.no_grad():
        ids = merged.tokenizer("Hello there", return_tensors="pt").input_ids
        on = merged.model(ids).logits
        with merged.model.disable_adapter():
            off = merged.model(ids).logits
        assert torch.equal(on, plain.model(ids).logits) and not torch.equal(on, off)


def test_merging_is_skipped_where_it_does_not_apply(tiny_dir, tiny_adapter_dir, vector, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dsteer_eval.sweep import merged_adapter
    from dsteer_eval.sweep.sweep_lm import SweepLM

    assert SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=2)._merged is None  # no adapter
    off = SweepLM(pretrained=tiny_dir, peft=tiny_adapter_dir, vector=vector, layer=2, alpha=0.0, batch_size=2,
                  merge_adapter="false")  # as --model-args merge_adapter=false passes it
    assert off._merged is None
    with pytest.raises(ValueError, match="merge_adapter='maybe': expected true or false"):
        SweepLM(pretrained=tiny_dir, peft=tiny_adapter_dir, vector=vector, layer=2, alpha=0.0, batch_size=2,
                merge_adapter="maybe")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_adapter_dir)
    assert merged_adapter.MergedSides.build(model) is not None
    monkeypatch.setattr(merged_adapter, "MAX_EXTRA_BYTES", 1024)  # the merged copies would not fit
    assert merged_adapter.MergedSides.build(model) is None
