"""``dsteer-eval`` command line: one verb a job, each with ``--help``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dsteer_eval.models.embedded import DEFAULT_MODEL


def _cmd_model_path(args: argparse.Namespace) -> int:
    from dsteer_eval.models.embedded import ensure_embedded

    print(ensure_embedded(args.name))
    return 0


def _default_pairs() -> str:
    from dsteer_eval.harness.plugin import tasks_dir

    return f"{tasks_dir()}/hh/hh_mini.jsonl"


def _load_pairs(args: argparse.Namespace):
    from dsteer_eval.data.preference_pairs import load_pairs

    source = args.data or _default_pairs()
    return load_pairs(source, data_dir=args.data_dir, split=args.split, limit=args.limit, offset=args.offset,
                      part=getattr(args, "part", None))


def _dpo_side(args: argparse.Namespace) -> dict:
    """``dpo=`` or ``adapter=`` for ModelPair.load; the shipped adapter for the embedded model."""
    from dsteer_eval.models.embedded import DEFAULT_MODEL, default_adapter, is_embedded_name

    if args.dpo and args.peft:
        raise ValueError("give the DPO model as --dpo CHECKPOINT or as --peft ADAPTER, not both")
    if args.dpo:
        return {"dpo": args.dpo}
    if args.peft:
        return {"adapter": args.peft}
    if args.pretrained is None or is_embedded_name(args.pretrained):
        name = DEFAULT_MODEL if args.pretrained is None else args.pretrained.strip().lower()
        shipped = default_adapter(name)
        if shipped is not None:
            return {"adapter": str(shipped)}
    raise ValueError("this method needs the DPO model: pass --dpo CHECKPOINT or --peft ADAPTER_FOLDER")


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _site(value: str, model, flag: str) -> int:
    from dsteer_eval.steering.sites import resolve_parts
    from dsteer_eval.steering.args import parse_layers, resolve_site

    layers = parse_layers(value)
    if len(layers) != 1:
        raise ValueError(f"{flag} takes one layer, got {value!r}")
    return resolve_site(layers[0], resolve_parts(model).num_layers)


def _provenance_command(args: argparse.Namespace) -> str:
    """This command's exact line, ``dsteer-eval VERB ...`` (secrets redacted), for provenance records."""
    from dsteer_eval.common.provenance import command_line

    return command_line(getattr(args, "_argv", None))


def _provenance(args: argparse.Namespace, *, data=(), models=(), seeds=None) -> dict:
    """The provenance record of this command (dsteer_eval.common.provenance), with its exact command line."""
    from dsteer_eval.common.provenance import collect

    return collect(data=data, models=models, seeds=seeds, command=_provenance_command(args))


def _pair_models(pair) -> list[dict]:
    """Provenance entries of a base/DPO pair: the base (loaded) and the adapter or DPO checkpoint."""
    from dsteer_eval.models.identity import model_entry

    base = model_entry("base", pair.base_id, model=pair.base)
    if pair.uses_adapter:
        return [base, model_entry("adapter", pair.dpo_id)]
    return [base, model_entry("dpo", pair.dpo_id, model=pair.dpo)]


def _cmd_extract(args: argparse.Namespace) -> int:
    from dsteer_eval.dpo import extract
    from dsteer_eval.common.output_folder import check_writable
    from dsteer_eval.vectors import save_vectors

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if Path(args.out).expanduser().is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the path of the .safetensors file to write")
    check_writable(args.out)  # before any data or model loads
    stats: dict = {}
    if args.method == "dpo-diff":
        from dsteer_eval.dpo.model_pair import ModelPair
        from dsteer_eval.data.preference_pairs import load_prompts

        prompts, source = load_prompts(args.data or _default_pairs(), data_dir=args.data_dir, split=args.split,
                                       limit=args.limit, offset=args.offset,
                                       part=args.part)  # fail before loading models
        extra = {"data": source}
        if args.part not in (None, "all"):
            extra["part"] = args.part
        side = _dpo_side(args)
        pair = ModelPair.load(args.pretrained, **side)
        vectors = extract.dpo_diff(pair, prompts, batch_size=args.batch_size, stats=stats)
        model, n, models = pair.base, len(prompts), _pair_models(pair)
        extra.update({"dpo": pair.dpo_id, "dpo_is_adapter": pair.uses_adapter, "prompts": n})
    else:
        from dsteer_eval.models.loading import load_model
        from dsteer_eval.models.identity import model_entry

        pairs = _load_pairs(args)  # fail on bad data before loading the model
        extra = {"data": pairs.source, "skipped": dict(pairs.skipped)}
        if pairs.part:
            extra["pairs_other_parts"] = pairs.other_parts
        model, tokenizer, _ = load_model(args.pretrained, peft=args.peft)
        models = [model_entry("base", args.pretrained or DEFAULT_MODEL, model=model)]
        if args.peft:
            models.append(model_entry("adapter", args.peft))
        if args.method == "caa":
            vectors, n = extract.caa(model, tokenizer, pairs, batch_size=args.batch_size, stats=stats), len(pairs)
        else:
            vectors, n = extract.preference(model, tokenizer, pairs)
            extra["pairs_without_divergence"] = len(pairs) - n
    if args.default_layer is not None:
        site = _site(args.default_layer, model, "--default-layer")
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
    extra["peak_rss_mib"] = round(_peak_rss_mib())
    record = _provenance(args, data=[args.data or _default_pairs()], models=models)
    out = save_vectors(args.out, vectors, model=model, model_id=str(args.pretrained or "smollm2"),
                       method=args.method, n_examples=n, extra=extra, provenance=record)
    norms = ", ".join(f"{s}:{float(v.norm()):.3g}" for s, v in vectors.items() if s % 5 == 0 or len(vectors) == 1)
    cut = (f"; {truncated} text(s) longer than the model's context were cut to their last "
           f"{stats.get('context')} tokens" if truncated else "")
    print(f"wrote {out}: {len(vectors)} site(s) from {n} examples (|v| by layer {norms}); "
          f"peak memory {extra['peak_rss_mib']} MiB{cut}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from dsteer_eval.models.embedded import default_vector, is_embedded_name
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
    pairs = _load_pairs(args)
    side = _dpo_side(args)
    vector = args.vector
    if vector is None and not args.in_sample and not args.dpo and not args.peft and (
            args.pretrained is None or is_embedded_name(args.pretrained)):
        shipped = default_vector(DEFAULT_MODEL if args.pretrained is None else args.pretrained.strip().lower())
        vector = str(shipped) if shipped else None
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
        layer = _site(args.layer, pair.base, "--layer")
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

    inputs = [data_entry(args.data or _default_pairs(), "pairs")] + ([data_entry(vf.path, "vector")] if vf else [])
    record = _provenance(args, data=inputs, models=_pair_models(pair), seeds={"null_seed": args.null_seed})
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


def _cmd_winrate(args: argparse.Namespace) -> int:
    import json

    from dsteer_eval.metrics.judge import build_judge, criterion, judge_spec
    from dsteer_eval.metrics.winrate import paired_answers, win_rate

    criterion(args.criterion)  # bad criteria and sample files fail before the judge loads
    answers = paired_answers(args.a, args.b)
    result = win_rate(build_judge(args.judge or judge_spec()), *answers, args.criterion)
    text = json.dumps(result.to_dict(), indent=2)
    if args.out:
        from dsteer_eval.common.output_folder import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    shown = "n/a" if result.win_rate is None else f"{result.win_rate:.3f}"
    err = "" if result.stderr is None else f" \u00b1 {result.stderr:.3f}"
    print(f"win-rate of A over B on {args.criterion}: {shown}{err} (n={result.n}, failed={result.n_failed}, "
          f"judge {result.judge})")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from dsteer_eval.sweep.runner import SweepConfig, run_sweep

    config = SweepConfig(**{f.name: getattr(args, f.name) for f in fields(SweepConfig)})
    failures = run_sweep(config)
    _write_leaderboard([config.output], config.output, plots=not args.no_plots)
    if failures:
        print(f"dsteer-eval sweep: {failures} (point, task) run(s) failed: marked 'failed' in the table; "
              f"see points/*/*/failed.json, fix the cause and re-run the same command to retry them",
              file=sys.stderr)
    return 1 if failures else 0


def _write_leaderboard(paths, out, *, plots: bool = True) -> None:
    from dsteer_eval.leaderboard import build_leaderboard, write_leaderboard
    from dsteer_eval.leaderboard.render import markdown

    board = build_leaderboard(paths)
    written = write_leaderboard(board, out, plots=plots)
    print(markdown(board))
    print(f"wrote {', '.join(str(p) for p in written.values())}")


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    _write_leaderboard(args.folders, args.out or args.folders[0], plots=not args.no_plots)
    return 0


def _model_skeleton(pretrained: str):
    """The model's architecture on the meta device (config only, no weights): names, sizes, fingerprint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from dsteer_eval.models.embedded import resolve_pretrained

    config = AutoConfig.from_pretrained(resolve_pretrained(pretrained))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _cmd_convert(args: argparse.Namespace) -> int:
    from dsteer_eval.common.provenance import command_line
    from dsteer_eval.vectors.convert import convert

    model = _model_skeleton(args.model) if args.model else None
    done = convert(args.input, args.output, to=args.to, model=model, num_layers=args.num_layers,
                   alpha=args.alpha, layers=args.layers or None, force=args.force,
                   command=command_line(args._argv))
    print(f"{done.source} ({done.source_format}) -> {done.out} ({done.out_format}): sites "
          f"{', '.join(map(str, done.sites))}")
    if done.left_out:
        print(f"left out {len(done.left_out)} site(s) that {done.out_format} cannot hold:")
        for site, why in sorted(done.left_out.items()):
            print(f"  site {site}: {why}")
    return 0


def _cmd_ceiling(args: argparse.Namespace) -> int:
    import json

    from dsteer_eval.sweep.ceiling import ceiling_for
    from dsteer_eval.dpo.extract import unique_prompts
    from dsteer_eval.harness.plugin import tasks_dir
    from dsteer_eval.common.output_folder import atomic_write_text, check_writable
    from dsteer_eval.data.preference_pairs import load_pairs
    from dsteer_eval.sweep.runner import split_model_args

    if args.prompts < 1:
        raise ValueError("--prompts must be >= 1")
    check_writable(args.out, "--out")
    _, kwargs, layer = split_model_args(args.model_args)
    prompts = unique_prompts(load_pairs(args.data or f"{tasks_dir()}/hh/hh_mini.jsonl"))[: args.prompts]
    result = ceiling_for(kwargs, args.layer or layer, prompts, device=args.device, start=args.start, steps=args.steps,
                         max_new_tokens=args.max_new_tokens, max_degenerate=args.max_degenerate,
                         max_perplexity_ratio=args.max_perplexity_ratio)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"ceiling at layer {result['layer']}: alpha >= -{result['negative']['ceiling']:g} and <= "
          f"{result['positive']['ceiling']:g} (|v| = {result['vector_norm']:.4g}) -> {args.out}")
    return 0


def _add_sweep(verbs) -> None:
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
    p.add_argument("--base-alphas", default="auto",
                   help="alphas for the base side (the PEFT adapter switched off, peft=none): 'auto' (default) = 0 "
                   "and the grid's positive alphas when the model has an adapter, 'none', or a comma list")
    p.add_argument("--no-shared-prefix", dest="shared_prefix", action="store_false",
                   help="compute every layer for every alpha (for checking the shared lower layers)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="delete --output first instead of resuming")
    p.set_defaults(func=_cmd_sweep)

    p = verbs.add_parser(
        "ceiling",
        help="the largest |alpha| per side before generations degenerate (judge-free), for relative alpha grids",
        description="Generate greedily on the probe prompts at |alpha| = start, 2*start, ... for each sign and keep the "
        "largest strength at which at most --max-degenerate of the outputs are degenerate (empty, garbled, loops) and "
        "their perplexity under the unsteered model stays within --max-perplexity-ratio of its own outputs'. "
        "Writes ceiling.json for `dsteer-eval sweep --alphas rel:... --ceiling`.",
    )
    p.add_argument("--model-args", default="", help="as for sweep (no alpha=); default: the shipped pair")
    p.add_argument("--layer", default=None, help="layer (default: layer= of --model-args, else the vector's default)")
    p.add_argument("--data", default=None, help="preference pairs whose prompts are used (default: shipped hh_mini)")
    p.add_argument("--prompts", type=int, default=16, help="how many prompts (default 16)")
    p.add_argument("--start", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-degenerate", type=float, default=0.1)
    p.add_argument("--max-perplexity-ratio", type=float, default=3.0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="the ceiling.json to write")
    p.set_defaults(func=_cmd_ceiling)

    p = verbs.add_parser(
        "leaderboard",
        help="rebuild leaderboard tables and plots from sweep folders or plain lm_eval --output_path folders",
        description="Read every lm-eval results_*.json (and sweep extras) under the folders and write "
        "leaderboard.{md,csv,json,html} and plots/ into --out (default: the first folder).",
    )
    p.add_argument("folders", nargs="+", help="sweep output folders or lm_eval --output_path folders")
    p.add_argument("--out", default=None, help="where to write the tables (default: the first folder)")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_cmd_leaderboard)


def _cmd_train_dpo(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from dsteer_eval.dpo.training import PRESETS, DPOSettings, preset_settings, train_dpo

    given = getattr(args, "_given", set())
    if args.preset:
        settings = preset_settings(args.preset)
        for f in fields(DPOSettings):
            if f.name in given:  # a flag on the command line overrides the preset
                setattr(settings, f.name, getattr(args, f.name))
        if "steps" in given and "epochs" not in given:
            settings.epochs = 0.0  # --steps N replaces the preset's epoch count instead of being ignored
        part = args.part if "part" in given else PRESETS[args.preset]["part"]
    else:
        settings = DPOSettings(**{f.name: getattr(args, f.name) for f in fields(DPOSettings)})
        part = args.part
    if args.hparam_sweep:  # checked before any training: a run off the sweep's choice is refused
        from dsteer_eval.dpo.hparam_choice import check

        check(settings.beta, settings.learning_rate, args.hparam_sweep)
    card = train_dpo(args.data, args.out, settings, pretrained=args.pretrained, data_dir=args.data_dir,
                     split=args.split, limit=args.limit, part=None if part == "all" else part, preset=args.preset,
                     overwrite=args.overwrite, checkpoint_dir=args.checkpoint_dir, save_steps=args.save_steps,
                     resume=args.resume, eval_part=args.eval_part, command=_provenance_command(args))
    if args.hparam_sweep:
        from dsteer_eval.dpo.hparam_choice import record

        card = record(args.out, args.hparam_sweep)
    m = card["metrics"]
    line = ", ".join(
        f"{name} reward accuracy {v['reward_accuracy']:.3f} margin {v['reward_margin_mean']:+.4f}"
        for name, v in m.items() if "reward_accuracy" in v  # eval_by_kind holds one such entry per kind
    )
    line += "".join(f"; eval {kind}: reward accuracy {v['reward_accuracy']:.3f} margin {v['reward_margin_mean']:+.4f}"
                    for kind, v in m.get("eval_by_kind", {}).items())
    d = card["data"]
    print(f"wrote {args.out} ({card['kind']}, {card['steps_done']} steps, {card['seconds_per_step']} s/step; "
          f"part {d['part']}: {d['pairs_train']} train / {d['pairs_eval']} eval pairs, "
          f"{d['prompts_truncated']} prompts left-truncated): {line}")
    return 0


def _describe_preset(spec: dict) -> str:
    """A preset's recipe in words, from PRESETS (so the help cannot go stale)."""
    st = spec["settings"]
    length = f"{st['epochs']:g} epoch" if st.get("epochs") else f"{st.get('steps')} steps"
    return (f"LoRA r{st['lora_r']}/a{st['lora_alpha']} {st['lora_targets']}, beta {st['beta']:g}, "
            f"lr {st['learning_rate']:g}, {length}, warmup {st['warmup_steps']}, batch {st['batch_size']}, "
            f"--part {spec['part']}")


class _Given(argparse.Action):
    """Stores like ``store`` and records that the flag was given (so it can override a preset)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.__dict__.setdefault("_given", set()).add(self.dest)


class _GivenBool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.__dict__.setdefault("_given", set()).add(self.dest)


def _cmd_dpo_gate(args: argparse.Namespace) -> int:
    from dsteer_eval.dpo.gate import command_line, evaluate_adapter, write_heldout

    measured = evaluate_adapter(args.adapter, args.data, part=args.part, eval_size=args.eval_size,
                                pretrained=args.pretrained, device=args.device, command=_provenance_command(args))
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


def _add_dpo_gate(verbs) -> None:
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
    p.set_defaults(func=_cmd_dpo_gate)


def _cmd_build_refusal(args: argparse.Namespace) -> int:
    from dsteer_eval.data.refusal_set import CARD_NAME, PAIRS_NAME, build_refusal

    card = build_refusal(args.hh, args.truthfulqa, args.out)
    print(f"wrote {Path(args.out) / PAIRS_NAME} ({card['rows']} pairs) and {Path(args.out) / CARD_NAME}")
    for part, kinds in card["counts"].items():
        print(f"  {part:7s} harmful {kinds['harmful']:5d}  harmless {kinds['harmless']:5d}")
    for why, n in card["left_out"].items():
        print(f"  left out: {n} ({why})")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from dsteer_eval.describe.files import describe, render

    found = describe(args.file)
    print(json.dumps(found, indent=1) if args.json else render(found))
    return 0


def _add_info(verbs) -> None:
    p = verbs.add_parser(
        "info",
        help="print what a dsteer-eval output is and how it was made (its provenance)",
        description="Describe a vector file (.safetensors, .gguf, .pt), a dpo_card.json, probe_report.json or "
        "sweep.json, or a folder holding one (train-dpo adapter, probe or sweep output): its kind, key facts "
        "(layers and norms, data, model, settings) and provenance: package version, git commit, the exact "
        "command, the sha256 of the input data, the models' fingerprints and the seeds.",
    )
    p.add_argument("file", help="the output file or folder to describe")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=_cmd_info)


def _add_build_refusal(verbs) -> None:
    p = verbs.add_parser(
        "build-refusal",
        help="build the refusal preference set (harmful HH requests + harmless TruthfulQA questions)",
        description="Write OUT/refusal_pairs.jsonl.gz (prompt/chosen/rejected with kind and part) and "
        "OUT/refusal_card.json. Harmful rows: HH pairs whose rejected reply does not refuse; chosen = one of "
        "10 refusal phrasings (seeded by the prompt), rejected = the data set's reply. Harmless rows: "
        "TruthfulQA questions; chosen = the best answer, rejected = a refusal phrasing.",
    )
    p.add_argument("--hh", required=True, help="HH-RLHF harmless-base JSONL(.gz) (chosen/rejected dialogues)")
    p.add_argument("--truthfulqa", required=True, help="TruthfulQA CSV (original columns) or truthful_qa JSONL")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_build_refusal)


def _add_pair_args(p) -> None:
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


def _add_train_dpo(verbs) -> None:
    from dsteer_eval.dpo.training import DEFAULT_SAVE_STEPS, PRESETS, DPOSettings

    d = DPOSettings()
    p = verbs.add_parser(
        "train-dpo",
        help="train a DPO model (LoRA adapter by default) with trl's DPOTrainer",
        description="Train the DPO half of a base/DPO pair with trl's DPOTrainer on HH-style preference "
        "pairs, and write the adapter (or full model) with a JSON card of data, hyper-parameters and "
        "train/eval reward accuracy and margins.",
    )
    p.add_argument("--data", required=True,
                   help="local JSONL(.gz) (chosen/rejected HH dialogues, or prompt/chosen/rejected) "
                   "or a hub dataset id such as Anthropic/hh-rlhf")
    p.add_argument("--data-dir", default=None, help="hub data_dir, e.g. harmless-base")
    p.add_argument("--split", default="train", help="hub split (default: train)")
    p.add_argument("--limit", type=int, default=None,
                   help="read at most this many usable pairs (with --part train: train on at most this many)")
    p.add_argument("--part", choices=["train", "all"], default="all", action=_Given,
                   help="train: train on the split's train part and measure eval rewards on its eval part "
                   "(the vector/probe/eval parts are never trained on); all: every pair, --eval-size held out "
                   "at random (default: all, or the preset's part)")
    p.add_argument("--eval-part", choices=["eval", "vector", "probe"], default="eval",
                   help="with --part train: the part held-out rewards come from (default eval; vector for "
                   "hyper-parameter selection that must not look at the eval part)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="documented recipe (flags given override it): " + "; ".join(
                       f"{name} ({_describe_preset(spec)})" for name, spec in sorted(PRESETS.items())))
    p.add_argument("--pretrained", default=None, help="hub id, local path or 'smollm2' (default: embedded)")
    p.add_argument("--out", required=True, help="output folder (created when training finishes)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder (and delete an unfinished run's checkpoints)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where resumable checkpoints go (default: OUT.checkpoints beside --out; deleted when "
                   "training finishes)")
    p.add_argument("--save-steps", type=int, default=DEFAULT_SAVE_STEPS,
                   help=f"save a checkpoint every this many steps (default {DEFAULT_SAVE_STEPS}; 0: none)")
    p.add_argument("--hparam-sweep", default=None, metavar="SWEEP_JSON",
                   help="the scripts/dpo_hparam_sweep.py report that chose beta and the learning rate: checked "
                        "before training (a run with other values is refused) and recorded in the card")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its newest checkpoint (same command plus --resume)")
    p.add_argument("--beta", type=float, default=d.beta, action=_Given, help=f"DPO beta (default {d.beta})")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, action=_Given,
                   help=f"default {d.learning_rate}")
    p.add_argument("--steps", type=int, default=d.steps, action=_Given, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--epochs", type=float, default=d.epochs, action=_Given,
                   help="> 0: passes over the train pairs, replacing --steps (steps = ceil(epochs x pairs / "
                   "(batch size x grad accum)))")
    p.add_argument("--batch-size", type=int, default=d.batch_size, action=_Given,
                   help=f"pairs per step (default {d.batch_size})")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, action=_Given, help="gradient accumulation steps")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, action=_Given)
    p.add_argument("--max-length", type=int, default=d.max_length, action=_Given,
                   help=f"tokens of prompt+reply; replies are cut to fit (default {d.max_length})")
    p.add_argument("--max-prompt-length", type=int, default=d.max_prompt_length, action=_Given,
                   help=f"longer prompts are left-truncated to their final turns and counted (default "
                   f"{d.max_prompt_length})")
    p.add_argument("--eval-size", type=int, default=d.eval_size, action=_Given,
                   help="held-out pairs for eval rewards (with --part train: drawn from the eval part)")
    p.add_argument("--full", action=_GivenBool, default=d.full, help="full fine-tuning instead of LoRA")
    p.add_argument("--lora-r", type=int, default=d.lora_r, action=_Given)
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha, action=_Given)
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout, action=_Given)
    p.add_argument("--lora-targets", default=d.lora_targets, action=_Given,
                   help="'all-linear' or comma-separated module names (q_proj,v_proj,...)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision, action=_Given,
                   help="auto: bf16 on CUDA with bf16 support, else fp32 (bf16 is very slow on most CPUs)")
    p.add_argument("--lm-head", choices=["auto", "trl", "compact"], default=d.lm_head, action=_Given,
                   help="auto: trl's fused head on GPU, dsteer-eval's compact head on CPU (same numbers)")
    p.add_argument("--gradient-checkpointing", action=_GivenBool, default=d.gradient_checkpointing)
    p.add_argument("--seed", type=int, default=d.seed, action=_Given)
    p.add_argument("--logging-steps", type=int, default=d.logging_steps, action=_Given)
    p.set_defaults(func=_cmd_train_dpo)


def build_parser() -> argparse.ArgumentParser:
    from dsteer_eval import __version__

    parser = argparse.ArgumentParser(
        prog="dsteer-eval",
        description="D-STEER evaluation tools for lm-evaluation-harness "
        "(the lm-eval model is `lm_eval --model steered`).",
    )
    parser.add_argument("--version", action="version", version=f"dsteer-eval {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "model-path",
        help="print the local folder of an embedded model (dequantizing it on first use)",
        description="Print the folder of the dequantized embedded model, for tools that want a path "
        "(e.g. `lm_eval --model hf --model_args pretrained=$(dsteer-eval model-path)`).",
    )
    p.add_argument("name", nargs="?", default="smollm2", help="embedded model name (default: smollm2)")
    p.set_defaults(func=_cmd_model_path)

    p = verbs.add_parser(
        "extract",
        help="extract steering vectors for every layer into a .safetensors file",
        description="Extract a steering vector at every hidden-state site and write a dsteer-eval "
        "vector file (safetensors with metadata). dpo-diff compares a base/DPO pair; with --peft the "
        "DPO side is the adapter, toggled on one model in memory.",
    )
    p.add_argument("--method", choices=["dpo-diff", "preference", "caa"], default="dpo-diff",
                   help="dpo-diff: mean h_dpo - h_base at the last prompt token (D-STEER's v); "
                   "preference: mean W_U[y_w] - W_U[y_l] at the first divergent reply token (final site only); "
                   "caa: mean h(prompt+chosen) - h(prompt+rejected) at the last reply token")
    _add_pair_args(p)
    p.add_argument("--part", choices=["train", "vector", "probe", "eval", "all"], default="all",
                   help="use only the pairs/prompts of this part of the file-level split (dsteer_eval.data.splits; "
                   "v-bar is extracted on 'vector'); default: all")
    p.add_argument("--default-layer", default=None,
                   help="record the layer used when layer= is omitted (int, negative, or final)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=_cmd_extract)

    p = verbs.add_parser(
        "convert",
        help="convert a steering-vector file between dsteer-eval safetensors, llama.cpp GGUF and lm-eval .pt",
        description="Convert a vector file between formats: dsteer-eval .safetensors, llama.cpp/repeng "
        "control-vector .gguf (direction.<k> = output of block k = our site k+1), lm-eval's built-in "
        "steer_path .pt dict, and the D-STEER authors' {layer: tensor} .pt (read and written with --to "
        "dsteer-authors-pt). The input format is detected from the file's content.",
    )
    p.add_argument("input", metavar="IN", help="vector file to read (any supported format)")
    p.add_argument("output", metavar="OUT", help="file to write; format from its suffix or --to")
    p.add_argument("--to", choices=["safetensors", "gguf", "lm-eval-pt", "dsteer-authors-pt"], default=None,
                   help="output format (default: from OUT's suffix; .pt means lm-eval-pt)")
    p.add_argument("--model", default=None,
                   help="hub id, path or 'smollm2': checks the vectors fit it and names lm-eval hookpoints "
                   "after its modules (only its config is read)")
    p.add_argument("--num-layers", type=int, default=None,
                   help="the model's decoder-layer count, when neither the file nor --model gives it")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="lm-eval .pt only: the steering_coefficient written (default 1)")
    p.add_argument("--layers", default=None,
                   help="convert only these sites (ours): 20, 10;20, ranges 2-29, negative from the end, mixed "
                   "2-5;10;-1 (default: every site the target can hold; the others are listed with the reason)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_convert)
    _add_train_dpo(verbs)
    _add_dpo_gate(verbs)
    _add_build_refusal(verbs)
    _add_sweep(verbs)
    _add_info(verbs)

    p = verbs.add_parser(
        "probe",
        help="run the D-STEER probes on a base/DPO pair: one JSON report plus PNG figures",
        description="Projection and logit margins, directional consistency, gradient coherence, "
        "spectra of the DPO update per layer, and the steering identity (restoration/reproduction KL "
        "over an alpha grid). Writes OUT/probe_report.json and OUT/*.png.",
    )
    _add_pair_args(p)
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
    p.set_defaults(func=_cmd_probe)

    p = verbs.add_parser(
        "winrate",
        help="pairwise G-Eval win-rate of answers A over answers B (two lm_eval --log_samples files)",
        description="Judge every prompt's two answers in both orders (cancelling position bias) and "
        "report the mean P(A better). A and B are samples_*.jsonl files of the same generation task, "
        "e.g. dsteer_geval_mini run steered and unsteered.",
    )
    p.add_argument("a", help="samples JSONL of the answers to rate (e.g. steered)")
    p.add_argument("b", help="samples JSONL of the baseline answers (e.g. alpha=0)")
    p.add_argument("--criterion", default="helpfulness", help="helpfulness | harmlessness | coherence")
    p.add_argument("--judge", default=None, help="smollm2 | hf:<path> | openai:<model> (default: $DSTEER_JUDGE or smollm2)")
    p.add_argument("--out", default=None, help="also write the result (with per-prompt P(A wins)) as JSON")
    p.set_defaults(func=_cmd_winrate)
    return parser


_LIST_FLAGS = ("--alphas", "--layers")  # values like "-2,-1,0" look like options to argparse


def _join_list_flags(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _LIST_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    from dsteer_eval.common.redaction import install_log_redaction, redact

    install_log_redaction()
    parser = build_parser()
    argv = _join_list_flags(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    args._argv = argv  # the exact command, for cards that record how they were made
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dsteer-eval {args.verb}: error: {redact(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a read-only or full output folder: one line, not a traceback
        print(f"dsteer-eval {args.verb}: error: {redact(_os_error_message(exc, args))}", file=sys.stderr)
        return 2


def _output_flag(args: argparse.Namespace) -> tuple[str, str] | None:
    for flag, name in (("--out", "out"), ("--output", "output")):
        value = getattr(args, name, None)
        if value:
            return flag, str(value)
    return None


def _touches(filename: str, out: str) -> bool:
    """Whether ``filename`` is ``out``, inside it, one of its parents, or a staging sibling of it."""
    f = os.path.realpath(os.path.expanduser(filename))
    o = os.path.realpath(os.path.expanduser(out))
    sibling = os.path.dirname(f) == os.path.dirname(o) and os.path.basename(f).startswith(f".{os.path.basename(o)}.")
    return f == o or f.startswith(o + os.sep) or o.startswith(f + os.sep) or sibling


def _os_error_message(exc: OSError, args: argparse.Namespace) -> str:
    reason = exc.strerror or str(exc)
    filename = exc.filename if isinstance(exc.filename, str) else None
    output = _output_flag(args)
    if output is not None and (filename is None or _touches(filename, output[1])):
        flag, out = output
        return f"cannot write {filename or out}: {reason} ({flag} {out})"
    return f"{filename}: {reason}" if filename else reason


if __name__ == "__main__":
    sys.exit(main())
