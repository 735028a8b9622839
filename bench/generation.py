"""Generation across an alpha grid: one `dsteer-eval sweep` vs K separate `lm_eval --model steered` runs.

The task: G-Eval's answer generation (HH assistant format, stop at "\\n\\nHuman:", greedy, 64 new
tokens) on 24 prompts -- the shipped G-Eval prompts, then harmful requests of the refusal task's
eval part -- scored by nothing (lm-eval's ``bypass`` metric: the judge would dominate the time and
is not what is measured).  Model: the embedded SmolLM2 base (peft=none) steered by the shipped v̄
at layer 20, K alphas.

* separate: K processes of `lm_eval --model steered` (this project's adapter), one per alpha;
* sweep: one `dsteer-eval sweep` over the same alphas, which generates all K points of a prompt
  batch in one `generate` call (rows = prompts x alphas).

Checks that the generated texts are identical and reports wall times and the ratio.

    python bench/generation.py [--alphas -2,-1,0,1,2] [--prompts 24] [--max-gen-toks 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import BIN, ROOT, timed  # noqa: E402


def prompts(n: int) -> list[str]:
    out = [json.loads(x)["prompt"] for x in (ROOT / "tasks/geval/geval_mini.jsonl").read_text().splitlines() if x.strip()]
    for line in (ROOT / "tasks/refusal/refusal_eval.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "harmful" and len(out) < n:
            text = row["prompt"].rsplit("\n\nHuman:", 1)[-1].rsplit("\n\nAssistant:", 1)[0].strip()
            if text and len(text) < 300:
                out.append(text)
    return out[:n]


def write_task(folder: Path, items: list[str], max_gen_toks: int) -> str:
    data = folder / "gen_bench.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in items))
    (folder / "bench_gen.yaml").write_text(
        "task: bench_gen\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_text: \"\\n\\nHuman: {{prompt}}\\n\\nAssistant:\"\n"
        "doc_to_target: \"\"\n"
        "generation_kwargs:\n  until:\n    - \"\\n\\nHuman:\"\n  do_sample: false\n"
        f"  max_gen_toks: {max_gen_toks}\n"
        "metric_list:\n  - metric: bypass\n"
        "metadata:\n  version: 1.0\n"
    )
    return "bench_gen"


def texts(folder: Path) -> dict:
    samples = next(folder.rglob("samples_*.jsonl"))
    return {row["doc_id"]: row["resps"][0][0] for row in map(json.loads, samples.read_text().splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", default="-2,-1,0,1,2")
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-gen-toks", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench/results/generation.json"))
    args = ap.parse_args()

    import torch

    from dsteer_eval.models.embedded import default_vector, ensure_embedded
    from dsteer_eval.sweep.grid import Point

    alphas = [float(a) for a in args.alphas.split(",")]
    model_dir, vector = str(ensure_embedded("smollm2")), default_vector("smollm2")
    items = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        task = write_task(tmp, items, args.max_gen_toks)
        common = ["--tasks", task, "--include_path", str(tmp), "--batch_size", str(args.batch_size), "--log_samples"]
        separate = []
        for i, alpha in enumerate(alphas):
            out = tmp / f"separate_{i}"
            wall = timed([str(BIN / "lm_eval"), "--model", "steered", "--model_args",
                          f"pretrained={model_dir},peft=none,vector={vector},layer={args.layer},alpha={alpha}",
                          *common, "--output_path", str(out)])
            separate.append((alpha, wall, texts(out)))
            print(f"separate run alpha={alpha:g}: {wall:.1f} s", flush=True)
        sweep_out = tmp / "sweep"
        start = time.perf_counter()
        sweep_wall = timed([str(BIN / "dsteer-eval"), "sweep", "--model-args",
                            f"pretrained={model_dir},peft=none,vector={vector}", "--layers", str(args.layer),
                            "--alphas", args.alphas, "--tasks", task, "--include-path", str(tmp),
                            "--batch-size", str(args.batch_size), "--log-samples", "--no-plots",
                            "--output", str(sweep_out)])
        print(f"sweep: {sweep_wall:.1f} s ({time.perf_counter() - start:.1f})", flush=True)
        identical, differing = 0, []
        for alpha, _, ref in separate:
            got = texts(sweep_out / "points" / Point(None if alpha == 0 else args.layer, alpha).name)
            assert ref.keys() == got.keys(), "the two runs generated for different documents"
            for d in ref:
                if ref[d] == got[d]:
                    identical += 1
                else:
                    differing.append({"alpha": alpha, "doc_id": d, "separate": ref[d], "sweep": got[d]})
    total = sum(w for _, w, _ in separate)
    result = {
        "grid": {"alphas": alphas, "layer": args.layer, "prompts": len(items), "max_gen_toks": args.max_gen_toks,
                 "batch_size": args.batch_size, "model": "smollm2 (base, peft=none) + shipped v-bar",
                 "torch_threads": torch.get_num_threads()},
        "separate_total_s": round(total, 2),
        "sweep_total_s": round(sweep_wall, 2),
        "speedup": round(total / sweep_wall, 2),
        "identical_answers": identical,
        "answers": identical + len(differing),
        "differing": differing[:5],
        "cost_model": "separate: K x (start + load + prefill + 64 decode steps at batch 8); sweep: 1 x (start + "
                      "load) + prefill of 8K rows + 64 decode steps at batch 8K. A decode step at batch 8K costs "
                      "little more than at batch 8 while the weights, not the rows, dominate memory traffic.",
        "separate": [{"alpha": a, "wall_s": round(w, 2)} for a, w, _ in separate],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if differing:
        sys.exit(f"{len(differing)} answers differ between the sweep and the separate runs")


if __name__ == "__main__":
    main()
