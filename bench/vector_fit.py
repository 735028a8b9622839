"""Fitting a steering vector: one distillation step with the lower layers kept (dsteer_eval.dpo.vector_fit's way:
the teacher's final states and the student's state at the site computed once, each step runs only the layers above
the site) vs the obvious way (a full teacher pass and a full student pass every step), the same batches, the same
vector, alternating rounds. Embedded SmolLM2-135M + the shipped refusal adapter, site 20 of 30, the vector part.

    python bench/vector_fit.py --pairs 16 --steps 4 --out bench/results/vector_fit.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsteer_eval.data.preference_pairs import load_pairs  # noqa: E402
from dsteer_eval.dpo.model_pair import ModelPair  # noqa: E402
from dsteer_eval.dpo.vector_fit import Steerer, collate, encode_pairs, frozen, kl_per_text, target_logprobs  # noqa: E402
from dsteer_eval.models.embedded import default_adapter  # noqa: E402
from dsteer_eval.steering.sites import resolve_parts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="steps per way per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--site", type=int, default=20)
    ap.add_argument("--data", default=str(ROOT / "build" / "refusal" / "refusal_pairs.jsonl.gz"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pair = ModelPair.load(None, adapter=str(default_adapter(pair="refusal")), device="cpu")
    tok = pair.tokenizer
    rows = list(load_pairs(args.data, part="vector"))[:args.pairs]
    texts = [t for two in encode_pairs(tok, rows, max_prompt=64, max_completion=32) for t in two]
    batches = [collate(texts[i:i + 8], tok.pad_token_id) for i in range(0, len(texts), 8)]
    v = torch.randn(576, generator=torch.Generator().manual_seed(0)) * 2.0

    def obvious(step: int) -> float:
        b = batches[step % len(batches)]
        w = v.clone().requires_grad_(True)
        with torch.no_grad(), pair.side("dpo") as m:
            target = target_logprobs(m, b)
        with pair.side("base") as m, frozen(m):
            got = target_logprobs(m, b, site=args.site, vector=w)
        loss = kl_per_text(target, got, b).mean()
        loss.backward()
        return float(loss.detach())

    with torch.no_grad(), pair.side("dpo") as m:  # the kept teacher states (what fit_distilled computes once)
        parts = resolve_parts(m)
        kept = [parts.decoder(input_ids=b.input_ids, attention_mask=b.attention_mask)[0][b.target] for b in batches]
    steer_at = Steerer(args.site)

    def kept_way(step: int) -> float:
        which = step % len(batches)
        b, w = batches[which], v.clone().requires_grad_(True)
        with torch.no_grad():
            target = F.log_softmax(parts.lm_head(kept[which]).float(), dim=-1)
        with pair.side("base") as m, frozen(m):
            got = steer_at(m, b, w, which)
        loss = kl_per_text(target, got, b).mean()
        loss.backward()
        return float(loss.detach())

    for step in range(len(batches)):  # warm the student's kept states (once per batch in a real fit)
        kept_way(step)
    times = {"obvious": [], "kept": []}
    losses = {"obvious": [], "kept": []}
    for _ in range(args.rounds):
        for name, fn in (("obvious", obvious), ("kept", kept_way)):
            started = time.perf_counter()
            losses[name] = [fn(s) for s in range(args.steps)]
            times[name].append((time.perf_counter() - started) / args.steps)
    per_step = {k: sorted(t)[len(t) // 2] for k, t in times.items()}
    result = {"site": args.site, "pairs": args.pairs, "texts_per_batch": 8, "steps": args.steps, "rounds": args.rounds,
              "seconds_per_step": per_step, "speedup": per_step["obvious"] / per_step["kept"],
              "max_loss_difference": max(abs(a - b) for a, b in zip(losses["obvious"], losses["kept"])),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
