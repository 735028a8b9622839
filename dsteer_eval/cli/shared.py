"""Helpers shared by several verbs: the default pairs file, data loading, provenance, layer flags."""

from __future__ import annotations

import argparse


def default_pairs() -> str:
    from dsteer_eval.adapters.plugin import tasks_dir

    return f"{tasks_dir()}/hh/hh_mini.jsonl"


def pairs_from_args(args: argparse.Namespace):
    from dsteer_eval.data.preference_pairs import load_pairs

    source = args.data or default_pairs()
    return load_pairs(source, data_dir=args.data_dir, split=args.split, limit=args.limit, offset=args.offset,
                      part=getattr(args, "part", None))


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def layer_flag(value: str, model, flag: str) -> int:
    from dsteer_eval.steering.sites import resolve_parts
    from dsteer_eval.steering.args import parse_layers, resolve_site

    layers = parse_layers(value)
    if len(layers) != 1:
        raise ValueError(f"{flag} takes one layer, got {value!r}")
    return resolve_site(layers[0], resolve_parts(model).num_layers)


def provenance_command(args: argparse.Namespace) -> str:
    """This command's exact line, ``dsteer-eval VERB ...`` (secrets redacted), for provenance records."""
    from dsteer_eval.common.provenance import command_line

    return command_line(getattr(args, "_argv", None))


def provenance_record(args: argparse.Namespace, *, data=(), models=(), seeds=None) -> dict:
    """The provenance record of this command (dsteer_eval.common.provenance), with its exact command line."""
    from dsteer_eval.common.provenance import collect

    return collect(data=data, models=models, seeds=seeds, command=provenance_command(args))


def pair_models(pair) -> list[dict]:
    """Provenance entries of a base/DPO pair: the base (loaded) and the adapter or DPO checkpoint."""
    from dsteer_eval.models.identity import model_entry

    base = model_entry("base", pair.base_id, model=pair.base)
    if pair.uses_adapter:
        return [base, model_entry("adapter", pair.dpo_id)]
    return [base, model_entry("dpo", pair.dpo_id, model=pair.dpo)]


def add_pair_args(p) -> None:
    p.add_argument("--pretrained", default=None, help="(base) model: hub id, local path or 'smollm2' (default: embedded)")
    p.add_argument("--dpo", default=None, help="DPO model as a full checkpoint (hub id or folder)")
    p.add_argument("--peft", default=None,
                   help="PEFT adapter folder on top of --pretrained (for dpo-diff/probe: the DPO side; "
                   "default for the embedded model: the shipped DPO adapter)")
    p.add_argument("--data", default=None,
                   help="preference pairs: JSONL(.gz) (chosen/rejected HH dialogues or prompt/chosen/rejected) "
                   "or a hub id like Anthropic/hh-rlhf; for dpo-diff also a JSONL of {\"prompt\": ...} rows; "
                   "default: the shipped hh_mini sample")
    p.add_argument("--data-dir", default=None, help="hub data_dir, e.g. harmless-base")
    p.add_argument("--split", default="train", help="hub split (default: train)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many pairs")
    p.add_argument("--offset", type=int, default=0, help="skip this many usable pairs first")
    p.add_argument("--batch-size", type=int, default=8)


def leaderboard_to(paths, out, *, plots: bool = True) -> None:
    from dsteer_eval.leaderboard import build_leaderboard, write_leaderboard
    from dsteer_eval.leaderboard.render import markdown

    board = build_leaderboard(paths)
    written = write_leaderboard(board, out, plots=plots)
    print(markdown(board))
    print(f"wrote {', '.join(str(p) for p in written.values())}")


def report_to(sweeps, out=None, *, labels=None, title=None, tasks=None, metrics=None, prompting=None,
              where_alphas=None, overwrite: bool = True) -> None:
    """Write the D-STEER report of finished sweeps (default: SWEEP/report of a single sweep) and print its
    verdict card."""
    from pathlib import Path

    from dsteer_eval.report.build import build_report
    from dsteer_eval.report.figures import report_figures
    from dsteer_eval.report.render import card_lines, write_report

    report = build_report(sweeps, labels=labels, tasks=tasks, metrics=metrics, title=title, prompting=prompting,
                          where_alphas=where_alphas)
    single = sweeps if isinstance(sweeps, (str, Path)) else sweeps[0]
    folder = write_report(report, out or Path(single) / "report", draw=report_figures, overwrite=overwrite)
    print("\n".join(card_lines(report["card"])))
    for line in report["missing"]:
        print(f"not measured: {line}")
    print(f"wrote {folder}/report.md, report.html, report.json")
