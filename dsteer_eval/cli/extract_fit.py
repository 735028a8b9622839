"""``dsteer-eval extract --method distill|dpo-vector``: fit one steering vector per layer through the frozen
base/DPO pair (:mod:`dsteer_eval.dpo.vector_fit`) and save them as a vector file ``steered`` loads.

Resumable: every finished layer is kept in ``OUT.fits.json`` (its vector and fit record); a re-run of the same
command fits only the missing layers, and the sidecar is removed once the vector file is written.
Library imports sit inside the functions: deferred so that ``dsteer-eval --help`` starts without torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsteer_eval.cli.shared import pair_models, peak_rss_mib, provenance_record

DEFAULT_PART = {"distill": "vector", "dpo-vector": "train"}


def add_flags(p) -> None:
    g = p.add_argument_group("fitted vectors (--method distill / dpo-vector)")
    g.add_argument("--direction", choices=["install", "undo"], default="install",
                   help="distill: install = v* minimising KL(DPO || base + v); undo = u* minimising "
                   "KL(base || DPO + u)")
    g.add_argument("--layers", default=None,
                   help="sites to fit, comma-separated (e.g. 10,15,20); default: --default-layer, else 20")
    g.add_argument("--position", choices=["all", "prompt", "completion", "last"], default="all",
                   help="positions the vector is added at while fitting (steer with the same position=)")
    g.add_argument("--steps", type=int, default=150, help="optimiser steps per layer (default 150)")
    g.add_argument("--lr", type=float, default=0.1,
                   help="Adam step size in units of the mean state norm / sqrt(d) (default 0.1, decayed to a tenth)")
    g.add_argument("--beta", type=float, default=None,
                   help="dpo-vector: the DPO beta (default: the adapter card's, else 0.1)")
    g.add_argument("--seed", type=int, default=0, help="minibatch order and check-pair seed")
    g.add_argument("--check-fraction", type=float, default=0.25,
                   help="share of the fit pairs kept out of the gradient to pick the iterate: the fit returns the "
                   "iterate with the lowest loss on them (the zero vector included) and halves the step after one that "
                   "does not improve it (default 0.25; 0 = the last iterate, unguarded)")
    g.add_argument("--check-every", type=int, default=None, help="steps between check-loss readings (default steps/10)")
    g.add_argument("--warmup", type=int, default=None,
                   help="steps of linear step-size warm-up, again after each halving (default steps/10)")
    g.add_argument("--labels", choices=["given", "shuffled"], default="given",
                   help="dpo-vector: shuffled = the null DPO run's data (train-dpo --labels shuffled): chosen and "
                   "rejected swapped on exactly half of the fitted pairs (the first --limit), seeded as train-dpo "
                   "swaps them (--label-seed = its --seed; without --limit the very pairs it swaps); default given")
    g.add_argument("--label-seed", type=int, default=0, help="with --labels shuffled: train-dpo's --seed (default 0)")
    g.add_argument("--max-prompt-tokens", type=int, default=128, help="prompts keep their last N tokens (128)")
    g.add_argument("--max-completion-tokens", type=int, default=64, help="replies keep their first N tokens (64)")


def card_beta(pair) -> float | None:
    card = Path(str(pair.dpo_id)) / "dpo_card.json"
    if pair.uses_adapter and card.is_file():
        return float(json.loads(card.read_text())["hyperparameters"]["beta"])
    return None


def shuffled_pairs(args: argparse.Namespace):
    """The part's first --limit pairs with chosen and rejected swapped on exactly half of them, seeded as
    train-dpo --labels shuffled swaps its train list (:func:`dsteer_eval.dpo.trainer.shuffle_labels`): without --limit
    the very pairs train-dpo swaps; with it, exactly half of the fitted pairs (the first --limit of train-dpo's swapped
    list need not be half swapped — 18 of the toxicity pair's first 48 are — and a net preference would remain)."""
    from dsteer_eval.cli.shared import pairs_from_args
    from dsteer_eval.data.preference_pairs import PairSet
    from dsteer_eval.dpo.trainer import shuffle_labels

    every = pairs_from_args(args)
    swapped, _ = shuffle_labels(list(every), args.label_seed)
    kept = PairSet(swapped, source=every.source, skipped=every.skipped)
    kept.part, kept.other_parts = every.part, every.other_parts
    return kept


def kept_step(record: dict) -> str:
    """', kept step N of M (check loss A -> B)' for a guarded fit, '' for an unguarded one."""
    if not record.get("check_pairs"):
        return ""
    checks = dict(record["check_losses"])
    return (f", kept step {record['best_step']} of {record['steps']} (check loss {checks[0]:.4g} -> "
            f"{checks[record['best_step']]:.4g}, {record['halvings']} halvings)")


def run_fit(args: argparse.Namespace) -> int:
    import torch

    from dsteer_eval.cli.shared import pairs_from_args
    from dsteer_eval.common.output_folder import atomic_write_text
    from dsteer_eval.dpo.model_pair import ModelPair
    from dsteer_eval.dpo.vector_fit import fit_distilled, fit_dpo_vector
    from dsteer_eval.models.defaults import model_name, resolve_dpo_side
    from dsteer_eval.steering.args import parse_layers, resolve_site
    from dsteer_eval.steering.sites import resolve_parts
    from dsteer_eval.vectors import save_vectors

    if args.steps < 1 or not args.lr > 0 or args.batch_size < 1:
        raise ValueError(f"--steps ({args.steps}) and --batch-size ({args.batch_size}) must be >= 1, --lr ({args.lr}) > 0")
    if not 0 <= args.check_fraction < 1:
        raise ValueError(f"--check-fraction must be in [0, 1) (0 = no check pairs), got {args.check_fraction}")
    for flag in ("check_every", "warmup"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.part is None:
        args.part = DEFAULT_PART[args.method]
    if args.method == "dpo-vector" and args.part != "train":
        print(f"note: --part {args.part}: the DPO-trained vector is usually fitted on the adapter's train part")
    if args.labels != "given" and args.method != "dpo-vector":
        raise ValueError(f"--labels {args.labels}: only --method dpo-vector reads the labels (distill fits the DPO "
                         f"model's distribution; fit it against the null adapter instead)")
    pairs = pairs_from_args(args) if args.labels == "given" else shuffled_pairs(args)  # bad data fails before models
    if not pairs:
        raise ValueError(f"--data {args.data}: no usable pair in part {args.part!r}")
    pair = ModelPair.load(args.pretrained, **resolve_dpo_side(args.pretrained, dpo=args.dpo, peft=args.peft),
                          device="cpu" if not torch.cuda.is_available() else None)
    n_layers = resolve_parts(pair.base).num_layers
    spec = args.layers or args.default_layer or "20"
    sites = [resolve_site(x, n_layers) for x in parse_layers(str(spec).replace(",", ";"))]
    limits = {"max_prompt": args.max_prompt_tokens, "max_completion": args.max_completion_tokens}
    beta = args.beta if args.beta is not None else (card_beta(pair) or 0.1)
    settings = {"method": args.method, "direction": args.direction if args.method == "distill" else None,
                "position": args.position, "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
                "seed": args.seed, "check_fraction": args.check_fraction, "check_every": args.check_every,
                "warmup": args.warmup, "limits": limits, "data": str(pairs.source), "part": args.part, "pairs": len(pairs),
                "beta": beta if args.method == "dpo-vector" else None, "dpo": pair.dpo_id,
                "labels": None if args.labels == "given" else {"labels": args.labels, "label_seed": args.label_seed}}
    sidecar = Path(str(args.out) + ".fits.json")
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    done: dict = {}
    if sidecar.is_file():
        kept = json.loads(sidecar.read_text())
        if kept.get("settings") == settings:
            done = kept["layers"]
            print(f"resuming: layers {', '.join(done)} already fitted ({sidecar})")
        else:
            print(f"{sidecar}: fitted with other settings; starting again")
    for site in sites:
        if str(site) in done:
            continue

        def progress(step, loss, site=site):
            if step % 25 == 0 or step == args.steps - 1:
                print(f"layer {site} step {step + 1}/{args.steps}: loss {loss:.5f}", flush=True)

        common = dict(position=args.position, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed, limits=limits, check_fraction=args.check_fraction, check_every=args.check_every,
                      warmup=args.warmup, on_step=progress)
        fit = (fit_distilled(pair, pairs, site, direction=args.direction, **common) if args.method == "distill"
               else fit_dpo_vector(pair, pairs, site, beta=beta, **common))
        done[str(site)] = {"vector": fit.vector.tolist(), "record": fit.record()}
        atomic_write_text(sidecar, json.dumps({"settings": settings, "layers": done}) + "\n")  # whole or not at all
    vectors = {int(s): torch.tensor(done[str(s)]["vector"]) for s in sites}
    method = args.method if args.method == "dpo-vector" else f"distill-{args.direction}"
    extra = {"data": pairs.source, "part": args.part, "fit": {s: done[str(s)]["record"] for s in map(str, sites)},
             **({} if args.labels == "given" else {"labels": f"{args.labels} (label seed {args.label_seed})"}),
             "fit_position": args.position, "dpo": pair.dpo_id, "dpo_is_adapter": pair.uses_adapter,
             "peak_rss_mib": round(peak_rss_mib())}
    if len(sites) == 1 or args.default_layer is not None:
        extra["default_layer"] = str(sites[0] if args.default_layer is None else
                                     resolve_site(parse_layers(args.default_layer)[0], n_layers))
    record = provenance_record(args, data=[args.data], models=pair_models(pair), seeds={"seed": args.seed})
    out = save_vectors(args.out, vectors, model=pair.base, model_id=model_name(args.pretrained), method=method,
                       n_examples=len(pairs), extra=extra, provenance=record)
    sidecar.unlink(missing_ok=True)
    summary = ", ".join(f"{s}: |v| {float(v.norm()):.3g}, loss {done[str(s)]['record']['first_loss']:.4g} -> "
                        f"{done[str(s)]['record']['final_loss']:.4g}{kept_step(done[str(s)]['record'])}"
                        for s, v in vectors.items())
    print(f"wrote {out} ({method}, position={args.position}, {len(pairs)} pairs of part {args.part}): {summary}; "
          f"steer with vector={out},position={args.position}")
    return 0
