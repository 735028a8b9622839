"""Lee et al. on the embedded model (issue 35 item 4): the logit lens of toxic tokens through the layers (their
Fig 3's analogue), base vs DPO vs the null adapter, beside random token sets. Writes
results/lee_smollm2/logit_lens.{json,md} and fig_logit_lens.png.

    .venv/bin/python scripts/lee_logit_lens.py        # ~2 min on 2 cores

Tokens: the toxic set is the offline scorer's (alt-profanity-check's) 60 most toxic words by its linear weight that
SmolLM2 spells as one token after a space. Control: 20 random sets of as many single-token lowercase words (" " +
letters), drawn from the whole vocabulary with a fixed seed.

Data and position: the eval part's prompts of the toxicity pairs (results/toxicity_pair/toxicity_pairs.jsonl.gz;
never trained on), read at the last prompt token, the position that predicts the first continuation token. At each
site s (0 = embeddings, i = the output of layer i, 30 = the final post-norm state) the state goes through the final
norm and the tied unembedding (dsteer_eval.probes.token_lens), and log10 P(set) = log10 Σ p over the set is read.
At site 30 this is the model's own next-token distribution.

Per site: mean log10 P(toxic set) for the base, the DPO model (adapter merged) and the null model (lora_B rows
permuted); DPO − base paired over prompts with a bootstrap CI; and at the final site the change DPO − base of the
toxic set ranked among the random sets' changes (a drop specific to toxic tokens ranks first).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lee_after_dpo import lora_state, merged  # noqa: E402

from dsteer_eval.dpo.null_adapter import permute_lora_B  # noqa: E402
from dsteer_eval.models.embedded import default_adapter  # noqa: E402
from dsteer_eval.models.loading import load_model  # noqa: E402
from dsteer_eval.probes.token_lens import single_token_words, token_sets_lens  # noqa: E402
from dsteer_eval.stats.bootstrap import paired_bootstrap  # noqa: E402

OUT = ROOT / "results" / "lee_smollm2"
PAIRS = ROOT / "results" / "toxicity_pair" / "toxicity_pairs.jsonl.gz"
N_WORDS, K, SEED = 60, 20, 0
LN10 = float(np.log(10))


def toxic_words() -> list[str]:
    """The offline scorer's vocabulary, most toxic first (its calibrated linear SVM's weights)."""
    from profanity_check import profanity_check as pc  # deferred: the optional offline scorer, only this script

    est = pc.model.calibrated_classifiers_[0].estimator
    coef = np.asarray(est.coef_.todense() if hasattr(est.coef_, "todense") else est.coef_).ravel()
    names = pc.vectorizer.get_feature_names_out()
    return [str(names[i]) for i in np.argsort(-coef) if coef[i] > 0]


def random_sets(tok, size: int, exclude: set[int], rng) -> list[list[int]]:
    pool = [i for t, i in tok.get_vocab().items() if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower()
            and len(t) > 3 and i not in exclude]
    return [sorted(int(x) for x in rng.choice(pool, size=size, replace=False)) for _ in range(K)]


def lens(model, tok, prompts, sets) -> np.ndarray:
    """(sites, prompts, sets) log10 P(set)."""
    return np.stack([token_sets_lens(model, tok(p, return_tensors="pt").input_ids, None, sets)[:, 0].double().numpy()
                     for p in prompts], axis=1) / LN10


def main() -> None:
    rows = [json.loads(x) for x in gzip.open(PAIRS, "rt", encoding="utf-8")]
    prompts = [r["prompt"] for r in rows if r["part"] == "eval"]
    base, tok, _ = load_model(None, device="cpu")
    adapter = str(default_adapter(pair="toxicity"))
    models = {"base": base, "dpo": merged(base, adapter),
              "null": merged(base, adapter, permute_lora_B(lora_state(adapter), seed=SEED))}
    chosen = single_token_words(tok, toxic_words())[:N_WORDS]
    toxic_ids = [i for _, i in chosen]
    controls = random_sets(tok, len(toxic_ids), set(toxic_ids), np.random.default_rng(SEED))
    with torch.no_grad():
        read = {name: lens(m, tok, prompts, [toxic_ids, *controls]) for name, m in models.items()}
    toxic = {name: r[:, :, 0] for name, r in read.items()}
    final = {name: [read[name][-1, :, 1 + k] for k in range(K)] for name in ("base", "dpo")}
    n_sites = toxic["base"].shape[0]
    per_site = []
    for s in range(n_sites):
        delta = paired_bootstrap(toxic["dpo"][s], toxic["base"][s]).as_dict()
        null = paired_bootstrap(toxic["null"][s], toxic["base"][s]).as_dict()
        per_site.append({"site": s, **{name: float(v[s].mean()) for name, v in toxic.items()},
                         "dpo_minus_base": delta, "null_minus_base": null})
    top = int(np.argmax([r["base"] for r in per_site[1:]])) + 1
    change = float((toxic["dpo"][-1] - toxic["base"][-1]).mean())
    random_changes = [float((d - b).mean()) for d, b in zip(final["dpo"], final["base"])]
    rank = 1 + sum(c <= change for c in random_changes)  # 1 = the largest drop
    result = {
        "data": f"{len(prompts)} eval-part prompts of {PAIRS.relative_to(ROOT)}, last prompt token",
        "tokens": {"toxic": [w for w, _ in chosen], "n": len(toxic_ids), "source": "alt-profanity-check's linear "
                   "weights, most toxic first, single SmolLM2 tokens after a space", "random_sets": K, "seed": SEED},
        "per_site": per_site, "base_peak_site": top,
        "final": {"toxic_change": change, "random_changes": random_changes, "rank_of_toxic_drop": rank,
                  "p": rank / (K + 1),
                  "random_base_mean": float(np.mean([b.mean() for b in final["base"]]))},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "logit_lens.json").write_text(json.dumps(result, indent=1) + "\n")
    figure(per_site)
    (OUT / "logit_lens.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def figure(per_site) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [r["site"] for r in per_site]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, style in (("base", "-"), ("dpo", "-"), ("null", "--")):
        ax.plot(sites, [r[name] for r in per_site], style, label={"base": "base", "dpo": "DPO (toxicity adapter)",
                                                                   "null": "null adapter"}[name])
    ax.set_xlabel("site (0 = embeddings, i = output of layer i, 30 = final post-norm state)")
    ax.set_ylabel("mean log10 P(toxic token set)")
    ax.set_title("Logit lens of the toxic token set, last prompt token, eval-part RTP prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "fig_logit_lens.png", dpi=120)
    plt.close(fig)


def ci(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def markdown(r: dict) -> str:
    f = r["final"]
    lines = [
        "# The logit lens of toxic tokens through the layers (Lee et al. Fig 3's analogue)", "",
        f"Data: {r['data']}. Written by `scripts/lee_logit_lens.py`.", "",
        f"Toxic set: {r['tokens']['n']} words ({r['tokens']['source']}): "
        + ", ".join(r["tokens"]["toxic"][:15]) + ", …", "",
        "Each cell: mean over prompts of log10 P(toxic set) read through the final norm and unembedding at that "
        "site; DPO − base and null − base paired over prompts, 95 % bootstrap CI.", "",
        "| site | base | DPO | null | DPO − base | null − base |", "| ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in r["per_site"]:
        if row["site"] % 3 == 0 or row["site"] >= 24:
            lines.append(f"| {row['site']} | {row['base']:.3f} | {row['dpo']:.3f} | {row['null']:.3f} | "
                         f"{ci(row['dpo_minus_base'])} | {ci(row['null_minus_base'])} |")
    final = r["per_site"][-1]
    lines += ["", "## Reading", "",
              f"* In the base model the toxic set is most probable at site {r['base_peak_site']} "
              f"(log10 P = {r['per_site'][r['base_peak_site']]['base']:.3f}); at the output (site "
              f"{final['site']}) it is {final['base']:.3f}, against {f['random_base_mean']:.3f} for random word sets "
              "of the same size.",
              f"* At the output the DPO model changes it by {ci(final['dpo_minus_base'])} (log10; the null adapter "
              f"{ci(final['null_minus_base'])}).",
              f"* Random word sets change by {min(f['random_changes']):+.3f} … {max(f['random_changes']):+.3f} "
              f"under DPO; the toxic set's drop ranks {f['rank_of_toxic_drop']} of {len(f['random_changes']) + 1} "
              f"(1 = largest drop, p = {f['p']:.3f}).",
              "", "![logit lens](fig_logit_lens.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
