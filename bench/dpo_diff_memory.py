"""Peak memory of `dpo-diff`: base + adapter toggled on ONE model vs two full checkpoints.

Each variant runs in its own fresh Python process (peak RSS = ru_maxrss of that
process) on the embedded SmolLM2-135M and the shipped DPO adapter, over the same
prompts:

  one_model        load the base model alone and take its states (the floor)
  adapter_toggle   ModelPair(base, adapter=...)  -> dpo_diff   (what extract does with --peft)
  two_checkpoints  ModelPair(base, dpo=merged)   -> dpo_diff   (the adapter merged and saved first)

Reports MiB and ratios to one_model, and that both dpo-diff variants give the same v̄.

    python bench/dpo_diff_memory.py [--prompts 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(key, "1")

CHILD = r"""
import json, resource, sys, time, torch
from dsteer_eval.models.embedded import ensure_embedded, default_adapter
from dsteer_eval.dpo.extract import dpo_diff, last_token_states, unique_prompts
from dsteer_eval.adapters.plugin import tasks_dir
from dsteer_eval.data.preference_pairs import load_pairs
variant, n, merged, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
pairs = load_pairs(f"{tasks_dir()}/hh/hh_mini.jsonl")
prompts = (unique_prompts(pairs) * 100)[:n]
t = time.perf_counter()
if variant == "one_model":
    from dsteer_eval.models.loading import load_model
    model, tok, _ = load_model("smollm2", device="cpu")
    last_token_states(model, tok, prompts)
    v = None
else:
    from dsteer_eval.dpo.model_pair import ModelPair
    side = {"adapter": str(default_adapter())} if variant == "adapter_toggle" else {"dpo": merged}
    pair = ModelPair.load("smollm2", device="cpu", **side)
    v = dpo_diff(pair, prompts)
    torch.save({k: x for k, x in v.items()}, out)
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "dpo_diff_memory.json"))
    args = ap.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsteer_eval.models.embedded import default_adapter, ensure_embedded

    adapter = default_adapter()
    if adapter is None:
        sys.exit("no shipped DPO adapter: run `dsteer-eval train-dpo` first (see docs/pipeline.md)")
    work = Path(tempfile.mkdtemp())
    merged = work / "merged"
    base = ensure_embedded()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    model.merge_and_unload().save_pretrained(merged, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(merged)
    del model

    results = {}
    for variant in ("one_model", "adapter_toggle", "two_checkpoints"):
        proc = subprocess.run([sys.executable, "-c", CHILD, variant, str(args.prompts), str(merged),
                               str(work / f"{variant}.pt")], capture_output=True, text=True, check=True)
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(variant, results[variant], flush=True)
    a = torch.load(work / "adapter_toggle.pt")
    b = torch.load(work / "two_checkpoints.pt")
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    floor = results["one_model"]["peak_rss_mib"]
    report = {
        "what": "peak RSS (MiB) of one process doing dpo-diff over the same prompts; embedded SmolLM2-135M fp32",
        "prompts": args.prompts,
        "peak_rss_mib": {k: round(v["peak_rss_mib"]) for k, v in results.items()},
        "seconds": {k: round(v["seconds"], 1) for k, v in results.items()},
        "adapter_toggle_over_one_model": round(results["adapter_toggle"]["peak_rss_mib"] / floor, 2),
        "two_checkpoints_over_one_model": round(results["two_checkpoints"]["peak_rss_mib"] / floor, 2),
        "max_abs_difference_of_vbar": max_diff,
        "command": f"python bench/dpo_diff_memory.py --prompts {args.prompts}",
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
