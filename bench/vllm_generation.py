"""Generation throughput: `--model steered-vllm` vs `--model steered` (HF) on the same prompts and settings.

24 prompts (the shipped G-Eval prompts, then eval-part harmful requests; bench/generation.py's set) in the
HH assistant format, greedy, stop at "\\n\\nHuman:", ``--max-gen-toks`` new tokens, the embedded base
(peft=none) steered by the shipped refusal v̄ at layer 20, α = −1, float32. Each backend generates the whole
set through lm-eval's ``generate_until``; the two alternate for ``--rounds`` rounds (contention hits both);
the engine/model load is timed apart. Reports generated tokens per second, the ratio, and how many answers
are identical. Run it in the vLLM venv (scripts/setup_vllm.sh):

    build/vllm-venv/bin/python bench/vllm_generation.py [--prompts 24] [--max-gen-toks 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import prompts  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-gen-toks", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from lm_eval.api.instance import Instance

    from dsteer_eval.harness import plugin

    plugin.register()
    from dsteer_eval.harness.steered import SteeredLM
    from dsteer_eval.harness.steered_vllm import SteeredVLLM

    gen = {"until": ["\n\nHuman:"], "max_gen_toks": args.max_gen_toks, "do_sample": False}
    requests = lambda: [Instance("generate_until", {}, (f"\n\nHuman: {p}\n\nAssistant:", dict(gen)), idx=0)  # noqa: E731
                        for p in prompts(args.prompts)]
    steering = {"pair": "refusal", "peft": "none", "layer": 20, "alpha": -1.0}
    t = time.perf_counter()
    hf = SteeredLM(**steering, batch_size=8)
    load_hf = time.perf_counter() - t
    t = time.perf_counter()
    engine = SteeredVLLM(**steering, gpu_memory_utilization=0.15, max_model_len=1024, batch_size="auto")
    load_vllm = time.perf_counter() - t
    times = {"steered": [], "steered-vllm": []}
    outputs = {}
    for _ in range(args.rounds):
        for name, lm in (("steered", hf), ("steered-vllm", engine)):
            t = time.perf_counter()
            outputs[name] = lm.generate_until(requests(), disable_tqdm=True)
            times[name].append(time.perf_counter() - t)
    tokens = {name: sum(len(hf.tokenizer.encode(o, add_special_tokens=False)) for o in outs)
              for name, outs in outputs.items()}
    speed = {name: tokens[name] / statistics.median(times[name]) for name in times}
    same = sum(a == b for a, b in zip(outputs["steered"], outputs["steered-vllm"]))
    report = {"prompts": args.prompts, "max_gen_toks": args.max_gen_toks, "rounds": args.rounds,
              "seconds": times, "generated_tokens": tokens, "tokens_per_s": speed,
              "ratio_vllm_over_hf": speed["steered-vllm"] / speed["steered"], "identical_answers": same,
              "load_seconds": {"steered": load_hf, "steered-vllm": load_vllm}}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
