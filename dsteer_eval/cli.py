"""``dsteer-eval`` command line: one verb a job, each with ``--help``."""

from __future__ import annotations

import argparse
import sys


def _cmd_model_path(args: argparse.Namespace) -> int:
    from dsteer_eval.embedded import ensure_embedded

    print(ensure_embedded(args.name))
    return 0


def _default_pairs() -> str:
    from dsteer_eval.lm_eval_plugin import tasks_dir

    return f"{tasks_dir()}/hh/hh_mini.jsonl"


def _cmd_extract(args: argparse.Namespace) -> int:
    from dsteer_eval import extract
    from dsteer_eval.loading import load_model
    from dsteer_eval.preference_data import read_pairs
    from dsteer_eval.vectors import save_vectors

    pairs = read_pairs(args.data or _default_pairs(), limit=args.limit)  # fail before loading
    model, tokenizer, path = load_model(args.pretrained, peft=args.peft)
    vectors = extract.caa(model, tokenizer, pairs, batch_size=args.batch_size)
    extra = {"data": str(args.data or "dsteer_eval.tasks/hh/hh_mini.jsonl")}
    if args.default_layer is not None:
        extra["default_layer"] = str(args.default_layer)
    out = save_vectors(args.out, vectors, model=model, model_id=str(args.pretrained or "smollm2"),
                       method=args.method, n_examples=len(pairs), extra=extra)
    norms = ", ".join(f"{s}:{float(v.norm()):.2f}" for s, v in vectors.items() if s % 5 == 0)
    print(f"wrote {out}: {len(vectors)} sites from {len(pairs)} pairs (|v| by layer {norms})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dsteer_eval import __version__

    parser = argparse.ArgumentParser(
        prog="dsteer-eval",
        description="D-STEER evaluation tools for lm-evaluation-harness "
        "(the lm-eval model is `lm_eval --model steered`).",
    )
    parser.add_argument("--version", action="version", version=f"dsteer-eval {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "model-path",
        help="print the local folder of an embedded model (dequantizing it on first use)",
        description="Print the folder of the dequantized embedded model, for tools that want a path "
        "(e.g. `lm_eval --model hf --model_args pretrained=$(dsteer-eval model-path)`).",
    )
    p.add_argument("name", nargs="?", default="smollm2", help="embedded model name (default: smollm2)")
    p.set_defaults(func=_cmd_model_path)

    p = verbs.add_parser(
        "extract",
        help="extract steering vectors for every layer into a .safetensors file",
        description="Extract a steering vector at every hidden-state site and write a dsteer-eval "
        "vector file (safetensors with metadata).",
    )
    p.add_argument("--method", choices=["caa"], default="caa",
                   help="caa: mean h(prompt+chosen) - h(prompt+rejected) at the last reply token")
    p.add_argument("--pretrained", default=None, help="hub id, local path or 'smollm2' (default: embedded)")
    p.add_argument("--peft", default=None, help="PEFT adapter folder applied on top of --pretrained")
    p.add_argument("--data", default=None,
                   help="JSONL(.gz) of HH pairs (chosen/rejected dialogues or prompt/chosen/rejected); "
                   "default: the shipped hh_mini sample")
    p.add_argument("--limit", type=int, default=None, help="use at most this many pairs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--default-layer", type=int, default=None, help="record the layer used when layer= is omitted")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=_cmd_extract)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dsteer-eval {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
