"""The sweep's DPO side with its LoRA merged once vs the unmerged PEFT adapter (same requests).

The embedded SmolLM2 with the shipped refusal LoRA (rank 16, all linear layers), the first N
documents of the shipped refusal eval rows (2 log-likelihood requests each: the refusal and the
compliant reply), DPO side at α = 0, batch size 2 (the main job's), shared lower layers off so every
pass is a full forward. The two sides alternate for `--reps` rounds; reported: seconds per round,
the ratio unmerged / merged, and max |Δ loglik| between them.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/merged_adapter.py [--docs 60] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=60)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/merged_adapter.json"))
    args = ap.parse_args()

    from lm_eval.api.instance import Instance

    from dsteer_eval.sweep.sweep_lm import SweepLM

    art = ROOT / "dsteer_eval/artifacts/smollm2/refusal"
    rows = [json.loads(line) for line in open(ROOT / "tasks/refusal/refusal_eval.jsonl")][: args.docs]
    texts = [(r["prompt"], reply) for r in rows for reply in (r["chosen"], r["rejected"])]
    requests = [Instance("loglikelihood", {}, t, i) for i, t in enumerate(texts)]
    lms = {merge: SweepLM(pretrained="smollm2", peft=str(art / "adapter"), vector=str(art / "vector.safetensors"),
                          layer=20, alpha=0.0, batch_size=2, merge_adapter=merge, shared_prefix=False)
           for merge in (True, False)}
    assert lms[True]._merged is not None and lms[False]._merged is None
    seconds, answers = {True: [], False: []}, {}
    for _ in range(args.reps):
        for merge, lm in lms.items():
            lm.set_point(20, 0.0, "dpo")
            start = time.perf_counter()
            answers[merge] = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
            seconds[merge].append(round(time.perf_counter() - start, 2))
    result = {
        "requests": len(requests), "reps": args.reps, "merged_s": seconds[True], "unmerged_s": seconds[False],
        "ratio_unmerged_over_merged": round(sum(seconds[False]) / sum(seconds[True]), 3),
        "max_abs_diff_loglik": max(abs(a - b) for a, b in zip(answers[True], answers[False])),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
