"""Train the DPO half of a base/DPO pair with trl's DPOTrainer (LoRA by default).

:func:`train_dpo` reads HH-style preference pairs, trains with
:class:`trl.DPOTrainer` (a peft LoRA adapter, or full fine-tuning), measures
per-pair implicit rewards r = beta * (log pi(y|x) - log pi_ref(y|x)) on the
training pairs and on held-out pairs, and writes into ``out``:

* ``adapter_model.safetensors`` + ``adapter_config.json`` (LoRA), or the full
  model (``--full``), plus the tokenizer;
* ``dpo_card.json``: data (source, counts, what was skipped and why),
  hyper-parameters, library versions, wall time, the loss curve, train/eval
  reward accuracy and margins, the command that re-creates it, and its provenance
  (:mod:`dsteer_eval.common.provenance`: the exact command run, git commit, data sha256, base model
  fingerprint, seed).

The output folder appears only when training finished: everything is written
to a temporary sibling first and moved into place at the end.

Data parts.  With ``part="train"`` the run trains on the ``train`` part of the
file-level split (:mod:`dsteer_eval.data.splits`) and measures held-out rewards on up
to ``eval_size`` pairs of the ``eval`` part of the same file; the ``vector``,
``probe`` and ``eval`` parts are never trained on.  Without a part (``None``) every
pair may be trained on and ``eval_size`` pairs are held out at random (seeded),
as before (a warning says so).  Prompts longer than ``max_prompt_length`` tokens
are left-truncated to their final turns
(:func:`dsteer_eval.data.preference_pairs.left_truncate`) and counted, not dropped.

Resuming.  Every ``save_steps`` steps the trainer's state (adapter or model,
optimizer, scheduler, RNG states) is saved under ``checkpoint_dir`` (default: the
sibling ``<out>.checkpoints/``, outside the output folder; deleted when the run
finishes).  ``resume=True`` continues from the newest complete checkpoint there,
to the same weights as an uninterrupted run; the run's settings and data are
recorded in ``checkpoint_dir/dsteer_run.json`` and a resume with different ones
is refused, naming what changed.

Speed on CPUs.  trl's DPOConfig defaults to bf16 autocast and gradient
checkpointing, and on a non-Triton device its fused LM head scores every
position with tile ops.  On a CPU without native bf16 that makes a step ~10x
slower than needed (``bench/dpo_step.py``), so here ``precision="auto"`` means
fp32 on CPU (bf16 on CUDA with bf16 support), gradient checkpointing is opt-in,
and ``lm_head="auto"`` swaps in :mod:`dsteer_eval.dpo.cpu_head` on CPU.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import shlex
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from dsteer_eval.common import provenance
from dsteer_eval.common.output_folder import atomic_write_text, check_free, check_writable, staged_folder
from dsteer_eval.data.preference_pairs import load_pairs
from dsteer_eval.data.splits import check_part
from dsteer_eval.dpo.rewards import reward_summary, rewards_by_kind  # noqa: F401  (reward_summary re-exported)
from dsteer_eval.dpo.settings import (  # noqa: F401 (re-exported)
    DEFAULT_SAVE_STEPS,
    PRESETS,
    DPOSettings,
    preset_settings,
)
from dsteer_eval.dpo.trainer import fit_prompts, make_trainer, pair_rewards, split_pairs  # noqa: F401 (re-exported)
from dsteer_eval.models.defaults import model_name
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.models.identity import model_entry
from dsteer_eval.steering.sites import unwrap

CARD_NAME = "dpo_card.json"
CARD_FORMAT = "dsteer-eval/dpo-card"
RUN_NAME = "dsteer_run.json"
log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the job
def recreate_command(pretrained, data, settings: DPOSettings, *, out, data_dir=None, split="train", limit=None,
                     part=None, preset=None, eval_part="eval") -> str:
    """The ``dsteer-eval train-dpo`` command line that reproduces a run (settings that differ from
    the preset's, or from the defaults, are named)."""
    argv = ["dsteer-eval", "train-dpo", "--data", str(data)]
    if preset:
        argv += ["--preset", preset]
    if pretrained is not None:
        argv += ["--pretrained", str(pretrained)]
    if data_dir:
        argv += ["--data-dir", str(data_dir)]
    if split != "train":
        argv += ["--split", split]
    if limit is not None:
        argv += ["--limit", str(limit)]
    default_part = PRESETS[preset]["part"] if preset else None
    if (part or None) != default_part:
        argv += ["--part", part or "all"]
    if eval_part != "eval":
        argv += ["--eval-part", eval_part]
    default = preset_settings(preset) if preset else DPOSettings()
    for f in fields(DPOSettings):
        value = getattr(settings, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    argv += ["--out", str(out)]
    return shlex.join(argv)


def default_checkpoint_dir(out) -> Path:
    """``<out>.checkpoints``: a sibling of the output folder, never inside it."""
    out = Path(out).expanduser()
    return out.with_name(out.name + ".checkpoints")


def complete_checkpoints(folder) -> list[Path]:
    """``checkpoint-N`` folders under ``folder`` that hold their trainer state, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        name = child.name
        if child.is_dir() and name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            if (child / "trainer_state.json").is_file():
                found.append((int(name[len("checkpoint-"):]), child))
    return [path for _, path in sorted(found)]


def _check_resumable(folder: Path, run: dict, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (``None``: start afresh); refuses to mix two runs."""
    recorded = folder / RUN_NAME
    checkpoints = complete_checkpoints(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not recorded.is_file())):
        raise ValueError(f"checkpoint folder {folder} exists and is not a train-dpo checkpoint folder (no {RUN_NAME}); "
                         f"choose another --checkpoint-dir")
    if folder.exists() and not resume:
        if (checkpoints or recorded.is_file()) and not overwrite:
            raise ValueError(
                f"checkpoint folder {folder} holds an unfinished run; pass --resume to continue it, "
                f"or --overwrite to delete it and start again"
            )
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if not checkpoints:
        if resume:
            log.warning("train-dpo --resume: no checkpoint in %s yet; starting from step 0", folder)
        return None
    if recorded.is_file():
        before = json.loads(recorded.read_text())
        ignored = {"save_steps"} | ({"data"} if before.get("data_sha256") and run.get("data_sha256") else set())
        changed = sorted(k for k in (set(before) | set(run)) - ignored if before.get(k) != run.get(k))
        if changed:
            detail = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, a, b in _differences(before, run, changed))
            raise ValueError(f"cannot resume from {folder}: the run differs ({detail}); "
                             f"use the same settings and data, or another --checkpoint-dir")
    return checkpoints[-1]


def _differences(before: dict, now: dict, keys) -> list[tuple]:
    """``(key, then, now)`` for each of ``keys``; two dicts (the settings) by their differing entries
    (``settings.beta``), so a changed flag is named rather than the whole dict printed."""
    out = []
    for key in keys:
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [(f"{key}.{k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append((key, a, b))
    return out


def _versions() -> dict:
    out = {}
    for dist in ("dsteer-eval", "trl", "peft", "transformers", "torch", "datasets"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def train_dpo(
    data,
    out,
    settings: DPOSettings | None = None,
    *,
    pretrained=None,
    data_dir: str | None = None,
    split: str = "train",
    limit: int | None = None,
    part: str | None = None,
    preset: str | None = None,
    overwrite: bool = False,
    device: str | None = None,
    checkpoint_dir=None,
    save_steps: int | None = DEFAULT_SAVE_STEPS,
    resume: bool = False,
    callbacks=None,
    eval_part: str = "eval",
    command: str | None = None,
) -> dict:
    """Train, evaluate and save; returns the card (also written to ``out/dpo_card.json``).

    ``part``: ``"train"`` (train on the split's train part, eval rewards on its eval part) or
    ``None``/``"all"`` (every pair, ``eval_size`` held out at random; warned).  ``limit``: with
    a part, at most that many train pairs; without, at most that many pairs read.
    ``preset``: only recorded (the card's command names it); the settings are ``settings``.
    ``eval_part``: the part held-out rewards come from (with ``part="train"``).
    ``save_steps``/``checkpoint_dir``/``resume``: see the module docstring (``save_steps=0``:
    no checkpoints).  ``callbacks``: extra transformers ``TrainerCallback`` objects.
    ``command``: the exact command line, for the card's provenance (default: this process's).
    """

    settings = settings or DPOSettings()
    settings.check()
    part = check_part(part)
    if save_steps is not None and int(save_steps) < 0:
        raise ValueError(f"save_steps must be >= 0 (0: no checkpoints), got {save_steps}")
    out = check_free(out, overwrite)
    ckpt = Path(checkpoint_dir).expanduser() if checkpoint_dir else default_checkpoint_dir(out)
    if save_steps or resume:
        check_writable(ckpt, "--checkpoint-dir")
        if ckpt.resolve() == Path(out).resolve() or Path(out).resolve() in ckpt.resolve().parents:
            raise ValueError(f"--checkpoint-dir {ckpt} must be outside the output folder {out}")
    # fail on bad data before loading the model
    pairs = load_pairs(data, data_dir=data_dir, split=split, limit=None if part else limit)
    if part is None:
        log.warning("train-dpo: training on every pair of %s (no --part): the probe and eval parts of the "
                    "split are trained on too; pass --part train to keep them out", pairs.source)

    from transformers import (  # deferred: transformers loads only when a model is loaded
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    path = resolve_pretrained(pretrained)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    base_entry = model_entry("base", model_name(pretrained), model=model)  # before LoRA wraps it
    data_entry = provenance.data_entry(data)
    train_pairs, eval_pairs, split_info = split_pairs(pairs, tokenizer, settings, part=part,
                                                      limit=limit if part else None, eval_part=eval_part)
    sha = data_entry["sha256"] if Path(str(data)).is_file() else None
    run = {"settings": asdict(settings), "data": str(data), "data_sha256": sha, "data_dir": data_dir,
           "split": split, "limit": limit, "part": part, "pretrained": str(path), "save_steps": save_steps,
           "eval_part": eval_part}
    resume_from = None
    if save_steps or resume:
        resume_from = _check_resumable(ckpt, run, resume, overwrite)
        if save_steps:
            ckpt.mkdir(parents=True, exist_ok=True)
            atomic_write_text(ckpt / RUN_NAME, json.dumps(run, indent=1) + "\n")

    with staged_folder(out) as tmp:
        trainer_dir = ckpt if save_steps else tmp / "trainer"
        trainer = make_trainer(model, tokenizer, train_pairs, settings, output_dir=trainer_dir,
                               save_steps=save_steps or None, callbacks=callbacks)
        started = time.perf_counter()
        if resume_from is not None:
            log.warning("train-dpo: resuming from %s", resume_from)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
        train_seconds = time.perf_counter() - started
        resumed_step = int(resume_from.name.split("-")[-1]) if resume_from is not None else 0
        measured = {"train": reward_summary(*pair_rewards(trainer, train_pairs[: min(max(settings.eval_size, 64), 128)]))}
        if eval_pairs:

            rewards = pair_rewards(trainer, eval_pairs)
            measured["eval"] = reward_summary(*rewards)
            by_kind = rewards_by_kind(*rewards, eval_pairs)
            if by_kind:
                measured["eval_by_kind"] = by_kind
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        if settings.full:
            unwrap(trainer.model).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        else:  # an adapter uses its base's tokenizer
            trainer.model.save_pretrained(tmp)
            (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model-card template; the card is ours
        data_record = {
            "source": pairs.source,
            "data_dir": data_dir,
            "split": split,
            "limit": limit,
            "rows_skipped": dict(pairs.skipped),
            "pairs_loaded": len(pairs),
            **split_info,
            "pairs_train": len(train_pairs),
            "pairs_eval": len(eval_pairs),
        }
        if sha:
            data_record["sha256"] = sha
        history = [
            {k: v for k, v in row.items() if k in ("step", "loss", "rewards/accuracies", "rewards/margins", "learning_rate")}
            for row in trainer.state.log_history if "loss" in row
        ]
        card = {
            "format": CARD_FORMAT,
            "format_version": "1",
            "kind": "full" if settings.full else "lora",
            "base_model": model_name(pretrained),
            "base_model_path": str(path),
            "data": data_record,
            "hyperparameters": asdict(settings),
            "preset": preset,
            "lm_head": trainer.dsteer_lm_head,
            "bf16": bool(trainer.args.bf16),
            "device": device,
            "steps_done": int(trainer.state.global_step),
            "resumed_from_step": resumed_step if resume_from is not None else None,
            "train_seconds": round(train_seconds, 1),
            "seconds_per_step": round(train_seconds / max(trainer.state.global_step - resumed_step, 1), 2),
            "loss_history": history,
            "metrics": measured,
            "gate": gate(measured.get("eval"), measured.get("eval_by_kind")),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": recreate_command(pretrained, data, settings, out=out, data_dir=data_dir, split=split,
                                        limit=limit, part=part, preset=preset, eval_part=eval_part),
            "provenance": provenance.collect(data=[data_entry], models=[base_entry], seeds={"seed": settings.seed},
                                             command=command),
        }
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=1) + "\n")
    if save_steps:
        shutil.rmtree(ckpt, ignore_errors=True)  # the run finished: its checkpoints are not needed
    return card


# The gate a shipped pair must pass (measured on held-out pairs, never trained on): DPO really learned.
GATE = {"min_margin_in_stderrs": 3.0, "min_reward_accuracy": 0.62}


def gate(held_out: dict | None, by_kind: dict | None = None) -> dict:
    """Whether the held-out implicit-reward margin is > 0 by at least 3 standard errors and the reward
    accuracy is at least 0.62 (docs/data-and-splits.md); computed from the card's own numbers.
    ``by_kind`` (``{kind: summary}``): the same rule per kind, and ``passed_every_kind``."""
    rule = (f"held-out reward margin > 0 by >= {GATE['min_margin_in_stderrs']:g} stderr and reward accuracy "
            f">= {GATE['min_reward_accuracy']:g}")
    if not held_out or not held_out.get("pairs") or not held_out.get("reward_margin_stderr"):
        return {"rule": rule, "passed": False, "why": "no held-out pairs with a margin stderr"}
    in_stderrs = held_out["reward_margin_mean"] / held_out["reward_margin_stderr"]
    passed = in_stderrs >= GATE["min_margin_in_stderrs"] and held_out["reward_accuracy"] >= GATE["min_reward_accuracy"]
    out = {"rule": rule, "passed": bool(passed), "margin_in_stderrs": in_stderrs,
           "reward_accuracy": held_out["reward_accuracy"], "pairs": held_out["pairs"]}
    if by_kind:
        out["by_kind"] = {kind: gate(summary) for kind, summary in by_kind.items()}
        out["passed_every_kind"] = all(v["passed"] for v in out["by_kind"].values())
    return out


def read_card(folder) -> dict | None:
    path = Path(folder) / CARD_NAME
    return json.loads(path.read_text()) if path.is_file() else None
