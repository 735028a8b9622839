"""``dsteer-eval`` command line: one verb a job, each with ``--help``.

One module per verb (``cli/<verb>.py``): ``add(verbs)`` declares its arguments, ``run(args)`` calls the
library. This module builds the parser from them and turns bad input into one line on stderr (exit 2).
"""

from __future__ import annotations

import argparse
import sys

from dsteer_eval import __version__
from dsteer_eval.cli import (
    build_refusal,
    build_toxicity,
    ceiling,
    classify,
    convert,
    dpo_gate,
    extract,
    info,
    leaderboard,
    model_path,
    probe,
    report,
    sweep,
    train_dpo,
    validate_classifier,
    winrate,
)
from dsteer_eval.cli.errors import os_error_message
from dsteer_eval.common.redaction import install_log_redaction, redact

# in the order `dsteer-eval --help` lists them
VERBS = (model_path, extract, convert, train_dpo, dpo_gate, build_refusal, build_toxicity, sweep, ceiling, leaderboard, info,
         probe, winrate, report, classify, validate_classifier)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsteer-eval",
        description="D-STEER evaluation tools for lm-evaluation-harness "
        "(the lm-eval model is `lm_eval --model steered`).",
    )
    parser.add_argument("--version", action="version", version=f"dsteer-eval {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        verb.add(verbs)
    return parser


_LIST_FLAGS = ("--alphas", "--layers", "--base-alphas", "--where-alphas")  # values like "-2,-1,0" look like options to argparse


def _join_list_flags(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _LIST_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    install_log_redaction(scope="all")  # the dsteer-eval command: every record of its process is ours
    parser = build_parser()
    argv = _join_list_flags(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    args._argv = argv  # the exact command, for cards that record how they were made
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dsteer-eval {args.verb}: error: {redact(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a read-only or full output folder: one line, not a traceback
        print(f"dsteer-eval {args.verb}: error: {redact(os_error_message(exc, args))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
