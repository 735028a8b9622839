"""``dsteer-eval extract``: extract steering vectors into a .safetensors file.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dsteer_eval.cli import extract_fit
from dsteer_eval.cli.shared import (
    add_pair_args,
    default_pairs,
    layer_flag,
    pair_models,
    pairs_from_args,
    peak_rss_mib,
    provenance_record,
)


def add(verbs) -> None:
    p = verbs.add_parser(
        "extract",
        help="extract steering vectors for every layer into a .safetensors file",
        description="Extract a steering vector at every hidden-state site and write a dsteer-eval "
        "vector file (safetensors with metadata). dpo-diff compares a base/DPO pair; with --peft the "
        "DPO side is the adapter, toggled on one model in memory.",
    )
    p.add_argument("--method", choices=["dpo-diff", "preference", "caa", "distill", "dpo-vector"], default="dpo-diff",
                   help="dpo-diff: mean h_dpo - h_base at the last prompt token (D-STEER's v); "
                   "preference: mean W_U[y_w] - W_U[y_l] at the first divergent reply token (final site only); "
                   "caa: mean h(prompt+chosen) - h(prompt+rejected) at the last reply token; "
                   "distill: the vector minimising next-token KL to the other model (--direction install/undo); "
                   "dpo-vector: the vector trained with the DPO loss on the base (bi-directional preference "
                   "optimisation); both fitted per --layers through the frozen pair")
    add_pair_args(p)
    p.add_argument("--part", choices=["train", "vector", "probe", "eval", "all"], default=None,
                   help="use only the pairs/prompts of this part of the file-level split (dsteer_eval.data.splits; "
                   "v-bar is extracted on 'vector'); default: all (distill: vector, dpo-vector: train)")
    p.add_argument("--default-layer", default=None,
                   help="record the layer used when layer= is omitted (int, negative, or final)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    extract_fit.add_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsteer_eval.dpo import extract
    from dsteer_eval.common.output_folder import check_writable
    from dsteer_eval.models.defaults import model_name, resolve_dpo_side
    from dsteer_eval.vectors import save_vectors

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if Path(args.out).expanduser().is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the path of the .safetensors file to write")
    check_writable(args.out)  # before any data or model loads
    if args.method in ("distill", "dpo-vector"):
        return extract_fit.run_fit(args)
    if args.part is None:
        args.part = "all"
    stats: dict = {}
    if args.method == "dpo-diff":
        from dsteer_eval.dpo.model_pair import ModelPair
        from dsteer_eval.data.preference_pairs import load_prompts

        prompts, source = load_prompts(args.data or default_pairs(), data_dir=args.data_dir, split=args.split,
                                       limit=args.limit, offset=args.offset,
                                       part=args.part)  # fail before loading models
        extra = {"data": source}
        if args.part not in (None, "all"):
            extra["part"] = args.part
        side = resolve_dpo_side(args.pretrained, dpo=args.dpo, peft=args.peft)
        pair = ModelPair.load(args.pretrained, **side)
        vectors = extract.dpo_diff(pair, prompts, batch_size=args.batch_size, stats=stats)
        model, n, models = pair.base, len(prompts), pair_models(pair)
        extra.update({"dpo": pair.dpo_id, "dpo_is_adapter": pair.uses_adapter, "prompts": n})
    else:
        from dsteer_eval.models.loading import load_model
        from dsteer_eval.models.identity import model_entry

        pairs = pairs_from_args(args)  # fail on bad data before loading the model
        extra = {"data": pairs.source, "skipped": dict(pairs.skipped)}
        if pairs.part:
            extra["pairs_other_parts"] = pairs.other_parts
        model, tokenizer, _ = load_model(args.pretrained, peft=args.peft)
        models = [model_entry("base", model_name(args.pretrained), model=model)]
        if args.peft:
            models.append(model_entry("adapter", args.peft))
        if args.method == "caa":
            vectors, n = extract.caa(model, tokenizer, pairs, batch_size=args.batch_size, stats=stats), len(pairs)
        else:
            vectors, n = extract.preference(model, tokenizer, pairs)
            extra["pairs_without_divergence"] = len(pairs) - n
    if args.default_layer is not None:
        site = layer_flag(args.default_layer, model, "--default-layer")
        if site not in vectors:
            raise ValueError(f"--default-layer {args.default_layer}: the {args.method} file holds layers {sorted(vectors)}")
        extra["default_layer"] = str(site)
    elif len(vectors) == 1:
        extra["default_layer"] = str(next(iter(vectors)))
    truncated = int(stats.get("truncated", 0))
    if args.method != "preference":  # the preference method runs no forward pass
        extra["truncated_texts"] = truncated
        if stats.get("context"):
            extra["context_tokens"] = int(stats["context"])
    extra["peak_rss_mib"] = round(peak_rss_mib())
    record = provenance_record(args, data=[args.data or default_pairs()], models=models)
    out = save_vectors(args.out, vectors, model=model, model_id=model_name(args.pretrained),
                       method=args.method, n_examples=n, extra=extra, provenance=record)
    norms = ", ".join(f"{s}:{float(v.norm()):.3g}" for s, v in vectors.items() if s % 5 == 0 or len(vectors) == 1)
    cut = (f"; {truncated} text(s) longer than the model's context were cut to their last "
           f"{stats.get('context')} tokens" if truncated else "")
    print(f"wrote {out}: {len(vectors)} site(s) from {n} examples (|v| by layer {norms}); "
          f"peak memory {extra['peak_rss_mib']} MiB{cut}")
    return 0
