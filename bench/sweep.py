"""One `dsteer-eval sweep` vs K separate `lm_eval --model steered-builtin` runs: same grid, same numbers.

The grid: K alphas at one layer (default 5 alphas, layer 20 of 30) of the
embedded SmolLM2 base model steered by the shipped vector, on an HH preference
task of 200 documents (the first 200 pairs of ../shared/data's HH harmless dev
set whose dialogues fit in 1500 characters; without that folder, the shipped 24
pairs repeated).  Both sides run as the user would run them, back to back:

* separate: K processes of lm-eval's own built-in steered adapter
  (`steer_path=` a .pt file with the vector at hookpoint ``layers.19``,
  coefficient alpha), each starting, loading the model and running the task;
* sweep: one `dsteer-eval sweep` process over the same alphas.

It checks that both give the same per-document log-likelihoods (max |Δ|,
from --log_samples) and reports the wall times, their ratio and the cost model
(startup + per-point evaluation times, read from the results files).

    python bench/sweep.py [--alphas -2,-1,0,1,2] [--layer 20] [--docs 200]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = ROOT.parent / "shared" / "data" / "hh_harmless_dev.jsonl.gz"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
           TOKENIZERS_PARALLELISM="false")


def hh_docs(n: int) -> tuple[list[dict], str]:
    if SHARED.is_file():
        rows = []
        with gzip.open(SHARED, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if len(row["chosen"]) <= 1500 and len(row["rejected"]) <= 1500:
                    rows.append({"chosen": row["chosen"], "rejected": row["rejected"]})
                if len(rows) == n:
                    return rows, f"{SHARED} (first {n} pairs of <= 1500 characters)"
    shipped = [json.loads(x) for x in (ROOT / "tasks/hh/hh_mini.jsonl").read_text().splitlines() if x.strip()]
    return (shipped * (n // len(shipped) + 1))[:n], "tasks/hh/hh_mini.jsonl repeated"


def write_task(folder: Path, docs: list[dict]) -> str:
    data = folder / "hh_bench.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "bench_hh.yaml").write_text(
        f"include: {ROOT / 'tasks/hh/_hh_template_yaml'}\n"
        "task: bench_hh\n"
        "dataset_path: json\n"
        "custom_dataset: !function dsteer_eval.metrics.samples.load_sample\n"
        f"dataset_kwargs:\n  sample: {data}\n  split: test\n"
    )
    return "bench_hh"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def loglikelihoods(folder: Path) -> tuple[dict, float]:
    """``{doc_id: [loglik of each choice]}`` from the samples file, and the evaluation time."""
    samples = next(folder.rglob("samples_*.jsonl"))
    results = json.loads(next(folder.rglob("results_*.json")).read_text())
    out = {}
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        out[row["doc_id"]] = [float(r[0][0]) for r in row["resps"]]
    return out, float(results["total_evaluation_time_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", default="-2,-1,0,1,2")
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench/results/sweep.json"))
    args = ap.parse_args()

    import torch

    from dsteer_eval.models.embedded import default_vector, ensure_embedded
    from dsteer_eval.vectors import load_vectors

    alphas = [float(a) for a in args.alphas.split(",")]
    model_dir = str(ensure_embedded("smollm2"))
    vector = default_vector("smollm2")
    v = load_vectors(vector).vector(args.layer)
    docs, source = hh_docs(args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        task = write_task(tmp, docs)
        common = ["--tasks", task, "--include_path", str(tmp), "--batch_size", str(args.batch_size), "--log_samples"]
        separate = []
        for i, alpha in enumerate(alphas):
            pt = tmp / f"builtin_{i}.pt"
            torch.save({f"layers.{args.layer - 1}": {"steering_vector": v, "steering_coefficient": alpha,
                                                     "action": "add"}}, pt)
            out = tmp / f"separate_{i}"
            wall = timed([str(BIN / "lm_eval"), "--model", "steered-builtin", "--model_args",
                          f"pretrained={model_dir},steer_path={pt}", *common, "--output_path", str(out)])
            separate.append((alpha, wall, out))
            print(f"separate run alpha={alpha:g}: {wall:.1f} s", flush=True)
        sweep_out = tmp / "sweep"
        sweep_wall = timed([str(BIN / "dsteer-eval"), "sweep", "--model-args",
                            f"pretrained={model_dir},peft=none,vector={vector}", "--layers", str(args.layer),
                            "--alphas", args.alphas, "--tasks", task, "--include-path", str(tmp),
                            "--batch-size", str(args.batch_size), "--log-samples", "--no-plots",
                            "--output", str(sweep_out)])
        print(f"sweep: {sweep_wall:.1f} s", flush=True)

        from dsteer_eval.sweep.grid import Point

        max_diff, points = 0.0, []
        for alpha, wall, out in separate:
            ref, ref_eval = loglikelihoods(out)
            point = Point(None if alpha == 0 else args.layer, alpha)
            got, got_eval = loglikelihoods(sweep_out / "points" / point.name)
            assert ref.keys() == got.keys(), "the two runs scored different documents"
            diff = max(abs(a - b) for d in ref for a, b in zip(ref[d], got[d]))
            max_diff = max(max_diff, diff)
            points.append({"alpha": alpha, "separate_wall_s": round(wall, 2), "separate_eval_s": round(ref_eval, 2),
                           "sweep_eval_s": round(got_eval, 2), "max_abs_loglik_diff": diff})

    total_separate = sum(wall for _, wall, _ in separate)
    first = next((p for p in points if p["alpha"] == 0), points[0])
    later = [p for p in points if p is not first]
    startup = [p["separate_wall_s"] - p["separate_eval_s"] for p in points]
    result = {
        "grid": {"alphas": alphas, "layer": args.layer, "docs": len(docs), "requests_per_point": 2 * len(docs),
                 "data": source, "batch_size": args.batch_size, "model": "smollm2 (base, peft=none)",
                 "torch_threads": torch.get_num_threads(),
                 # the sweep's defaults: each context once for both continuations, LM head on their span only
                 "sweep_pack_contexts": True, "sweep_head_positions": "continuation"},
        "separate_total_s": round(total_separate, 2),
        "sweep_total_s": round(sweep_wall, 2),
        "speedup": round(total_separate / sweep_wall, 2),
        "max_abs_loglik_diff": max_diff,
        "cost_model": {
            "separate": "K x (process start + model load + task build + full forward)",
            "sweep": "1 x (process start + model load) + per point (task build + forward above the layer; "
                     "the first point runs every layer) + leaderboard",
            "mean_startup_per_separate_run_s": round(sum(startup) / len(startup), 2),
            # the sweep runs alpha=0 first (every layer; it keeps the states below the layer), then the rest
            "sweep_eval_s_first_point": first["sweep_eval_s"],
            "sweep_eval_s_later_points_mean": round(sum(p["sweep_eval_s"] for p in later) / max(len(later), 1), 2),
            "separate_eval_s_mean": round(sum(p["separate_eval_s"] for p in points) / len(points), 2),
        },
        "points": points,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
