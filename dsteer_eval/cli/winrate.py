"""``dsteer-eval winrate``: pairwise G-Eval win-rate of two sample files.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse


def add(verbs) -> None:
    p = verbs.add_parser(
        "winrate",
        help="pairwise G-Eval win-rate of answers A over answers B (two lm_eval --log_samples files)",
        description="Judge every prompt's two answers in both orders (cancelling position bias) and "
        "report the mean P(A better). A and B are samples_*.jsonl files of the same generation task, "
        "e.g. dsteer_geval_mini run steered and unsteered.",
    )
    p.add_argument("a", help="samples JSONL of the answers to rate (e.g. steered)")
    p.add_argument("b", help="samples JSONL of the baseline answers (e.g. alpha=0)")
    p.add_argument("--criterion", default="helpfulness", help="helpfulness | harmlessness | coherence")
    p.add_argument("--judge", default=None, help="smollm2 | hf:<path> | openai:<model> (default: $DSTEER_JUDGE or smollm2)")
    p.add_argument("--out", default=None, help="also write the result (with per-prompt P(A wins)) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from dsteer_eval.metrics.judge import build_judge, criterion, judge_spec
    from dsteer_eval.metrics.winrate import paired_answers, win_rate

    criterion(args.criterion)  # bad criteria and sample files fail before the judge loads
    answers = paired_answers(args.a, args.b)
    result = win_rate(build_judge(args.judge or judge_spec()), *answers, args.criterion)
    text = json.dumps(result.to_dict(), indent=2)
    if args.out:
        from dsteer_eval.common.output_folder import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    shown = "n/a" if result.win_rate is None else f"{result.win_rate:.3f}"
    err = "" if result.stderr is None else f" \u00b1 {result.stderr:.3f}"
    print(f"win-rate of A over B on {args.criterion}: {shown}{err} (n={result.n}, failed={result.n_failed}, "
          f"judge {result.judge})")
    return 0
