"""A small beta x learning-rate sweep for a DPO preset (refusal or hh), selected on the *vector* part.

Each grid point trains the preset (``--preset``, default refusal) for ``--steps`` steps on the train part and measures
held-out implicit rewards on every pair of the vector part (never trained on, and not the eval
part: the eval part's numbers stay untouched by the choice).  The choice is computed here:
the point with the largest worst-kind margin in standard errors (min over refuse/answer of
mean/stderr; the HH pairs have one kind, so their pooled mean/stderr), ties broken by pooled reward accuracy.  Implicit rewards scale with beta, so
margins are compared in standard errors, not raw.

Writes OUT/sweep.json and OUT/sweep.md; finished points (a card in their folder) are reused,
so an interrupted sweep is resumed by running the same command again.

    python scripts/dpo_hparam_sweep.py --data build/refusal/refusal_pairs.jsonl.gz \
        --work build/dpo_hparam_sweep --out results/dpo_hparam_sweep
    python scripts/dpo_hparam_sweep.py --preset hh --data ../shared/data/hh_harmless_dev.jsonl.gz \
        --steps 40 --grid 0.1:5e-4,0.1:2e-4,0.3:5e-4,0.05:5e-4 \
        --work build/dpo_hparam_sweep_hh --out results/dpo_hparam_sweep_hh
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

GRID = [(0.1, 5e-4), (0.1, 2e-4), (0.3, 5e-4)]


def z(summary: dict) -> float:
    """margin / stderr; -inf when the stderr is 0 or missing (no spread: nothing learned to compare)."""
    se = summary["reward_margin_stderr"]
    return summary["reward_margin_mean"] / se if se else -math.inf


def worst_kind_z(metrics: dict) -> float:
    by_kind = metrics.get("eval_by_kind") or {"all": metrics["eval"]}
    return min(z(summary) for summary in by_kind.values())


def choose(points: list[dict]) -> dict:
    return max(points, key=lambda p: (p["worst_kind_z"], p["eval"]["reward_accuracy"]))


def markdown(report: dict) -> str:
    lines = [
        f"# beta x learning-rate sweep ({report.get('preset', 'refusal')} pair, SmolLM2-135M-Instruct)",
        "",
        f"Each point: `{report['base_command']}` plus its beta and lr; {report['steps']} steps on the train part; "
        f"held-out rewards on every pair of the **vector** part (the eval part is not looked at). "
        f"Chosen by code: {report['rule']}.",
        "",
    ]
    kinds = list(dict.fromkeys(k for p in report["points"] for k in p.get("eval_by_kind", {})))
    head = "| beta | lr | pooled acc | pooled margin (z) | " + "".join(f"{k} acc | {k} z | " for k in kinds) + "worst z | |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for p in report["points"]:
        e, by_kind = p["eval"], p.get("eval_by_kind", {})
        cells = "".join(f"{by_kind[k]['reward_accuracy']:.3f} | {z(by_kind[k]):.2f} | " if k in by_kind else "– | – | "
                        for k in kinds)
        mark = "**chosen**" if p is report["points"][report["chosen_index"]] else ""
        lines.append(f"| {p['beta']:g} | {p['learning_rate']:g} | {e['reward_accuracy']:.3f} | "
                     f"{e['reward_margin_mean']:+.2f} ({z(e):.2f}) | {cells}{p['worst_kind_z']:.2f} | {mark} |")
    lines += ["", f"Pairs: {report['points'][0]['pairs_eval']} vector-part pairs per point. Command: "
              f"`{report['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True, help="folder for the grid points' adapters (not committed)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preset", choices=("refusal", "hh"), default="refusal",
                        help="the train-dpo preset each point starts from (its beta and lr are replaced)")
    parser.add_argument("--grid", default=None,
                        help="beta:lr,beta:lr,... (default: " + ",".join(f"{b:g}:{lr:g}" for b, lr in GRID) + ")")
    args = parser.parse_args(argv)
    grid = [tuple(float(x) for x in item.split(":")) for item in args.grid.split(",")] if args.grid else GRID

    from dsteer_eval.dpo.training import preset_settings, read_card, train_dpo

    points = []
    for beta, lr in grid:
        folder = Path(args.work) / f"beta{beta:g}_lr{lr:g}"
        card = read_card(folder)
        if card is None:
            settings = preset_settings(args.preset)
            settings.beta, settings.learning_rate, settings.epochs, settings.steps = beta, lr, 0.0, args.steps
            settings.eval_size = 10_000
            card = train_dpo(args.data, folder, settings, part="train", eval_part="vector", preset=args.preset,
                             save_steps=10, resume=True)
        m = card["metrics"]
        points.append({"beta": beta, "learning_rate": lr, "eval": m["eval"], "eval_by_kind": m.get("eval_by_kind", {}),
                       "pairs_eval": card["data"]["pairs_eval"], "worst_kind_z": worst_kind_z(m),
                       "seconds_per_step": card["seconds_per_step"], "card_command": card["command"]})
    best = choose(points)
    report = {
        "format": "dsteer-eval/dpo-hparam-sweep", "steps": args.steps, "preset": args.preset,
        "rule": "max over points of min over kinds (refuse, answer; one kind for hh) of margin/stderr on the "
                "vector part; ties: pooled reward accuracy",
        "base_command": f"dsteer-eval train-dpo --preset {args.preset} --eval-part vector --eval-size 10000",
        "points": points, "chosen_index": points.index(best),
        "chosen": {"beta": best["beta"], "learning_rate": best["learning_rate"]},
        "command": shlex.join(["python", "scripts/dpo_hparam_sweep.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from dsteer_eval.common.output_folder import atomic_write_text

    atomic_write_text(out / "sweep.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "sweep.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
