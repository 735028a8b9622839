"""``dsteer-eval leaderboard``: rebuild leaderboard tables from result folders.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse

from dsteer_eval.cli.shared import leaderboard_to


def add(verbs) -> None:
    p = verbs.add_parser(
        "leaderboard",
        help="rebuild leaderboard tables and plots from sweep folders or plain lm_eval --output_path folders",
        description="Read every lm-eval results_*.json (and sweep extras) under the folders and write "
        "leaderboard.{md,csv,json,html} and plots/ into --out (default: the first folder).",
    )
    p.add_argument("folders", nargs="+", help="sweep output folders or lm_eval --output_path folders")
    p.add_argument("--out", default=None, help="where to write the tables (default: the first folder)")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    leaderboard_to(args.folders, args.out or args.folders[0], plots=not args.no_plots)
    return 0
