"""A PEFT adapter merged into its base model's weights, saved once as a plain Hugging Face checkpoint.

A serving engine (vLLM) loads checkpoints, not a transformers model with a PEFT wrapper. ``steered-vllm``
therefore runs the DPO side of a base/LoRA pair as the merged weights W + B·A (peft's ``merge_and_unload``,
float32), cached under ``$DSTEER_EVAL_CACHE/merged/<digest>`` where the digest covers the base files and the
adapter files, so a changed adapter never reuses a stale merge. Merging rather than vLLM's own LoRA path:
one code path on every backend (vLLM's CPU build and its LoRA kernels differ by version), no
``max_lora_rank`` limit, and the numbers are the ones the HF backend's merged DPO side gives (the sweep
merges the same way, :mod:`dsteer_eval.sweep.merged_adapter`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from dsteer_eval.common.hashing import path_digest
from dsteer_eval.common.output_folder import atomic_write_text
from dsteer_eval.models.embedded import cache_root
from dsteer_eval.models.loading import load_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


def merged_checkpoint(base, adapter) -> Path:
    """The folder of ``base`` (a local checkpoint folder) with ``adapter`` merged in, built on first use."""
    base, adapter = Path(base), Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"peft={adapter}: not a PEFT adapter folder (no adapter_config.json)")
    digest = hashlib.sha256(f"{path_digest(base)}\0{path_digest(adapter)}".encode()).hexdigest()[:24]
    target = cache_root() / "merged" / digest
    record = target / "dsteer-merged.json"
    if record.is_file():
        return target
    model, tokenizer, _ = load_model(str(base), peft=str(adapter), device="cpu")
    merged = model.merge_and_unload()
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    for name in TOKENIZER_FILES:
        if (base / name).is_file() and not (staging / name).exists():
            shutil.copy2(base / name, staging / name)
    atomic_write_text(staging / "dsteer-merged.json", json.dumps({"base": str(base), "adapter": str(adapter),
                                                                  "digest": digest}, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
