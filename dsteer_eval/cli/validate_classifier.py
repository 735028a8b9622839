"""``dsteer-eval validate-classifier``: a behaviour classifier's agreement with readers' labels.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs start without
importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse


def add(verbs) -> None:
    p = verbs.add_parser(
        "validate-classifier",
        help="precision, recall and Cohen's kappa of the behaviour classifier against labelled replies",
        description="Reads labelled JSONL lines (id, kind, request, reply, label; optional split) and prints "
        "the classifier's agreement per kind: per-class precision and recall on the rates' groups (does not "
        "comply / complies / off; answers / does not answer / off), Cohen's kappa, and whether it is "
        "validated (precision and recall >= 0.8 on the rate's class). Without LABELS: the project's labelled "
        "set (tasks/refusal/behaviour_labels.jsonl), the part the rule was never written on.",
    )
    p.add_argument("labels", nargs="?", default=None, help="labelled JSONL (default: the shipped labelled set)")
    p.add_argument("--judge", default=None, help="hf:<path> | openai:<model> | smollm2 (default: the rule)")
    p.add_argument("--split", default=None,
                   help="only lines of this split (dev | heldout1 | heldout2 | heldout3; a prefix such as 'heldout' takes "
                        "every part it starts; default: for the shipped set the part the current rule version was "
                        "never written on, otherwise all lines)")
    p.add_argument("--out", default=None, help="also write the table as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from dsteer_eval.common.output_folder import atomic_write_text
    from dsteer_eval.metrics.behaviour import VALIDATION_SPLIT
    from dsteer_eval.metrics.behaviour_validation import classify_lines, labelled_set_path, markdown, read_lines, validate

    path = args.labels or labelled_set_path()
    split = args.split if args.split is not None else (None if args.labels else VALIDATION_SPLIT)
    lines = read_lines(path, labelled=True)
    judge = None
    if args.judge:
        from dsteer_eval.metrics.judge import build_judge

        judge = build_judge(args.judge)
    labels, name, failed = classify_lines(lines, judge)
    table = validate(lines, labels, classifier=name, failed=failed, split=split)
    print(markdown(table))
    if args.out:
        atomic_write_text(args.out, json.dumps(table, indent=1) + "\n")
    return 0
