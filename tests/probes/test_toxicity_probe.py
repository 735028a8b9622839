"""The linear toxicity probe (issue 35 item 2): mean states equal transformers' own hidden states averaged over the
real tokens, and the fitted direction recovers a planted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsteer_eval.probes.toxicity_probe import fit_probe, mean_states, score


def test_mean_states_are_the_hidden_states_averaged_over_real_tokens(tiny):
    model, tok = tiny
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = ["a short one", "a somewhat longer text with more tokens in it"]
    got = mean_states(model, tok, texts, batch_size=2)  # padded together
    n = model.config.num_hidden_layers
    for i, text in enumerate(texts):
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            want = model(**ids, output_hidden_states=True).hidden_states[n][0].to(torch.float64).mean(0).numpy()
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    mid = mean_states(model, tok, texts[:1], site=1)
    with torch.no_grad():
        want = model(**tok(texts[0], return_tensors="pt"), output_hidden_states=True).hidden_states[1][0].mean(0)
    np.testing.assert_allclose(mid[0], want.double().numpy(), rtol=1e-5, atol=1e-6)


def test_the_probe_recovers_a_planted_direction_and_scores_held_out_rows():
    rng = np.random.default_rng(0)
    d, n = 24, 400
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    x = rng.standard_normal((n, d))
    y = (x @ u > 0).astype(int)
    x += np.outer(2.0 * y - 1.0, u)  # a margin along u
    probe = fit_probe(x[:300], y[:300], site=5, label_name="planted")
    assert float(probe.direction @ u) > 0.99
    held = score(probe, x[300:], y[300:])
    assert held["accuracy"] == 1.0 and held["balanced_accuracy"] == 1.0 and held["n"] == 100
    assert held["positives"] == int(y[300:].sum())


@pytest.mark.parametrize("labels, message", [([0] * 4, "need both classes"), ([0, 1, 2, 1], "need both classes")])
def test_bad_labels_fail_clearly(labels, message):
    with pytest.raises(ValueError, match=message):
        fit_probe(np.zeros((4, 3)), labels, site=1, label_name="x")
