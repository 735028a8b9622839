"""``dsteer-eval`` command line: one verb a job, each with ``--help``."""

from __future__ import annotations

import argparse
import sys


def _cmd_model_path(args: argparse.Namespace) -> int:
    from dsteer_eval.embedded import ensure_embedded

    print(ensure_embedded(args.name))
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
