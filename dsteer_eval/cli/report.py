"""``dsteer-eval report``: the D-STEER report of a finished sweep: dose-response on both sides against random
directions, the verdict card (printed), and report.{md,html,json} with figures.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse

from dsteer_eval.cli.shared import report_to


def add(verbs) -> None:
    p = verbs.add_parser(
        "report",
        help="the D-STEER report of a finished sweep: gap closed by ±v̄ per α and side vs random directions",
        description="Read a finished `dsteer-eval sweep` folder (both sides: --base-alphas; random directions: "
        "--controls random:K, K >= 8 for a claim against them) and write OUT/report.{md,html,json} and the "
        "dose-response figures: per task metric and α, the fraction of the base-DPO gap that -v̄ takes back "
        "on the DPO model and +v̄ installs on the base, with paired bootstrap CIs, the random directions' "
        "band, v̄'s rank and empirical p-value, the degeneration rate, and verdicts computed from them.",
    )
    p.add_argument("sweeps", nargs="+", metavar="SWEEP",
                   help="finished sweep output folders (with sweep.json); several side by side, e.g. the pair's own "
                   "v̄ and a vector from another distribution on the same pair")
    p.add_argument("--labels", default=None, help="comma-separated names of the sweeps, in order")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tasks", default=None, help="comma-separated tasks of the sweep (default: all)")
    p.add_argument("--metrics", default=None, help="comma-separated metrics (default: every metric with "
                   "per-document values at every point, count columns n_* left out)")
    p.add_argument("--prompting", default=None, metavar="SWEEP",
                   help="a sweep of <task>_prompted_decline and <task>_prompted_comply at alpha 0 on both sides "
                   "(the prompting baseline: an instruction instead of v̄), shown beside the steered rows")
    p.add_argument("--where-alphas", default="-1,1", metavar="DPO,BASE",
                   help="the alpha per side of the where-table (a task T run with T_select: gap closed by layer and "
                   "sweep, the choice made on T_select's rows; default -1,1)")
    p.add_argument("--title", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def parse_where_alphas(text: str) -> dict:
    fix = f"--where-alphas {text}: give the DPO side's alpha (negative) and the base side's (positive), e.g. -1,1"
    try:
        dpo, base = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(fix) from None
    if not (dpo < 0 < base):
        raise ValueError(fix)
    return {"dpo": dpo, "base": base}


def run(args: argparse.Namespace) -> int:
    from dsteer_eval.common.output_folder import check_free

    split = lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None  # noqa: E731
    check_free(args.out, args.overwrite)  # before any reading
    where_alphas = parse_where_alphas(args.where_alphas)
    report_to(args.sweeps, args.out, labels=split(args.labels), title=args.title, prompting=args.prompting,
              tasks=split(args.tasks),
              metrics=split(args.metrics), where_alphas=where_alphas, overwrite=args.overwrite)
    return 0
