"""Tie a DPO card to the β × learning-rate sweep that chose its hyper-parameters.

``scripts/dpo_hparam_sweep.py`` writes ``sweep.json`` (format ``dsteer-eval/dpo-hparam-sweep``): its
points, the rule and the chosen β and learning rate, selected on the vector part.  ``train-dpo
--hparam-sweep sweep.json`` checks before training that the run's β and learning rate are the chosen
ones (a run that differs is refused, naming the flags) and records the choice in the card under
``hparam_choice``: the sweep file and its sha256, the rule, the chosen point, every point's worst-kind
z and the part it was measured on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dsteer_eval.common.hashing import sha256_file
from dsteer_eval.common.output_folder import atomic_write_text
from dsteer_eval.dpo.training import CARD_NAME, read_card

FORMAT = "dsteer-eval/dpo-hparam-sweep"


def read_sweep(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--hparam-sweep {path}: no such file (scripts/dpo_hparam_sweep.py writes sweep.json)")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--hparam-sweep {path}: not JSON ({exc})") from None
    if report.get("format") != FORMAT or "chosen" not in report:
        raise ValueError(f"--hparam-sweep {path}: not a {FORMAT} report with a chosen point")
    return report


def check(beta: float, learning_rate: float, path) -> dict:
    """The record for a run with ``beta`` / ``learning_rate``; ValueError unless they are the sweep's choice."""

    report = read_sweep(path)
    chosen = report["chosen"]
    if not (math.isclose(beta, chosen["beta"], rel_tol=1e-9)
            and math.isclose(learning_rate, chosen["learning_rate"], rel_tol=1e-9)):
        raise ValueError(f"--hparam-sweep {path} chose beta {chosen['beta']:g}, learning rate "
                         f"{chosen['learning_rate']:g}; this run has beta {beta:g}, learning rate {learning_rate:g}: "
                         f"pass --beta {chosen['beta']:g} --learning-rate {chosen['learning_rate']:g} (or drop --hparam-sweep)")
    return {
        "sweep": str(path),
        "sha256": sha256_file(path),
        "rule": report.get("rule"),
        "chosen": chosen,
        "steps_per_point": report.get("steps"),
        "measured_on": "vector part (never trained on; not the eval part)",
        "points": [{"beta": p["beta"], "learning_rate": p["learning_rate"], "worst_kind_z": p["worst_kind_z"],
                    "pairs": p.get("pairs_eval")} for p in report.get("points", [])],
        "sweep_command": report.get("command"),
    }


def record(adapter, path, *, recorded_by: str | None = None) -> dict:
    """Check the card in ``adapter`` against the sweep at ``path`` and write ``hparam_choice`` into it."""

    card = read_card(adapter)
    if card is None:
        raise ValueError(f"{adapter}: no {CARD_NAME} (not a train-dpo output folder)")
    hp = card["hyperparameters"]
    entry = check(float(hp["beta"]), float(hp["learning_rate"]), path)
    if recorded_by:
        entry["recorded_by"] = recorded_by
    card["hparam_choice"] = entry

    atomic_write_text(Path(adapter) / CARD_NAME, json.dumps(card, indent=1) + "\n")  # whole or not at all
    return card
