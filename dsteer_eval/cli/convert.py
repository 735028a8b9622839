"""``dsteer-eval convert``: convert a vector file between formats.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse


def add(verbs) -> None:
    p = verbs.add_parser(
        "convert",
        help="convert a steering-vector file between dsteer-eval safetensors, llama.cpp GGUF and lm-eval .pt",
        description="Convert a vector file between formats: dsteer-eval .safetensors, llama.cpp/repeng "
        "control-vector .gguf (direction.<k> = output of block k = our site k+1), lm-eval's built-in "
        "steer_path .pt dict, and the D-STEER authors' {layer: tensor} .pt (read and written with --to "
        "dsteer-authors-pt). The input format is detected from the file's content.",
    )
    p.add_argument("input", metavar="IN", help="vector file to read (any supported format)")
    p.add_argument("output", metavar="OUT", help="file to write; format from its suffix or --to")
    p.add_argument("--to", choices=["safetensors", "gguf", "lm-eval-pt", "dsteer-authors-pt"], default=None,
                   help="output format (default: from OUT's suffix; .pt means lm-eval-pt)")
    p.add_argument("--model", default=None,
                   help="hub id, path or 'smollm2': checks the vectors fit it and names lm-eval hookpoints "
                   "after its modules (only its config is read)")
    p.add_argument("--num-layers", type=int, default=None,
                   help="the model's decoder-layer count, when neither the file nor --model gives it")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="lm-eval .pt only: the steering_coefficient written (default 1)")
    p.add_argument("--layers", default=None,
                   help="convert only these sites (ours): 20, 10;20, ranges 2-29, negative from the end, mixed "
                   "2-5;10;-1 (default: every site the target can hold; the others are listed with the reason)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsteer_eval.common.provenance import command_line
    from dsteer_eval.vectors.convert import convert

    model = _model_skeleton(args.model) if args.model else None
    done = convert(args.input, args.output, to=args.to, model=model, num_layers=args.num_layers,
                   alpha=args.alpha, layers=args.layers or None, force=args.force,
                   command=command_line(args._argv))
    print(f"{done.source} ({done.source_format}) -> {done.out} ({done.out_format}): sites "
          f"{', '.join(map(str, done.sites))}")
    if done.left_out:
        print(f"left out {len(done.left_out)} site(s) that {done.out_format} cannot hold:")
        for site, why in sorted(done.left_out.items()):
            print(f"  site {site}: {why}")
    return 0


def _model_skeleton(pretrained: str):
    """The model's architecture on the meta device (config only, no weights): names, sizes, fingerprint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from dsteer_eval.models.embedded import resolve_pretrained

    config = AutoConfig.from_pretrained(resolve_pretrained(pretrained))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
