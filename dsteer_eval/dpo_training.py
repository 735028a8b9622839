"""Train the DPO half of a base/DPO pair with trl's DPOTrainer (LoRA by default).

:func:`train_dpo` reads HH-style preference pairs, trains with
:class:`trl.DPOTrainer` (a peft LoRA adapter, or full fine-tuning), measures
per-pair implicit rewards r = beta * (log pi(y|x) - log pi_ref(y|x)) on the
training pairs and on held-out pairs, and writes into ``out``:

* ``adapter_model.safetensors`` + ``adapter_config.json`` (LoRA), or the full
  model (``--full``), plus the tokenizer;
* ``dpo_card.json``: data (source, counts, what was skipped and why),
  hyper-parameters, library versions, wall time, the loss curve, train/eval
  reward accuracy and margins, and the exact command that re-creates it.

The output folder appears only when training finished: everything is written
to a temporary sibling first and moved into place at the end.

Speed on CPUs.  trl's DPOConfig defaults to bf16 autocast and gradient
checkpointing, and on a non-Triton device its fused LM head scores every
position with tile ops.  On a CPU without native bf16 that makes a step ~10x
slower than needed (``bench/dpo_step.py``), so here ``precision="auto"`` means
fp32 on CPU (bf16 on CUDA with bf16 support), gradient checkpointing is opt-in,
and ``lm_head="auto"`` swaps in :mod:`dsteer_eval.dpo_head` on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

CARD_NAME = "dpo_card.json"
CARD_FORMAT = "dsteer-eval/dpo-card"


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

    def check(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "max_length", "max_prompt_length", "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_size"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
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


# ---------------------------------------------------------------------- data
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_pairs(pairs, tokenizer, settings: DPOSettings):
    """Drop pairs whose prompt is too long, shuffle (seeded), and hold out ``eval_size`` pairs."""
    kept, too_long = [], 0
    for pair in pairs:
        if len(tokenizer(pair.prompt).input_ids) > settings.max_prompt_length:
            too_long += 1
        else:
            kept.append(pair)
    if not kept:
        raise ValueError(
            f"every preference pair has a prompt longer than max_prompt_length={settings.max_prompt_length} "
            f"tokens; raise --max-prompt-length (and --max-length)"
        )
    random.Random(settings.seed).shuffle(kept)
    n_eval = min(settings.eval_size, len(kept) // 5) if settings.eval_size else 0
    evaluation, train = kept[:n_eval], kept[n_eval:]
    if settings.eval_size and not evaluation:
        raise ValueError(f"only {len(kept)} usable pairs: too few to hold out eval pairs; pass eval_size=0")
    return train, evaluation, too_long


def _dataset(pairs):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])


# ------------------------------------------------------------------- trainer
def _use_bf16(settings: DPOSettings) -> bool:
    if settings.precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return settings.precision == "bf16"


def make_trainer(model, tokenizer, train_pairs, settings: DPOSettings, *, output_dir, eval_pairs=None, ref_model=None):
    """A configured :class:`trl.DPOTrainer` (LoRA unless ``settings.full``)."""
    from trl import DPOConfig, DPOTrainer

    settings.check()
    on_cpu = next(model.parameters()).device.type == "cpu"
    config = DPOConfig(
        output_dir=str(output_dir),
        beta=settings.beta,
        learning_rate=settings.learning_rate,
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="linear",
        max_length=settings.max_length,
        bf16=_use_bf16(settings),
        gradient_checkpointing=settings.gradient_checkpointing,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=on_cpu,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    peft_config = None
    if not settings.full:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=settings.lora_target_modules(),
            task_type="CAUSAL_LM",
        )
    elif ref_model is None:
        import copy

        ref_model = copy.deepcopy(model).eval()  # the frozen starting point, without a hub round trip
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=_dataset(train_pairs),
        eval_dataset=_dataset(eval_pairs) if eval_pairs else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    want_compact = settings.lm_head == "compact" or (settings.lm_head == "auto" and on_cpu)
    trainer.dsteer_lm_head = "trl"
    if want_compact and not trainer.use_weighting:
        from dsteer_eval.dpo_head import use_compact_head
        from dsteer_eval.model_parts import unwrap

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
            ref_c, ref_r = trainer.compute_ref_log_probs(model, batch)
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


def reward_summary(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    margins = chosen - rejected
    n = len(margins)
    stderr = float(margins.std(unbiased=True) / math.sqrt(n)) if n > 1 else None
    return {
        "pairs": n,
        "reward_accuracy": float((margins > 0).float().mean()),
        "reward_margin_mean": float(margins.mean()),
        "reward_margin_stderr": stderr,
        "reward_margin_median": float(margins.median()),
        "chosen_reward_mean": float(chosen.mean()),
        "rejected_reward_mean": float(rejected.mean()),
    }


# ------------------------------------------------------------------ the job
def recreate_command(pretrained, data, settings: DPOSettings, *, out, data_dir=None, split="train", limit=None) -> str:
    """The ``dsteer-eval train-dpo`` command line that reproduces a run."""
    argv = ["dsteer-eval", "train-dpo", "--data", str(data)]
    if pretrained is not None:
        argv += ["--pretrained", str(pretrained)]
    if data_dir:
        argv += ["--data-dir", str(data_dir)]
    if split != "train":
        argv += ["--split", split]
    if limit is not None:
        argv += ["--limit", str(limit)]
    default = DPOSettings()
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


def _versions() -> dict:
    import importlib.metadata as md

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
    overwrite: bool = False,
    device: str | None = None,
) -> dict:
    """Train, evaluate and save; returns the card (also written to ``out/dpo_card.json``)."""
    from dsteer_eval.embedded import resolve_pretrained
    from dsteer_eval.model_parts import unwrap
    from dsteer_eval.output_folder import check_free, staged_folder
    from dsteer_eval.preference_data import load_pairs

    settings = settings or DPOSettings()
    settings.check()
    out = check_free(out, overwrite)
    pairs = load_pairs(data, data_dir=data_dir, split=split, limit=limit)  # fail before loading the model

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_pretrained(pretrained)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    train_pairs, eval_pairs, too_long = split_pairs(pairs, tokenizer, settings)

    with staged_folder(out) as tmp:
        trainer = make_trainer(model, tokenizer, train_pairs, settings, output_dir=tmp / "trainer")
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        measured = {"train": reward_summary(*pair_rewards(trainer, train_pairs[: max(settings.eval_size, 64)]))}
        if eval_pairs:
            measured["eval"] = reward_summary(*pair_rewards(trainer, eval_pairs))
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
            "pairs_prompt_too_long": too_long,
            "pairs_train": len(train_pairs),
            "pairs_eval": len(eval_pairs),
        }
        if Path(str(data)).is_file():
            data_record["sha256"] = _sha256(Path(str(data)))
        history = [
            {k: v for k, v in row.items() if k in ("step", "loss", "rewards/accuracies", "rewards/margins", "learning_rate")}
            for row in trainer.state.log_history if "loss" in row
        ]
        card = {
            "format": CARD_FORMAT,
            "format_version": "1",
            "kind": "full" if settings.full else "lora",
            "base_model": str(pretrained or "smollm2"),
            "base_model_path": str(path),
            "data": data_record,
            "hyperparameters": asdict(settings),
            "lm_head": trainer.dsteer_lm_head,
            "bf16": bool(trainer.args.bf16),
            "device": device,
            "steps_done": int(trainer.state.global_step),
            "train_seconds": round(train_seconds, 1),
            "seconds_per_step": round(train_seconds / max(trainer.state.global_step, 1), 2),
            "loss_history": history,
            "metrics": measured,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": recreate_command(pretrained, data, settings, out=out, data_dir=data_dir, split=split, limit=limit),
        }
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=1) + "\n")
    return card


def read_card(folder) -> dict | None:
    path = Path(folder) / CARD_NAME
    return json.loads(path.read_text()) if path.is_file() else None
