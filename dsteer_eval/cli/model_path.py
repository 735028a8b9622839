"""``dsteer-eval model-path``: print the folder of an embedded model.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse

from dsteer_eval.models.embedded import DEFAULT_MODEL


def add(verbs) -> None:
    p = verbs.add_parser(
        "model-path",
        help="print the local folder of an embedded model (dequantizing it on first use)",
        description="Print the folder of the dequantized embedded model, for tools that want a path "
        "(e.g. `lm_eval --model hf --model_args pretrained=$(dsteer-eval model-path)`).",
    )
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"embedded model name (default: {DEFAULT_MODEL})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsteer_eval.models.embedded import ensure_embedded

    print(ensure_embedded(args.name))
    return 0
