"""One steered run vs plain `--model hf` on the same log-likelihood task (the continuation-only head).

Four `lm_eval` processes on the HH preference task of bench/sweep.py (200 real HH pairs, 400
log-likelihood requests, two continuations per context), embedded SmolLM2 base (peft=none):

* `--model hf`                                  lm-eval's plain model: head + log-softmax at every position;
* `--model steered ... alpha=1,pack_contexts=true`  this project's adapter, shipped v̄ at layer 20: each
                                                context once for both continuations (packed contexts; the
                                                sweep's default), the LM head and log-softmax only on the
                                                continuation span;
* `... alpha=1` (pack_contexts=false, the default of a single steered run): one row per request, the
                                                continuation head alone;
* `... alpha=1,pack_contexts=false,head_positions=all`  the same steering through lm-eval's full-head loop.

Reports wall and evaluation times, the ratios steered/hf (goal <= 0.9), packed/unpacked and
continuation/all-positions, and max |Δ loglik| between the steered runs (the continuation head alone:
<= 1e-5; packed: the run-time check's rule, <= 1e-4 x max(1, |loglik|)).

    python bench/head.py [--docs 200] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import BIN, ROOT, hh_docs, loglikelihoods, timed, write_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench/results/head.json"))
    args = ap.parse_args()

    import torch

    from dsteer_eval.models.embedded import default_vector, ensure_embedded

    model_dir, vector = str(ensure_embedded("smollm2")), default_vector("smollm2")
    docs, source = hh_docs(args.docs)
    steer = f"pretrained={model_dir},peft=none,vector={vector},layer={args.layer},alpha=1"
    runs = {"hf": ("hf", f"pretrained={model_dir}"), "steered": ("steered", steer + ",pack_contexts=true"),
            "steered_unpacked": ("steered", steer + ",pack_contexts=false"),
            "steered_all_positions": ("steered", steer + ",pack_contexts=false,head_positions=all")}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        task = write_task(tmp, docs)
        for name, (model, model_args) in runs.items():
            folder = tmp / name
            wall = timed([str(BIN / "lm_eval"), "--model", model, "--model_args", model_args, "--tasks", task,
                          "--include_path", str(tmp), "--batch_size", str(args.batch_size), "--log_samples",
                          "--output_path", str(folder)])
            lls, eval_s = loglikelihoods(folder)
            out[name] = {"wall_s": round(wall, 2), "eval_s": round(eval_s, 2), "lls": lls}
            print(f"{name}: wall {wall:.1f} s, evaluation {eval_s:.1f} s", flush=True)
    def max_diff(a, b, relative=False):
        a, b = out[a]["lls"], out[b]["lls"]
        return max(abs(x - y) / (max(1.0, abs(y)) if relative else 1.0) for d in a for x, y in zip(a[d], b[d]))

    diff = max_diff("steered_unpacked", "steered_all_positions")
    packed_diff = max_diff("steered", "steered_unpacked")
    packed_rel = max_diff("steered", "steered_unpacked", relative=True)
    result = {
        "task": {"docs": len(docs), "requests": 2 * len(docs), "data": source, "batch_size": args.batch_size,
                 "model": "smollm2 base (peft=none); steered: shipped v-bar at layer 20, alpha=1",
                 "torch_threads": torch.get_num_threads()},
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "lls"} for k, v in out.items()},
        "steered_over_hf_eval": round(out["steered"]["eval_s"] / out["hf"]["eval_s"], 3),
        "steered_over_hf_wall": round(out["steered"]["wall_s"] / out["hf"]["wall_s"], 3),
        "unpacked_steered_over_hf_eval": round(out["steered_unpacked"]["eval_s"] / out["hf"]["eval_s"], 3),
        "packed_over_unpacked_eval": round(out["steered"]["eval_s"] / out["steered_unpacked"]["eval_s"], 3),
        "continuation_over_all_positions_eval": round(out["steered_unpacked"]["eval_s"]
                                                      / out["steered_all_positions"]["eval_s"], 3),
        "max_abs_loglik_diff_continuation_vs_all": diff,
        "max_abs_loglik_diff_packed_vs_unpacked": packed_diff,
        "max_rel_loglik_diff_packed_vs_unpacked": packed_rel,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if diff > 1e-5:
        sys.exit(f"continuation-only head differs from the full-head loop by {diff:.3g} (> 1e-5)")
    if packed_rel > 1e-4:  # the run-time check's rule (adapters/packed_contexts.py): 1e-4 x max(1, |loglik|)
        sys.exit(f"packed contexts differ from one row per request by {packed_rel:.3g} x |loglik| (> 1e-4)")


if __name__ == "__main__":
    main()
