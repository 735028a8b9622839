"""``dsteer-eval sweep``: an alpha grid of steered lm-eval runs and its leaderboard.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse
import sys

from dsteer_eval.cli.shared import leaderboard_to, report_to


def add(verbs) -> None:
    p = verbs.add_parser(
        "sweep",
        help="run an alpha grid (x layers) of steered lm_eval runs and build the leaderboard",
        description="Run every (layer, alpha) point of a grid through lm-eval's evaluator with the model loaded "
        "once (log-likelihood requests share the layers below the steered one across alphas), write each "
        "point's lm-eval results JSON, optional probes and G-Eval win-rates vs alpha=0, then a leaderboard "
        "(Markdown, CSV, JSON, HTML) and plots. Re-running the same command resumes: finished points are kept.",
    )
    p.add_argument("--model-args", default="",
                   help="lm_eval --model_args for `steered` without alpha, e.g. pretrained=...,peft=...,vector=...,"
                   "layer=20 (default: the embedded SmolLM2 with the shipped DPO adapter and vector)")
    p.add_argument("--alphas", required=True, help="comma-separated alpha grid, e.g. -2,-1,-0.5,0,0.5,1,2")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (int, negative from the end, or final); default: layer= of "
                   "--model-args, else the vector file's default layer")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks or groups")
    p.add_argument("--output", required=True, help="output folder (resumed when it holds the same sweep)")
    p.add_argument("--limit", type=float, default=None, help="documents per task (a fraction below 1), as lm_eval")
    p.add_argument("--batch-size", default=8, help="as lm_eval --batch_size (default 8)")
    p.add_argument("--device", default=None, help="as lm_eval --device (default: cuda if available, else cpu)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--gen-kwargs", default=None, help="as lm_eval --gen_kwargs")
    p.add_argument("--apply-chat-template", action="store_true")
    p.add_argument("--include-path", default=None, help="extra folder of YAML tasks, as lm_eval --include_path")
    p.add_argument("--log-samples", action="store_true", help="keep every task's samples JSONL (win-rate tasks always)")
    p.add_argument("--probes", action="store_true",
                   help="per point: projection margin and restoration KL; once: the full probe report")
    p.add_argument("--probe-data", default=None, help="preference pairs for the probes (default: shipped hh_mini)")
    p.add_argument("--ceiling", default=None,
                   help="ceiling.json (from `dsteer-eval ceiling`) for --alphas rel:-1,-0.5,0,0.5,1 (multiples of the "
                   "vector's strength ceiling per side); --alphas auto measures it first")
    p.add_argument("--controls", default=None,
                   help="random[:K]: beside every steered point, K seeded random directions with exactly v's norm "
                   "at the same layer and alpha (control=random:<i> in their model args); the leaderboard shows "
                   "each effect beside the controls' with a paired CI")
    p.add_argument("--control-seed", type=int, default=None,
                   help="the random directions' seed (recorded in sweep.json); default: the resumed sweep's, else "
                   "derived from this sweep's settings and grid, so each sweep draws its own K directions and the "
                   "same sweep elsewhere draws the same ones (control_seed= in --model-args also works)")
    p.add_argument("--base-alphas", default="auto",
                   help="alphas for the base side (the PEFT adapter switched off, peft=none): 'auto' (default) = 0 "
                   "and the grid's positive alphas when the model has an adapter, 'none', or a comma list")
    p.add_argument("--backend", default="hf", choices=("hf", "vllm"),
                   help="hf (default): the steered HF model, alpha-batched passes and shared lower layers; vllm: "
                   "one steered-vllm engine per side, loaded once, re-pointed in place between points (run it in "
                   "the vLLM venv, scripts/setup_vllm.sh; docs/vllm.md)")
    p.add_argument("--no-shared-prefix", dest="shared_prefix", action="store_false",
                   help="compute every layer for every alpha (for checking the shared lower layers)")
    p.add_argument("--report", action="store_true",
                   help="also write OUT/report (dsteer-eval report: the fraction of the base-DPO gap ±v̄ closes per "
                   "alpha and side against the random directions) and print its verdict card")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="delete --output first instead of resuming")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from dsteer_eval.common.output_folder import folder_lock
    from dsteer_eval.sweep.runner import SweepConfig, run_sweep

    config = SweepConfig(**{f.name: getattr(args, f.name) for f in fields(SweepConfig)})
    with folder_lock(config.output, "--output"):  # the leaderboard and the report are written under it too
        failures = run_sweep(config, hold_lock=False)
        leaderboard_to([config.output], config.output, plots=not args.no_plots)
        if args.report:
            report_to(config.output)
    if failures:
        print(f"dsteer-eval sweep: {failures} (point, task) run(s) failed: marked 'failed' in the table; "
              f"see points/*/*/failed.json, fix the cause and re-run the same command to retry them",
              file=sys.stderr)
    return 1 if failures else 0
