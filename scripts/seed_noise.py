#!/usr/bin/env python
"""Is the seed-0 vs seed-1 difference in v̄ more than the sampling noise of v̄ itself?

v̄ = mean over the vector part's prompts of h_dpo − h_base at the last prompt token (layer L). Both
seeds' per-prompt differences δ are computed on the same prompts; then, over seeded random splits of
the prompts into halves A and B:

* within a seed, other prompts:     cos(v̄₀[A], v̄₀[B]) and cos(v̄₁[A], v̄₁[B])   (sampling noise alone)
* across seeds, other prompts:      cos(v̄₀[A], v̄₁[B])                        (noise + seed)
* across seeds, the same prompts:   cos(v̄₀[A], v̄₁[A])                        (seed alone, at half size)

Rule (computed, not typed): the seed effect is **within sampling noise** when the mean across-seed
cosine on other prompts is at least the 2.5th percentile of the within-seed cosines; else the seeds
differ beyond noise. Writes OUT/seed_noise.json and OUT/seed_noise.md.

    python scripts/seed_noise.py --adapter-b build/refusal_dpo_seed1 --out results/smollm2_refusal_seed1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHIPPED = ROOT / "dsteer_eval" / "artifacts" / "smollm2" / "refusal" / "adapter"


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def split_cosines(d0: torch.Tensor, d1: torch.Tensor, *, splits: int = 200, seed: int = 0) -> dict:
    """Cosines of half-sample means over random splits; ``d0``/``d1``: (N, d) per-prompt δ, same prompts."""
    if d0.shape != d1.shape or d0.shape[0] < 4:
        raise ValueError("need the same >= 4 prompts for both seeds")
    g = torch.Generator().manual_seed(seed)
    n = d0.shape[0]
    out = {"within": [], "across_other": [], "across_same": []}
    for _ in range(splits):
        order = torch.randperm(n, generator=g)
        a, b = order[: n // 2], order[n // 2: 2 * (n // 2)]
        m0a, m0b, m1a, m1b = d0[a].mean(0), d0[b].mean(0), d1[a].mean(0), d1[b].mean(0)
        out["within"] += [_cos(m0a, m0b), _cos(m1a, m1b)]
        out["across_other"] += [_cos(m0a, m1b), _cos(m1a, m0b)]
        out["across_same"] += [_cos(m0a, m1a), _cos(m0b, m1b)]
    summary = {}
    for key, values in out.items():
        t = torch.tensor(values, dtype=torch.float64)
        summary[key] = {"mean": float(t.mean()), "q025": float(torch.quantile(t, 0.025)),
                        "q975": float(torch.quantile(t, 0.975)), "n": len(values)}
    within_noise = summary["across_other"]["mean"] >= summary["within"]["q025"]
    summary["full_sample_cos"] = _cos(d0.mean(0), d1.mean(0))
    summary["verdict"] = ("seed effect within sampling noise" if within_noise else
                          "seeds differ beyond sampling noise")
    summary["splits"], summary["seed"], summary["prompts"] = splits, seed, n
    return summary


def main() -> int:
    from dsteer_eval.dpo.extract import pair_states
    from dsteer_eval.dpo.model_pair import ModelPair
    from dsteer_eval.data.preference_pairs import load_prompts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter-a", default=str(SHIPPED))
    ap.add_argument("--adapter-b", required=True)
    ap.add_argument("--data", default=str(ROOT / "build" / "refusal" / "refusal_pairs.jsonl.gz"))
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    prompts, _ = load_prompts(args.data, part="vector")
    deltas = []
    for adapter in (args.adapter_a, args.adapter_b):
        pair = ModelPair.load(None, adapter=adapter)
        deltas.append(pair_states(pair, prompts).delta[:, args.layer].double())
        del pair
    result = split_cosines(*deltas, splits=args.splits)
    result.update({"layer": args.layer, "adapters": [args.adapter_a, args.adapter_b], "data": args.data,
                   "part": "vector", "position": "last prompt token"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from dsteer_eval.common.output_folder import atomic_write_text

    atomic_write_text(out / "seed_noise.json", json.dumps(result, indent=1) + "\n")
    fmt = lambda s: f"{s['mean']:.3f} [{s['q025']:.3f}, {s['q975']:.3f}]"  # noqa: E731
    md = "\n".join([
        "# Seed effect vs sampling noise of v̄", "",
        f"Layer {args.layer}, last prompt token, {result['prompts']} vector-part prompts, {args.splits} seeded "
        f"random half splits (mean [2.5 %, 97.5 %] of the cosines between half-sample means):", "",
        "| comparison | cos |", "| --- | --- |",
        f"| within a seed, other prompts (noise) | {fmt(result['within'])} |",
        f"| across seeds, other prompts (noise + seed) | {fmt(result['across_other'])} |",
        f"| across seeds, same prompts (seed) | {fmt(result['across_same'])} |", "",
        f"Full-sample cos(v̄₀, v̄₁) = {result['full_sample_cos']:.3f}. Verdict: **{result['verdict']}**", ""])
    atomic_write_text(out / "seed_noise.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
