"""``dsteer-eval probe``: the D-STEER probes on a base/DPO pair.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse

from dsteer_eval.cli.shared import (
    add_pair_args,
    default_pairs,
    layer_flag,
    pair_models,
    pairs_from_args,
    provenance_record,
)


def add(verbs) -> None:
    p = verbs.add_parser(
        "probe",
        help="run the D-STEER probes on a base/DPO pair: one JSON report plus PNG figures",
        description="Projection and logit margins, directional consistency, gradient coherence, "
        "spectra of the DPO update per layer, and the steering identity (restoration/reproduction KL "
        "over an alpha grid). Writes OUT/probe_report.json and OUT/*.png.",
    )
    add_pair_args(p)
    p.add_argument("--vector", default=None,
                   help="v-bar file (default: the shipped vector for the embedded pair, else the "
                   "in-sample mean of delta over the probe prompts)")
    p.add_argument("--in-sample", action="store_true", help="use the in-sample mean of delta even if a vector is shipped")
    p.add_argument("--layer", default=None, help="layer for consistency and the steering identity "
                   "(default: the vector's default layer, else 2/3 of the depth)")
    p.add_argument("--alphas", default="0,0.5,1,1.5,2", help="alpha grid for the steering identity")
    p.add_argument("--beta", type=float, default=None, help="DPO beta for gradient coherence "
                   "(default: from the adapter's dpo_card.json, else 0.1)")
    p.add_argument("--grad-pairs", type=int, default=64, help="pairs used for gradient coherence")
    p.add_argument("--max-length", type=int, default=256, help="token cap of prompt+reply for gradients")
    p.add_argument("--part", choices=["train", "vector", "probe", "eval", "all"], default="all",
                   help="probe on this part of the file-level split only (docs/data-and-splits.md); the pipeline uses probe")
    p.add_argument("--no-nulls", action="store_true",
                   help="skip the null adapter (the DPO update's rows permuted, rescaled to DPO's mean |delta| at "
                   "--layer) and the verdicts against it")
    p.add_argument("--null-seed", type=int, default=0,
                   help="seed of the null adapter's permutations, the random directions and the relabelled half")
    p.add_argument("--random-controls", type=int, default=1,
                   help="norm-matched random directions in place of v-bar at --layer (0: none)")
    p.add_argument("--lattice-pairs", type=int, default=8,
                   help="preference pairs for the Fig 1(b) lattice field at final (0: skip it)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsteer_eval.models.defaults import resolve_dpo_side, shipped_vector
    from dsteer_eval.dpo.model_pair import ModelPair
    from dsteer_eval.common.output_folder import check_free
    from dsteer_eval.probes.report import run_probes, write_report
    from dsteer_eval.steering.args import parse_alphas
    from dsteer_eval.vectors import check_compatible, load_vectors

    alphas = parse_alphas(args.alphas.replace(",", ";"))
    for flag in ("null_seed", "random_controls", "lattice_pairs"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be 0 or more")
    out = check_free(args.out, args.overwrite)  # before any model loads; write_report checks again
    pairs = pairs_from_args(args)
    side = resolve_dpo_side(args.pretrained, dpo=args.dpo, peft=args.peft)
    vector = args.vector
    if vector is None and not args.in_sample and not args.dpo and not args.peft:
        vector = shipped_vector(args.pretrained)  # the shipped pair's v̄ (None for other models: in-sample mean)
    vf = load_vectors(vector, argument="--vector") if vector else None
    pair = ModelPair.load(args.pretrained, **side)
    vectors, info, layer = None, None, None
    if vf is not None:
        check_compatible(vf, pair.base, argument="--vector")
        vectors = vf.vectors
        info = {"source": str(vf.path), "method": vf.metadata.get("method", ""),
                "data": vf.metadata.get("data", "")}
        if args.layer is None and "default_layer" in vf.metadata:
            layer = int(vf.metadata["default_layer"])
    if args.layer is not None:
        layer = layer_flag(args.layer, pair.base, "--layer")
    beta = args.beta
    if beta is None:
        from dsteer_eval.dpo.training import read_card

        card = read_card(side["adapter"]) if "adapter" in side else None
        beta = float(card["hyperparameters"]["beta"]) if card else 0.1
    report = run_probes(pair, pairs, vectors=vectors, vector_info=info, layer=layer, alphas=alphas, beta=beta,
                        grad_pairs=args.grad_pairs, batch_size=args.batch_size, max_length=args.max_length,
                        data_info={"source": pairs.source, "skipped": dict(pairs.skipped)},
                        nulls=not args.no_nulls, null_seed=args.null_seed, random_controls=args.random_controls,
                        lattice_pairs=args.lattice_pairs)
    from dsteer_eval.common.provenance import data_entry

    inputs = [data_entry(args.data or default_pairs(), "pairs")] + ([data_entry(vf.path, "vector")] if vf else [])
    record = provenance_record(args, data=inputs, models=pair_models(pair), seeds={"null_seed": args.null_seed})
    path = write_report(report, out, figures=not args.no_figures, overwrite=args.overwrite, provenance=record)
    h = report["headline"]
    print(f"wrote {path}, {path.parent / 'verdicts.md'} (+{len(report.get('figures', []))} figures)")
    for key, value in h.items():
        print(f"  {key:40s} {value if value is None else round(value, 4)}")
    if (report.get("nulls") or {}).get("error"):
        print(f"  null adapter: not available ({report['nulls']['error']})")
    for v in report.get("verdicts", []):
        d = v["delta"]
        print(f"  [{v['verdict']:>12s}] {v['claim']} (Δ {d['mean']:+.3g} [{d['low']:+.3g}, {d['high']:+.3g}])")
    return 0
