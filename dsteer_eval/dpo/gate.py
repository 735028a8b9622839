"""Held-out rewards of a trained pair, split by pair kind, and the gate measured on a whole part.

:func:`rewards_by_kind` splits per-pair implicit rewards by what the pair teaches, where
that is known from the pair itself: in a refusal set (:mod:`dsteer_eval.data.refusal_set`)
a pair whose chosen reply is one of the :data:`~dsteer_eval.data.refusal_set.REFUSALS`
teaches *refuse* (a harmful request), one whose rejected reply is a refusal teaches
*answer* (a harmless question).  A pair DPO gets right on harmful rows only would
pass a pooled gate while teaching "refuse everything"; the by-kind rows show it.

:func:`evaluate_adapter` re-measures a trained LoRA pair on a part of the split
(``eval`` by default, every pair of it unless ``eval_size`` caps it): the policy is
the adapter, the reference is the base model loaded separately (never trl's copy
of the adapter), with the card's own ``max_length``/``beta``.  ``dsteer-eval dpo-gate``
writes the result into the card (``heldout``) and recomputes the gate from it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch

from dsteer_eval.common import provenance
from dsteer_eval.common.output_folder import atomic_write_text
from dsteer_eval.common.provenance import command_line as line
from dsteer_eval.data.preference_pairs import load_pairs
from dsteer_eval.data.splits import check_part
from dsteer_eval.dpo.rewards import pair_kind, reward_summary, rewards_by_kind  # noqa: F401  (re-exported)
from dsteer_eval.dpo.training import CARD_NAME, DPOSettings, fit_prompts, gate, make_trainer, pair_rewards, read_card
from dsteer_eval.models.defaults import model_name
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.models.identity import model_entry

log = logging.getLogger(__name__)


def heldout_pairs(data, tokenizer, settings, *, part: str = "eval", eval_size: int | None = None,
                  data_dir=None, split: str = "train"):
    """The pairs of ``part`` (seeded pick of ``eval_size`` of them; all when ``None``), prompts
    left-truncated as in training, and how many prompts were cut."""

    part = check_part(part)
    if part in (None, "train"):
        raise ValueError(f"--part {part or 'all'}: held-out rewards are measured on a part that is never trained "
                         f"on (vector, probe or eval)")
    pairs = list(load_pairs(data, data_dir=data_dir, split=split, part=part))
    if not pairs:
        raise ValueError(f"{data}: no usable pair in part {part!r}")
    random.Random(settings.seed).shuffle(pairs)
    if eval_size is not None:
        pairs = pairs[:eval_size]
    pairs, info = fit_prompts(pairs, tokenizer, settings.max_prompt_length)
    return pairs, info


def evaluate_adapter(adapter, data, *, part: str = "eval", eval_size: int | None = None, pretrained=None,
                     device: str | None = None, data_dir=None, split: str = "train", command: str | None = None) -> dict:
    """Held-out reward summary (pooled and by kind) of the LoRA pair in ``adapter`` on ``part``, with its
    provenance (``command``: the exact command line; default: this process's)."""
    from peft import PeftModel  # deferred: peft loads only when an adapter is used
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers loads only when a model is loaded

    adapter = Path(adapter)
    card = read_card(adapter)
    if card is None or card.get("kind") != "lora":
        raise ValueError(f"{adapter}: not a train-dpo LoRA adapter folder (no dpo_card.json of kind lora)")
    settings = DPOSettings(**card["hyperparameters"])
    path = resolve_pretrained(pretrained)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    pairs, info = heldout_pairs(data, tokenizer, settings, part=part, eval_size=eval_size, data_dir=data_dir,
                                split=split)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                                       str(adapter)).to(device).eval()
    settings.full = True  # no new LoRA; the reference is ``base``, passed explicitly
    started = time.perf_counter()
    with __import__("tempfile").TemporaryDirectory() as tmp:
        trainer = make_trainer(policy, tokenizer, pairs, settings, output_dir=tmp, ref_model=base)
        chosen, rejected = pair_rewards(trainer, pairs)
    summary = reward_summary(chosen, rejected)
    record = provenance.collect(
        data=[data], seeds={"seed": settings.seed}, command=command,
        models=[model_entry("base", model_name(pretrained), model=base),
                model_entry("adapter", adapter)])
    return {"part": part, "pairs": len(pairs), **info, "summary": summary,
            "by_kind": rewards_by_kind(chosen, rejected, pairs),
            "seconds": round(time.perf_counter() - started, 1), "provenance": record}


def write_heldout(adapter, measured: dict, command: str) -> dict:
    """Record ``measured`` in the adapter's card under ``heldout[part]`` and recompute the gate from
    it (the gate measured at training time is kept as ``gate_at_training``)."""

    card = read_card(adapter)
    entry = {**measured, "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    card.setdefault("heldout", {})[measured["part"]] = entry
    if measured["part"] == "eval":
        card.setdefault("gate_at_training", card.get("gate"))
        card["gate"] = {**gate(measured["summary"], measured["by_kind"]),
                        "measured_on": f"eval part, {measured['pairs']} pairs (dsteer-eval dpo-gate)"}

    atomic_write_text(Path(adapter) / CARD_NAME, json.dumps(card, indent=1) + "\n")  # whole or not at all
    return card


def command_line(argv) -> str:
    return line(argv)
