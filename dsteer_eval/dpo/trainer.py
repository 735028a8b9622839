"""trl's DPOTrainer as dsteer-eval uses it: the pairs split and prompts fitted as in training, the trainer
built from :class:`~dsteer_eval.dpo.settings.DPOSettings` (LoRA or full, the CPU head), and the implicit rewards
of pairs under a trained policy."""

from __future__ import annotations

import copy
import dataclasses
import logging
import random

import torch

from dsteer_eval.data.preference_pairs import PreferencePair, left_truncate
from dsteer_eval.data.splits import check_part, part_of
from dsteer_eval.dpo.cpu_head import use_compact_head
from dsteer_eval.dpo.settings import DPOSettings
from dsteer_eval.steering.sites import unwrap

log = logging.getLogger(__name__)


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
    train, swapped = shuffle_labels(train, settings.seed) if settings.labels == "shuffled" else (train, 0)
    train, info = fit_prompts(train, tokenizer, settings.max_prompt_length)
    evaluation, info_eval = fit_prompts(evaluation, tokenizer, settings.max_prompt_length)
    info = {
        "part": part or "all",
        "eval_part": eval_part if part else "random hold-out",
        "pairs_other_parts": other,
        "prompts_truncated": info["prompts_truncated"] + info_eval["prompts_truncated"],
        "prompt_tokens_cut": info["prompt_tokens_cut"] + info_eval["prompt_tokens_cut"],
    }
    if settings.labels != "given":
        info["labels"] = {"train": settings.labels, "swapped": swapped, "eval": "given"}
    return train, evaluation, info


def shuffle_labels(pairs, seed: int):
    """``(pairs, n)``: a copy of ``pairs`` with chosen and rejected swapped on exactly ``n = len // 2`` of them, picked
    by a seeded permutation — a preference set with no consistent preference (the null DPO run's data)."""
    pairs = list(pairs)
    pick = set(random.Random(f"dsteer-eval/labels/{seed}").sample(range(len(pairs)), len(pairs) // 2))
    return [dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen) if i in pick else p
            for i, p in enumerate(pairs)], len(pick)


def _dataset(pairs):
    from datasets import Dataset  # deferred: datasets loads only for hub data

    return Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])


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
