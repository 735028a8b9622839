"""Overhead of `--model steered` over `--model hf`, same task and limit, embedded model.

Both models are built once; then lm-eval's own evaluator runs the task with
each of them in interleaved rounds (hf, steered alpha=0, steered alpha=1, ...),
so drift of the machine hits all three alike.  Reports the median wall time of
each and the median of the per-round ratios.  Goal: <= 1.03x.

    python bench/overhead.py [--task dsteer_hh_mini] [--limit 24] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(key, "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="dsteer_hh_mini")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "overhead.json"))
    args = ap.parse_args()

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from dsteer_eval.models.embedded import ensure_embedded
    from dsteer_eval.vectors import save_vectors

    torch.manual_seed(0)
    path = ensure_embedded()
    hf = HFLM(pretrained=str(path), device="cpu", batch_size=args.batch_size)
    vec = Path(tempfile.mkdtemp()) / "v.safetensors"
    # Overhead does not depend on the vector's content: a fixed random direction.
    save_vectors(vec, {args.layer: torch.randn(576)}, model=hf.model, method="random-bench")
    models = {
        "hf": hf,
        "steered_a0": get_model("steered")(pretrained="smollm2", vector=str(vec), layer=args.layer, alpha=0.0, batch_size=args.batch_size),
        "steered_a1": get_model("steered")(pretrained="smollm2", vector=str(vec), layer=args.layer, alpha=1.0, batch_size=args.batch_size),
    }
    tasks = TaskManager()  # index the task folders once, not in every timed run
    times: dict[str, list[float]] = {k: [] for k in models}
    for name, lm in models.items():  # warm-up: task building, caches
        simple_evaluate(model=lm, tasks=[args.task], limit=2, log_samples=False, task_manager=tasks)
    for r in range(args.rounds):
        for name, lm in models.items():
            start = time.perf_counter()
            simple_evaluate(model=lm, tasks=[args.task], limit=args.limit, log_samples=False, task_manager=tasks)
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    ratios = {
        k: statistics.median(t / h for t, h in zip(times[k], times["hf"])) for k in ("steered_a0", "steered_a1")
    }
    report = {
        "task": args.task, "limit": args.limit, "rounds": args.rounds, "batch_size": args.batch_size,
        "layer": args.layer, "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "median_ratio_vs_hf": ratios, "torch_threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
