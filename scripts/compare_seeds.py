#!/usr/bin/env python
"""Does a shipped DPO pair (refusal by default, or hh) replicate across training seeds? Two DPO cards and two dpo-diff vectors.

Reads the shipped pair (seed 0) and a second seed's card and vector, and writes
OUT/seed_comparison.json and OUT/seed_comparison.md with, computed here:

* each seed's held-out gate (eval part, pooled and by kind), as its card records it;
* per site: cos(v̄_seed0, v̄_seed1) and ‖v̄_seed1‖ / ‖v̄_seed0‖;
* the null for the cosine: |cos| between v̄_seed0 and 10 000 seeded random Gaussian directions
  (its 99.9th percentile), so "the same direction" is judged against chance in d dimensions.

Verdict at the vectors' default layer, by rule (no typed outcome): **replicated** when both seeds
pass the gate for every kind and the cosine exceeds the null's 99.9th percentile; otherwise it says
which part failed.

    python scripts/compare_seeds.py --card-b results/smollm2_refusal_seed1/dpo_card.json \
        --vector-b results/smollm2_refusal_seed1/vector.safetensors --out results/smollm2_refusal_seed1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHIPPED = ROOT / "dsteer_eval" / "artifacts" / "smollm2" / "refusal"
NULL_DRAWS, NULL_SEED, NULL_QUANTILE = 10_000, 0, 0.999


def _gate(card: dict) -> dict:
    gate = card.get("gate") or {}
    return {"passed": gate.get("passed"), "passed_every_kind": gate.get("passed_every_kind"),
            "measured_on": gate.get("measured_on") or f"eval part, {gate.get('pairs')} pairs",
            "reward_accuracy": gate.get("reward_accuracy"), "margin_in_stderrs": gate.get("margin_in_stderrs"),
            "by_kind": {k: {"reward_accuracy": v["reward_accuracy"], "margin_in_stderrs": v["margin_in_stderrs"],
                            "pairs": v["pairs"], "passed": v["passed"]} for k, v in (gate.get("by_kind") or {}).items()},
            "seed": (card.get("hyperparameters") or {}).get("seed"), "steps": card.get("steps_done")}


def _null_quantile(v: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(NULL_SEED)
    draws = torch.randn(NULL_DRAWS, v.shape[0], generator=g, dtype=torch.float64)
    cos = (draws @ v.double()) / (draws.norm(dim=1) * v.double().norm())
    return float(torch.quantile(cos.abs(), NULL_QUANTILE))


def compare(card_a: dict, card_b: dict, va, vb) -> dict:
    sites = sorted(set(va.vectors) & set(vb.vectors))
    per_site = {}
    for s in sites:
        a, b = va.vectors[s].double(), vb.vectors[s].double()
        if float(a.norm()) == 0 or float(b.norm()) == 0:
            continue  # e.g. the embeddings, which a LoRA on linear layers never moves
        per_site[str(s)] = {"cos": float(a @ b / (a.norm() * b.norm())), "norm_ratio_b_over_a": float(b.norm() / a.norm())}
    layer = int(va.metadata.get("default_layer", 20))
    at = per_site[str(layer)]
    null = _null_quantile(va.vectors[layer])
    gates = {"a": _gate(card_a), "b": _gate(card_b)}
    both_pass = all(g["passed_every_kind"] if g["passed_every_kind"] is not None else g["passed"] for g in gates.values())
    direction = at["cos"] > null
    if both_pass and direction:
        verdict = "replicated"
    else:
        why = ([] if both_pass else ["a seed fails the held-out gate for some kind"]) + \
              ([] if direction else [f"cos {at['cos']:.3f} is within the random-direction null"])
        verdict = "not replicated: " + "; ".join(why)
    return {"layer": layer, "gates": gates, "cos_at_layer": at["cos"], "norm_ratio_at_layer": at["norm_ratio_b_over_a"],
            "null": {"draws": NULL_DRAWS, "seed": NULL_SEED, "quantile": NULL_QUANTILE, "abs_cos": null},
            "per_site": per_site, "verdict": verdict}


def markdown(result: dict, names: tuple[str, str], pair: str = "refusal") -> str:
    rows = ["| seed | steps | gate (eval part) | by kind |", "| --- | --- | --- | --- |"]
    for key, name in zip(("a", "b"), names):
        g = result["gates"][key]
        kinds = "; ".join(f"{k}: accuracy {v['reward_accuracy']:.3f}, {v['margin_in_stderrs']:+.1f} stderr "
                          f"({v['pairs']} pairs, {'passed' if v['passed'] else 'failed'})" for k, v in g["by_kind"].items())
        rows.append(f"| {name} (seed {g['seed']}) | {g['steps']} | {'passed' if g['passed'] else 'failed'}, accuracy "
                    f"{g['reward_accuracy']:.3f}, {g['margin_in_stderrs']:+.1f} stderr ({g['measured_on']}) | {kinds or '—'} |")
    sites = result["per_site"]
    cos_line = ", ".join(f"{s}: {v['cos']:.3f}" for s, v in sites.items())
    return "\n".join([
        f"# Seed replication of the {pair} pair", "",
        *rows, "",
        f"At layer {result['layer']}: cos(v̄_seed0, v̄_seed1) = **{result['cos_at_layer']:.3f}**, "
        f"‖v̄_seed1‖/‖v̄_seed0‖ = {result['norm_ratio_at_layer']:.3f}; random-direction null: |cos| 99.9th percentile "
        f"{result['null']['abs_cos']:.3f} ({result['null']['draws']} seeded Gaussian directions).", "",
        f"Verdict: **{result['verdict']}**", "",
        f"cos by site: {cos_line}", "",
    ])


def main() -> int:
    from dsteer_eval.vectors import load_vectors

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--card-a", default=str(SHIPPED / "adapter" / "dpo_card.json"))
    ap.add_argument("--vector-a", default=str(SHIPPED / "vector.safetensors"))
    ap.add_argument("--card-b", required=True)
    ap.add_argument("--vector-b", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pair", default="refusal", help="the pair's name in the report's title")
    args = ap.parse_args()
    result = compare(json.loads(Path(args.card_a).read_text()), json.loads(Path(args.card_b).read_text()),
                     load_vectors(args.vector_a), load_vectors(args.vector_b))
    result["inputs"] = {k: getattr(args, k) for k in ("card_a", "vector_a", "card_b", "vector_b")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from dsteer_eval.common.output_folder import atomic_write_text

    atomic_write_text(out / "seed_comparison.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "seed_comparison.md", markdown(result, ("shipped", "second seed"), args.pair))
    print(markdown(result, ("shipped", "second seed"), args.pair))
    return 0


if __name__ == "__main__":
    sys.exit(main())
