"""``dsteer-eval build-refusal``: build the refusal preference set.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add(verbs) -> None:
    p = verbs.add_parser(
        "build-refusal",
        help="build the refusal preference set (harmful HH requests + harmless TruthfulQA questions)",
        description="Write OUT/refusal_pairs.jsonl.gz (prompt/chosen/rejected with kind and part) and "
        "OUT/refusal_card.json. Harmful rows: HH pairs whose rejected reply does not refuse; chosen = one of "
        "10 refusal phrasings (seeded by the prompt), rejected = the data set's reply. Harmless rows: "
        "TruthfulQA questions; chosen = the best answer, rejected = a refusal phrasing.",
    )
    p.add_argument("--hh", required=True, help="HH-RLHF harmless-base JSONL(.gz) (chosen/rejected dialogues)")
    p.add_argument("--truthfulqa", required=True, help="TruthfulQA CSV (original columns) or truthful_qa JSONL")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsteer_eval.data.refusal_set import CARD_NAME, PAIRS_NAME, build_refusal

    card = build_refusal(args.hh, args.truthfulqa, args.out)
    print(f"wrote {Path(args.out) / PAIRS_NAME} ({card['rows']} pairs) and {Path(args.out) / CARD_NAME}")
    for part, kinds in card["counts"].items():
        print(f"  {part:7s} harmful {kinds['harmful']:5d}  harmless {kinds['harmless']:5d}")
    for why, n in card["left_out"].items():
        print(f"  left out: {n} ({why})")
    return 0
