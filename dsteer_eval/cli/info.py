"""``dsteer-eval info``: describe an output and its provenance.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse


def add(verbs) -> None:
    p = verbs.add_parser(
        "info",
        help="print what a dsteer-eval output is and how it was made (its provenance)",
        description="Describe a vector file (.safetensors, .gguf, .pt), a dpo_card.json, probe_report.json or "
        "sweep.json, or a folder holding one (train-dpo adapter, probe or sweep output): its kind, key facts "
        "(layers and norms, data, model, settings) and provenance: package version, git commit, the exact "
        "command, the sha256 of the input data, the models' fingerprints and the seeds.",
    )
    p.add_argument("file", help="the output file or folder to describe")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from dsteer_eval.describe.files import describe, render

    found = describe(args.file)
    print(json.dumps(found, indent=1) if args.json else render(found))
    return 0
