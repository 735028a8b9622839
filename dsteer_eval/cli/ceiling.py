"""``dsteer-eval ceiling``: the vector's strength ceiling per side.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse

from dsteer_eval.cli.shared import default_pairs


def add(verbs) -> None:
    p = verbs.add_parser(
        "ceiling",
        help="the largest |alpha| per side before generations degenerate (judge-free), for relative alpha grids",
        description="Generate greedily on the probe prompts at |alpha| = start, 2*start, ... for each sign and keep the "
        "largest strength at which at most --max-degenerate of the outputs are degenerate (empty, garbled, loops) and "
        "their perplexity under the unsteered model stays within --max-perplexity-ratio of its own outputs'. "
        "Writes ceiling.json for `dsteer-eval sweep --alphas rel:... --ceiling`.",
    )
    p.add_argument("--model-args", default="", help="as for sweep (no alpha=); default: the shipped pair")
    p.add_argument("--layer", default=None, help="layer (default: layer= of --model-args, else the vector's default)")
    p.add_argument("--data", default=None, help="preference pairs whose prompts are used (default: shipped hh_mini)")
    p.add_argument("--prompts", type=int, default=16, help="how many prompts (default 16)")
    p.add_argument("--start", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-degenerate", type=float, default=0.1)
    p.add_argument("--max-perplexity-ratio", type=float, default=3.0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="the ceiling.json to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from dsteer_eval.sweep.ceiling import ceiling_for
    from dsteer_eval.dpo.extract import unique_prompts
    from dsteer_eval.common.output_folder import atomic_write_text, check_writable
    from dsteer_eval.data.preference_pairs import load_pairs
    from dsteer_eval.sweep.runner import split_model_args

    if args.prompts < 1:
        raise ValueError("--prompts must be >= 1")
    check_writable(args.out, "--out")
    _, kwargs, layer = split_model_args(args.model_args)
    prompts = unique_prompts(load_pairs(args.data or default_pairs()))[: args.prompts]
    result = ceiling_for(kwargs, args.layer or layer, prompts, device=args.device, start=args.start, steps=args.steps,
                         max_new_tokens=args.max_new_tokens, max_degenerate=args.max_degenerate,
                         max_perplexity_ratio=args.max_perplexity_ratio)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"ceiling at layer {result['layer']}: alpha >= -{result['negative']['ceiling']:g} and <= "
          f"{result['positive']['ceiling']:g} (|v| = {result['vector_norm']:.4g}) -> {args.out}")
    return 0
