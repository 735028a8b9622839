"""``dsteer-eval classify``: label each reply of a JSONL file (refuses / declines / complies / answers / off).

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs start without
importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse


def add(verbs) -> None:
    p = verbs.add_parser(
        "classify",
        help="label replies to harmful / harmless requests (REFUSE, DECLINE, COMPLY, ANSWER, OFF)",
        description="Reads JSONL lines with id, kind (harmful | harmless), request (the dialogue up to "
        "'Assistant:') and reply; writes the same lines with a `label` (and `classifier`). The default "
        "classifier is the judge-free rule (docs/behaviour-labels.md); --judge asks a judge model instead. Check "
        "either on labelled lines first: dsteer-eval validate-classifier.",
    )
    p.add_argument("input", help="JSONL: id, kind, request, reply")
    p.add_argument("--out", required=True, help="JSONL to write (the input lines plus label)")
    p.add_argument("--judge", default=None, help="hf:<path> | openai:<model> | smollm2 (default: the rule)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from collections import Counter

    from dsteer_eval.common.output_folder import atomic_write_text, check_writable
    from dsteer_eval.metrics.behaviour_validation import classify_lines, read_lines

    lines = read_lines(args.input)
    check_writable(args.out, "--out")
    judge = None
    if args.judge:
        from dsteer_eval.metrics.judge import build_judge

        judge = build_judge(args.judge)
    labels, name, failed = classify_lines(lines, judge)
    text = "".join(json.dumps({**line, "label": label, "classifier": name}, ensure_ascii=False) + "\n"
                   for line, label in zip(lines, labels))
    atomic_write_text(args.out, text)
    counts = Counter((line["kind"], label) for line, label in zip(lines, labels))
    shown = ", ".join(f"{kind} {label}: {n}" for (kind, label), n in sorted(counts.items(), key=str))
    print(f"classified {len(lines)} replies with {name} -> {args.out} ({shown}; failed judgements: {failed})")
    return 0
