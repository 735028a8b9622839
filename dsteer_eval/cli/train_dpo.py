"""``dsteer-eval train-dpo``: train the DPO side of a pair with trl.

Library imports sit inside ``run``: deferred so that ``dsteer-eval --help`` and the other verbs
start without importing torch, transformers or lm-eval (CLI start-up cost).
"""

from __future__ import annotations

import argparse

from dsteer_eval.cli.shared import provenance_command


def add(verbs) -> None:
    from dsteer_eval.dpo.settings import DEFAULT_SAVE_STEPS, PRESETS, DPOSettings

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
    p.add_argument("--labels", choices=["given", "shuffled"], default=d.labels, action=_Given,
                   help="shuffled: swap chosen and rejected on a seeded half of the train pairs — the null DPO run, "
                   "with no consistent preference to learn (held-out pairs keep their labels); default given")
    p.add_argument("--logging-steps", type=int, default=d.logging_steps, action=_Given)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
                     resume=args.resume, eval_part=args.eval_part, command=provenance_command(args))
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
