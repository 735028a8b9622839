"""Throughput of steered evaluation, side by side, on any device (bench/gpu.sh runs it on CUDA).

In one process, on one model, with the same requests:

* log-likelihood (HH-style requests: real HH rows when ../shared/data is present, else the shipped
  hh_mini rows, repeated): lm-eval's `--model hf`; lm-eval's built-in `steered` (`steer_path=` a .pt,
  hookpoint `layers.<L-1>`, α=1); this project's `steered` (α=1, continuation-only head); and a K-point
  α grid: K built-in `steered` models vs one dsteer-eval `SweepLM` re-pointed K times (shared lower
  layers + continuation head);
* generation (greedy, `--gen-tokens` new tokens): K separate `steered` points vs one α-batched group.

Models: `--model smollm2` (the embedded model) or `--shape llama2-7b|tiny` (random weights in
`--dtype`, no download: throughput does not depend on the weights; SmolLM2's tokenizer and
49152-token vocabulary).  Reports tokens/s of each run, the ratios, and the max |Δ loglik|
between the paths (they must agree).

    python bench/throughput.py --device cuda --shape llama2-7b --dtype bfloat16 --out bench/results/gpu_7b.json
    python bench/throughput.py --device cpu --shape tiny --docs 8 --gen-prompts 4   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4),
}


def random_model(shape: str, dtype: torch.dtype, folder: Path) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dsteer_eval.models.embedded import ensure_embedded

    tok = AutoTokenizer.from_pretrained(ensure_embedded("smollm2"))
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def hh_pairs(n: int) -> list[tuple[str, str]]:
    sys.path.insert(0, str(ROOT / "bench"))
    from sweep import hh_docs

    docs, _ = hh_docs(n)
    out = []
    for d in docs:
        cut = d["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        out += [(d["chosen"][:cut], d["chosen"][cut:]), (d["chosen"][:cut], d["rejected"][cut:])]
    return out


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--model", default=None, help="smollm2 (the embedded model)")
    group.add_argument("--shape", choices=sorted(SHAPES), default=None, help="random weights of this shape")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--layer", type=int, default=None, help="steered layer (default: 2/3 of the depth)")
    ap.add_argument("--alphas", default="-2,-1,0,1,2")
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--gen-prompts", type=int, default=24)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from lm_eval.api.instance import Instance
    from lm_eval.models.hf_steered import SteeredModel
    from lm_eval.models.huggingface import HFLM

    from dsteer_eval.adapters.steered import SteeredLM
    from dsteer_eval.sweep.sweep_lm import SweepLM
    from dsteer_eval.vectors import save_vectors

    dtype = getattr(torch, args.dtype)
    alphas = [float(a) for a in args.alphas.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.shape:
            path, label = random_model(args.shape, dtype, tmp / "model"), f"random {args.shape} ({args.dtype})"
        else:
            from dsteer_eval.models.embedded import ensure_embedded

            path, label = str(ensure_embedded(args.model or "smollm2")), f"{args.model or 'smollm2'} ({args.dtype})"
        common = dict(pretrained=path, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        hf = HFLM(**common)
        n_layers, d = hf.model.config.num_hidden_layers, hf.model.config.hidden_size
        layer = args.layer or round(2 * n_layers / 3)
        g = torch.Generator().manual_seed(0)
        v = torch.randn(d, generator=g) * 0.1
        vec = tmp / "v.safetensors"
        save_vectors(vec, {layer: v}, model=hf.model, model_id=label, method="bench-random")

        def builtin_pt(alpha):
            pt = tmp / f"builtin_{alpha}.pt"
            torch.save({f"layers.{layer - 1}": {"steering_vector": v, "steering_coefficient": alpha, "action": "add"}}, pt)
            return str(pt)

        pairs = hh_pairs(args.docs // 2 + args.docs % 2)[: args.docs * 2]
        reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
        tokens = sum(len(hf.tok_encode(c + x)) for c, x in pairs)
        runs, results = {}, {}

        def record(name, fn, n_tokens=tokens):
            out, secs = timed(fn)
            runs[name] = {"seconds": round(secs, 3), "tokens_per_s": round(n_tokens / secs, 1)}
            print(f"{name}: {secs:.2f} s, {n_tokens / secs:.0f} tok/s", flush=True)
            return out

        results["hf"] = record("hf", lambda: hf.loglikelihood(reqs))
        del hf
        builtin = SteeredModel(steer_path=builtin_pt(1.0), **common)
        results["builtin"] = record("builtin_steered", lambda: builtin.loglikelihood(reqs))
        del builtin
        ours = SteeredLM(vector=str(vec), layer=layer, alpha=1.0, **common)
        results["ours"] = record("steered", lambda: ours.loglikelihood(reqs))
        del ours
        # K-point grid: K built-in models (load excluded) vs one sweep model re-pointed
        grid_builtin, grid_ours = {}, {}
        builtin_secs = 0.0
        for a in alphas:
            m = SteeredModel(steer_path=builtin_pt(a), **common)
            grid_builtin[a], secs = timed(lambda: m.loglikelihood(reqs))
            builtin_secs += secs
            del m
        runs["grid_builtin"] = {"seconds": round(builtin_secs, 3),
                                "tokens_per_s": round(len(alphas) * tokens / builtin_secs, 1)}
        sweep = SweepLM(vector=str(vec), layer=layer, alpha=0.0, **common)

        def sweep_grid():
            out = {}
            for a in sorted(alphas, key=lambda x: x != 0):  # α=0 first, as the sweep runs it
                sweep.set_point(layer, a)
                out[a] = sweep.loglikelihood(reqs)
            return out

        grid_ours = record("grid_sweep", sweep_grid, len(alphas) * tokens)
        # generation: K separate points vs one α-batched group
        prompts = [c for c, _ in pairs[::2]][: args.gen_prompts]
        gen = [Instance("generate_until", {}, (p, {"until": ["\n\nHuman:"], "max_gen_toks": args.gen_tokens,
                                                   "do_sample": False}), i) for i, p in enumerate(prompts)]
        group = [("unsteered" if a == 0 else f"a{a:g}", layer, a, None) for a in sorted(alphas, key=lambda x: x != 0)]

        def generate(batched: bool):
            out = {}
            for i, (name, lay, a, c) in enumerate(group):
                sweep.set_point(lay, a)
                sweep.set_group(group[i:] if batched else [], name)
                out[name] = sweep.generate_until(gen)
            return out

        gen_tokens = len(prompts) * args.gen_tokens * len(alphas)
        separate_text = record("generation_separate", lambda: generate(False), gen_tokens)
        batched_text = record("generation_batched", lambda: generate(True), gen_tokens)

    def diff(a, b):
        return max(abs(x[0] - y[0]) for x, y in zip(a, b))

    report = {
        "model": label, "device": args.device, "torch": torch.__version__, "layer": layer, "alphas": alphas,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "loglikelihood_requests": len(reqs), "tokens": tokens, "batch_size": args.batch_size, "runs": runs,
        "ratios": {
            "steered_over_hf": round(runs["steered"]["seconds"] / runs["hf"]["seconds"], 3),
            "builtin_over_hf": round(runs["builtin_steered"]["seconds"] / runs["hf"]["seconds"], 3),
            "grid_speedup_sweep_vs_builtin": round(runs["grid_builtin"]["seconds"] / runs["grid_sweep"]["seconds"], 3),
            "generation_speedup_batched_vs_separate": round(
                runs["generation_separate"]["seconds"] / runs["generation_batched"]["seconds"], 3),
        },
        "agreement": {
            "max_abs_loglik_steered_vs_builtin": diff(results["ours"], results["builtin"]),
            "max_abs_loglik_grid_sweep_vs_builtin": max(diff(grid_ours[a], grid_builtin[a]) for a in alphas),
            "identical_generations": sum(separate_text[k] == batched_text[k] for k in separate_text),
            "generation_points": len(separate_text),
        },
    }
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
