"""``dsteer-eval dpo-gate``: a trained pair's held-out rewards and gate.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse

from dsteer_eval.cli.shared import provenance_command


def add(verbs) -> None:
    p = verbs.add_parser(
        "dpo-gate",
        help="measure a trained LoRA pair's held-out implicit rewards (pooled and by pair kind) and its gate",
        description="Policy = the adapter, reference = the base model; rewards beta*(log pi - log pi_ref) on "
        "every pair of a never-trained part (default eval), split by kind for refusal sets (refuse/answer). "
        "--write-card records them in the card (heldout) and recomputes the gate from the eval part.",
    )
    p.add_argument("adapter", help="a train-dpo LoRA output folder (with dpo_card.json)")
    p.add_argument("--data", required=True, help="the preference pairs it was trained from")
    p.add_argument("--part", choices=["eval", "vector", "probe"], default="eval")
    p.add_argument("--eval-size", type=int, default=None, help="at most this many pairs (seeded pick; default all)")
    p.add_argument("--pretrained", default=None, help="base model (default: embedded)")
    p.add_argument("--device", default=None)
    p.add_argument("--write-card", action="store_true", help="record the result in ADAPTER/dpo_card.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsteer_eval.dpo.gate import command_line, evaluate_adapter, write_heldout

    measured = evaluate_adapter(args.adapter, args.data, part=args.part, eval_size=args.eval_size,
                                pretrained=args.pretrained, device=args.device, command=provenance_command(args))
    s = measured["summary"]
    print(f"{args.adapter} on part {measured['part']} ({measured['pairs']} pairs, {measured['prompts_truncated']} "
          f"prompts left-truncated): reward accuracy {s['reward_accuracy']:.3f}, margin "
          f"{s['reward_margin_mean']:+.3f} ± {s['reward_margin_stderr']:.3f} (stderr)")
    for kind, k in measured["by_kind"].items():
        print(f"  {kind:7s} {k['pairs']:4d} pairs: accuracy {k['reward_accuracy']:.3f}, margin "
              f"{k['reward_margin_mean']:+.3f} ± {k['reward_margin_stderr'] or float('nan'):.3f}")
    if args.write_card:
        card = write_heldout(args.adapter, measured, command_line(args._argv))
        if args.part == "eval":
            g = card["gate"]
            print(f"gate {'passed' if g['passed'] else 'FAILED'} ({g['margin_in_stderrs']:.1f} stderr, accuracy "
                  f"{g['reward_accuracy']:.3f})" + ("" if "passed_every_kind" not in g else
                                                    f"; every kind: {g['passed_every_kind']}"))
    return 0
