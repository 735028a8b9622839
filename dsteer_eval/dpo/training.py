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

import copy
import importlib.metadata as md
import json
import logging
import math
import random
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from dsteer_eval.common import provenance
from dsteer_eval.common.output_folder import atomic_write_text, check_free, check_writable, staged_folder
from dsteer_eval.data.preference_pairs import PreferencePair, left_truncate, load_pairs
from dsteer_eval.data.splits import check_part, part_of
from dsteer_eval.dpo.cpu_head import use_compact_head
from dsteer_eval.dpo.rewards import reward_summary, rewards_by_kind  # noqa: F401  (reward_summary re-exported)
from dsteer_eval.models.defaults import model_name
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.models.identity import model_entry
from dsteer_eval.steering.sites import unwrap

CARD_NAME = "dpo_card.json"
CARD_FORMAT = "dsteer-eval/dpo-card"
RUN_NAME = "dsteer_run.json"
DEFAULT_SAVE_STEPS = 50
log = logging.getLogger(__name__)


@dataclass
class DPOSettings:
    """Hyper-parameters of one DPO run (the CLI flags of ``train-dpo`` mirror these)."""

    beta: float = 0.1
    learning_rate: float = 5e-5
    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int = 0
    max_length: int = 192
    max_prompt_length: int = 128
    eval_size: int = 64
    full: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    precision: str = "auto"
    lm_head: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 10
    epochs: float = 0.0  # > 0: steps = ceil(epochs * train pairs / (batch_size * grad_accum)), replacing steps

    def check(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "max_length", "max_prompt_length", "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_size"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.epochs) and self.epochs >= 0):
            raise ValueError(f"epochs must be a finite number >= 0 (0: use steps), got {self.epochs}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length}) "
                f"to leave room for the replies"
            )
        for name in ("beta", "learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.full and (self.lora_r < 1 or self.lora_alpha <= 0):
            raise ValueError("lora_r must be >= 1 and lora_alpha > 0 (or pass full=True for full fine-tuning)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.lm_head not in ("auto", "trl", "compact"):
            raise ValueError(f"lm_head must be auto, trl or compact, got {self.lm_head!r}")

    def lora_target_modules(self):
        targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if not targets:
            raise ValueError("lora_targets is empty; use 'all-linear' or module names like q_proj,v_proj")
        return "all-linear" if targets == ["all-linear"] else targets

    def steps_for(self, train_pairs: int) -> int:
        """Optimizer steps of the run: ``steps``, or ``epochs`` passes over ``train_pairs``."""
        if self.epochs > 0:
            return max(1, math.ceil(self.epochs * train_pairs / (self.batch_size * self.grad_accum)))
        return self.steps


# Documented recipes (docs/data-and-splits.md).  A preset fills
# the settings and the data part; flags given on the command line override it.
PRESETS = {
    # the refusal pair: build-refusal's refusal_pairs.jsonl.gz, ~1 epoch over the train part;
    # beta 0.3 / lr 5e-4 is the point scripts/dpo_hparam_sweep.py chose on the vector part
    # (results/dpo_hparam_sweep/sweep.md)
    "refusal": {"part": "train", "settings": dict(
        beta=0.3, learning_rate=5e-4, epochs=1.0, batch_size=4, warmup_steps=6, lora_r=16, lora_alpha=32,
        lora_targets="all-linear")},
    # the HH harmless pair: LoRA r 16 on every linear layer, 1 epoch over the train part; beta / lr
    # from scripts/dpo_hparam_sweep.py --preset hh (results/dpo_hparam_sweep_hh/sweep.md)
    "hh": {"part": "train", "settings": dict(
        beta=0.1, learning_rate=5e-4, epochs=1.0, batch_size=4, warmup_steps=10, lora_r=16, lora_alpha=32,
        lora_targets="all-linear")},
}


def preset_settings(name: str) -> DPOSettings:
    try:
        return DPOSettings(**PRESETS[name]["settings"])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------------- data
def fit_prompts(pairs, tokenizer, max_prompt_length: int):
    """The pairs with every prompt left-truncated to ``max_prompt_length`` tokens, and
    ``{"prompts_truncated": n, "prompt_tokens_cut": total}``."""

    out, truncated, cut_total = [], 0, 0
    for pair in pairs:
        prompt, cut = left_truncate(pair.prompt, tokenizer, max_prompt_length)
        if cut:
            truncated += 1
            cut_total += cut
            pair = PreferencePair(prompt, pair.chosen, pair.rejected)
        out.append(pair)
    return out, {"prompts_truncated": truncated, "prompt_tokens_cut": cut_total}


def split_pairs(pairs, tokenizer, settings: DPOSettings, *, part: str | None = None, limit: int | None = None,
                eval_part: str = "eval"):
    """``(train, eval, info)``: the pairs to train on, the held-out pairs, and counts for the card.

    ``part="train"``: train on the pairs of the split's ``train`` part (the first ``limit``
    of them), hold out up to ``eval_size`` pairs of its ``eval_part`` part (default ``eval``;
    ``vector`` for hyper-parameter selection that must not look at the eval part; seeded pick);
    the other parts are left out.  ``part=None``: shuffle every pair (seeded) and hold out
    ``min(eval_size, n // 5)``.  Prompts longer than ``max_prompt_length`` are
    left-truncated to their final turns and counted (``prompts_truncated``).
    """

    part = check_part(part)
    if part not in (None, "train"):
        raise ValueError(f"train-dpo trains on part 'train' (or all rows); part {part!r} is kept for "
                         f"extraction, probes or evaluation and is never trained on")
    if check_part(eval_part) in (None, "train"):
        raise ValueError(f"eval_part must be vector, probe or eval (never trained on), got {eval_part!r}")
    pairs = list(pairs)
    if part is None:
        kept = pairs[:limit] if limit is not None else pairs
        random.Random(settings.seed).shuffle(kept)
        n_eval = min(settings.eval_size, len(kept) // 5) if settings.eval_size else 0
        evaluation, train = kept[:n_eval], kept[n_eval:]
        if settings.eval_size and not evaluation:
            raise ValueError(f"only {len(kept)} usable pairs: too few to hold out eval pairs; pass eval_size=0")
        other = 0
    else:
        by_part = {}
        for pair in pairs:
            by_part.setdefault(part_of(pair.prompt), []).append(pair)
        train = by_part.get("train", [])[:limit] if limit is not None else by_part.get("train", [])
        held = by_part.get(eval_part, [])
        random.Random(settings.seed).shuffle(held)
        evaluation = held[: settings.eval_size]
        other = len(pairs) - len(by_part.get("train", [])) - len(held)
        if not train:
            raise ValueError(f"none of the {len(pairs)} usable pairs is in the split's 'train' part; "
                             f"train on every pair with part all (--part all)")
    train, info = fit_prompts(train, tokenizer, settings.max_prompt_length)
    evaluation, info_eval = fit_prompts(evaluation, tokenizer, settings.max_prompt_length)
    info = {
        "part": part or "all",
        "eval_part": eval_part if part else "random hold-out",
        "pairs_other_parts": other,
        "prompts_truncated": info["prompts_truncated"] + info_eval["prompts_truncated"],
        "prompt_tokens_cut": info["prompt_tokens_cut"] + info_eval["prompt_tokens_cut"],
    }
    return train, evaluation, info


def _dataset(pairs):
    from datasets import Dataset  # deferred: datasets loads only for hub data

    return Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])


# ------------------------------------------------------------------- trainer
def _use_bf16(settings: DPOSettings) -> bool:
    if settings.precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return settings.precision == "bf16"


def make_trainer(model, tokenizer, train_pairs, settings: DPOSettings, *, output_dir, eval_pairs=None, ref_model=None,
                 save_steps: int | None = None, callbacks=None):
    """A configured :class:`trl.DPOTrainer` (LoRA unless ``settings.full``).

    ``save_steps``: save a resumable checkpoint into ``output_dir`` every that many steps
    (and at the end; the two newest are kept).  ``callbacks``: extra transformers callbacks."""
    from trl import DPOConfig, DPOTrainer  # deferred: trl loads only when training

    settings.check()
    on_cpu = next(model.parameters()).device.type == "cpu"
    saving = dict(save_strategy="steps", save_steps=int(save_steps), save_total_limit=2) if save_steps else \
        dict(save_strategy="no")
    config = DPOConfig(
        output_dir=str(output_dir),
        beta=settings.beta,
        learning_rate=settings.learning_rate,
        max_steps=settings.steps_for(len(train_pairs)),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="linear",
        max_length=settings.max_length,
        bf16=_use_bf16(settings),
        gradient_checkpointing=settings.gradient_checkpointing,
        logging_steps=settings.logging_steps,
        **saving,
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=on_cpu,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    peft_config = None
    if not settings.full:
        from peft import LoraConfig  # deferred: peft loads only when an adapter is used

        peft_config = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=settings.lora_target_modules(),
            task_type="CAUSAL_LM",
        )
    elif ref_model is None:

        ref_model = copy.deepcopy(model).eval()  # the frozen starting point, without a hub round trip
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=_dataset(train_pairs),
        eval_dataset=_dataset(eval_pairs) if eval_pairs else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks) if callbacks else None,
    )
    want_compact = settings.lm_head == "compact" or (settings.lm_head == "auto" and on_cpu)
    trainer.dsteer_lm_head = "trl"
    if want_compact and not trainer.use_weighting:

        targets = [unwrap(trainer.model)] + ([trainer.ref_model] if trainer.ref_model is not None else [])
        if all(use_compact_head(m) for m in targets):
            trainer.dsteer_lm_head = "compact"
    return trainer


@torch.no_grad()
def pair_rewards(trainer, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair implicit rewards ``beta * (log pi - log pi_ref)`` for chosen and rejected replies."""
    model = trainer.model
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        prepared = trainer._prepare_dataset(_dataset(pairs), trainer.processing_class, trainer.args, "eval")
        if len(prepared) != len(pairs):
            raise RuntimeError(f"trl dropped {len(pairs) - len(prepared)} of {len(pairs)} pairs while tokenizing")
        loader = trainer.get_eval_dataloader(prepared)
        for batch in loader:
            batch = trainer._prepare_inputs(batch)
            # trl's own call passes ``ref_model or model``; passing the policy with a separate
            # reference model (full fine-tuning) would score the policy against itself
            ref_c, ref_r = trainer.compute_ref_log_probs(trainer.ref_model or model, batch)
            kwargs = {k: v for k, v in batch.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            with trainer.accelerator.autocast():
                out = model(**kwargs, use_cache=False, labels=labels, fused_lm_head=True)
            width = batch["completion_mask"].shape[1] - 1
            logps = out.log_probs[:, -width:].float().sum(1)
            pol_c, pol_r = logps.chunk(2)
            chosen.append(trainer.beta * (pol_c - ref_c.float()).cpu())
            rejected.append(trainer.beta * (pol_r - ref_r.float()).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


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

    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers loads only when a model is loaded

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
