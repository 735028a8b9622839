"""dsteer_eval.probes.token_lens on the tiny random Llama: the lens at the last site is the model's own next-token
distribution, earlier sites are final_norm + lm_head of the recorded state, padding on either side reads the same
position, and bad input is refused by name."""

from __future__ import annotations

import pytest
import torch

from dsteer_eval.probes.token_lens import single_token_words, token_set_lens, token_sets_lens


def test_the_last_site_is_the_models_own_distribution_and_earlier_sites_the_lens_by_hand(tiny):
    model, tok = tiny
    enc = tok(["Paris is the capital of", "How do I bake"], padding=True, return_tensors="pt")
    ids = [5, 17, 250]
    got = token_set_lens(model, enc.input_ids, enc.attention_mask, ids)
    n = model.config.num_hidden_layers
    assert got.shape == (n + 1, 2) and got.dtype == torch.float32
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    last = enc.attention_mask.sum(1) - 1 if tok.padding_side == "right" else torch.full((2,), enc.input_ids.shape[1] - 1)
    for b in range(2):
        logp = torch.log_softmax(out.logits[b, last[b]].float(), -1)
        assert float(got[n, b]) == pytest.approx(float(torch.logsumexp(logp[ids], 0)), abs=1e-5)
        for site in (0, 2):  # hidden_states[site] is the pre-norm state there
            h = out.hidden_states[site][b, last[b]]
            with torch.no_grad():
                lens = torch.log_softmax(model.lm_head(model.model.norm(h[None, None]))[0, 0].float(), -1)
            assert float(got[site, b]) == pytest.approx(float(torch.logsumexp(lens[ids], 0)), abs=1e-5)
    # a set's probability is the sum of its members'
    one = [token_set_lens(model, enc.input_ids, enc.attention_mask, [t], sites=[n])[0] for t in ids]
    assert torch.allclose(torch.logsumexp(torch.stack(one), 0), got[n], atol=1e-5)
    # many sets from one pass: each column is that set read alone
    many = token_sets_lens(model, enc.input_ids, enc.attention_mask, [ids, [1], [2, 3]], sites=[0, n])
    assert many.shape == (2, 2, 3)
    assert torch.equal(many[:, :, 0], got[[0, n]])
    assert torch.allclose(many[1, :, 1], token_set_lens(model, enc.input_ids, enc.attention_mask, [1], sites=[n])[0])


def test_left_and_right_padding_read_the_same_last_token(tiny):
    model, tok = tiny
    texts = ["Paris is the capital of France and", "Hi"]
    single = torch.stack([token_set_lens(model, tok(t, return_tensors="pt").input_ids, None, [3, 9], sites=[1, 3])[:, 0]
                          for t in texts], dim=1)
    for side in ("left", "right"):
        tok.padding_side, before = side, tok.padding_side
        try:
            enc = tok(texts, padding=True, return_tensors="pt")
        finally:
            tok.padding_side = before
        assert (enc.attention_mask == 0).any()
        got = token_set_lens(model, enc.input_ids, enc.attention_mask, [3, 9], sites=[1, 3])
        # the same positions are read; padding changes nothing under a causal mask (right) and little for rotary (left)
        assert torch.allclose(got, single, atol=1e-4), side


def test_bad_input_is_refused_by_name(tiny):
    model, tok = tiny
    enc = tok(["Paris"], return_tensors="pt")
    with pytest.raises(ValueError, match="token_ids"):
        token_set_lens(model, enc.input_ids, None, [])
    with pytest.raises(ValueError, match="token_ids"):
        token_set_lens(model, enc.input_ids, None, [10**7])
    with pytest.raises(ValueError, match="sites"):
        token_set_lens(model, enc.input_ids, None, [1], sites=[99])
    with pytest.raises(ValueError, match="token_sets"):
        token_sets_lens(model, enc.input_ids, None, [])
    with pytest.raises(ValueError, match="attention_mask"):
        token_set_lens(model, enc.input_ids, torch.zeros_like(enc.input_ids), [1])


def test_single_token_words_keeps_only_one_token_spellings(tiny):
    _, tok = tiny
    words = ["the", "antidisestablishmentarianism", "the", "and"]
    got = single_token_words(tok, words)
    for word, tid in got:
        assert tok(" " + word, add_special_tokens=False)["input_ids"] == [tid]
    assert got and "antidisestablishmentarianism" not in [w for w, _ in got]
    assert len({t for _, t in got}) == len(got)  # a repeated word is kept once
    with pytest.raises(ValueError, match="words"):
        single_token_words(tok, ["ok", ""])
