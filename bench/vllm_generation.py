"""Generation throughput: `--model steered-vllm` vs `--model steered` (HF) and vs plain `--model vllm`.

Three ratios from one run, on the same prompts and settings:

* ``steered-vllm`` vs ``steered`` (HF): the point of the backend;
* ``steered-vllm`` vs plain, unsteered ``vllm`` on the same weights: the steering's own cost (EasySteer's
  anchor on a GPU: 29.6k vs 33.2k tokens/s, i.e. at most 11 % slower);
* an α grid of ``--grid`` settings through one engine: one pass with each request carrying its own setting
  (``set_slots``) vs one pass per setting (``set_steering`` in turn), with identical answers required.

24 prompts (the shipped G-Eval prompts, then eval-part harmful requests; bench/generation.py's set) in the
HH assistant format, greedy, stop at "\\n\\nHuman:", ``--max-gen-toks`` new tokens, the embedded base
(peft=none) steered by the shipped refusal v̄ at layer 20, α = −1, float32. Each backend generates the whole
set through lm-eval's ``generate_until``; the two alternate for ``--rounds`` rounds (contention hits both);
the engine/model load is timed apart. Reports generated tokens per second, the ratio, and how many answers
are identical. Run it in the vLLM venv (scripts/setup_vllm.sh):

    build/vllm-venv/bin/python bench/vllm_generation.py [--prompts 24] [--max-gen-toks 64] [--rounds 2]

On a GPU (bench/gpu.sh runs it when vLLM is installed): ``--dtype bfloat16 --gpu-memory-utilization 0.85
--prompts 512 --max-gen-toks 256``; ``--no-hf`` skips the HF backend.
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


def _speed(lm, requests, rounds, times, outputs, name):
    for _ in range(rounds):
        t = time.perf_counter()
        outputs[name] = lm.generate_until(requests(), disable_tqdm=True)
        times.setdefault(name, []).append(time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-gen-toks", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--grid", default="-1,-0.5,0.5,1", help="alphas of the per-request grid comparison")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.15)
    parser.add_argument("--no-hf", action="store_true", help="skip --model steered (HF)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from lm_eval.api.instance import Instance
    from lm_eval.models.vllm_causallms import VLLM

    from dsteer_eval.adapters import plugin

    plugin.register()
    from dsteer_eval.adapters.steered import SteeredLM
    from dsteer_eval.adapters.steered_vllm import SteeredVLLM

    gen = {"until": ["\n\nHuman:"], "max_gen_toks": args.max_gen_toks, "do_sample": False}
    requests = lambda: [Instance("generate_until", {}, (f"\n\nHuman: {p}\n\nAssistant:", dict(gen)), idx=0)  # noqa: E731
                        for p in prompts(args.prompts)]
    steering = {"pair": "refusal", "peft": "none", "layer": 20, "alpha": -1.0}
    engine_args = {"gpu_memory_utilization": args.gpu_memory_utilization, "max_model_len": 1024,
                   "batch_size": "auto", "dtype": args.dtype}
    loads, times, outputs = {}, {}, {}
    t = time.perf_counter()
    engine = SteeredVLLM(**steering, **engine_args)
    loads["steered-vllm"] = time.perf_counter() - t
    t = time.perf_counter()
    plain = VLLM(pretrained=engine.model_args["model"], enforce_eager=True, **engine_args)
    loads["vllm"] = time.perf_counter() - t
    lms = [("steered-vllm", engine), ("vllm", plain)]
    if not args.no_hf:
        t = time.perf_counter()
        lms.append(("steered", SteeredLM(**steering, batch_size=8, dtype=args.dtype)))
        loads["steered"] = time.perf_counter() - t
    for _ in range(args.rounds):  # alternating: contention hits every backend alike
        for name, lm in lms:
            _speed(lm, requests, 1, times, outputs, name)

    # the alpha grid: one pass per setting vs one pass with each request carrying its setting
    grid = [float(a) for a in args.grid.split(",")]
    settings = [engine.interventions_at(20, a) for a in grid]
    for _ in range(args.rounds):
        t = time.perf_counter()
        one_by_one = []
        for setting in settings:
            engine.set_steering(setting)
            one_by_one.append(engine.generate_until(requests(), disable_tqdm=True))
        times.setdefault("grid one pass per setting", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.set_slots(settings, 0)
        together = []
        for slot in range(len(settings)):
            engine.select_slot(slot)
            together.append(engine.generate_until(requests(), disable_tqdm=True))
        times.setdefault("grid one pass, per-request settings", []).append(time.perf_counter() - t)
    count = lambda outs: sum(len(plain.tokenizer.encode(o, add_special_tokens=False)) for o in outs)  # noqa: E731
    tokens = {name: count(outs) for name, outs in outputs.items()}
    tokens["grid one pass per setting"] = tokens["grid one pass, per-request settings"] = \
        sum(count(o) for o in one_by_one)
    speed = {name: tokens[name] / statistics.median(times[name]) for name in times}
    report = {"prompts": args.prompts, "max_gen_toks": args.max_gen_toks, "rounds": args.rounds,
              "dtype": args.dtype, "grid": grid, "seconds": times, "generated_tokens": tokens, "tokens_per_s": speed,
              "ratio_steered_vllm_over_plain_vllm": speed["steered-vllm"] / speed["vllm"],
              "ratio_grid_per_request_over_one_pass_each":
                  speed["grid one pass, per-request settings"] / speed["grid one pass per setting"],
              "grid_identical_answers": sum(a == b for x, y in zip(one_by_one, together) for a, b in zip(x, y)),
              "grid_answers": len(grid) * args.prompts, "load_seconds": loads}
    if not args.no_hf:
        report["ratio_vllm_over_hf"] = speed["steered-vllm"] / speed["steered"]
        report["identical_answers"] = sum(a == b for a, b in zip(outputs["steered"], outputs["steered-vllm"]))
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
