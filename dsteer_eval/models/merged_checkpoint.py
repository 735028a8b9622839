"""A PEFT adapter merged into its base model's weights, saved once as a plain Hugging Face checkpoint.

A serving engine (vLLM) loads checkpoints, not a transformers model with a PEFT wrapper. ``steered-vllm``
therefore runs the DPO side of a base/LoRA pair as the merged weights W + B·A (peft's ``merge_and_unload``,
float32), cached under ``$DSTEER_EVAL_CACHE/merged/<digest>`` where the digest covers the base files and the
adapter files, so a changed adapter never reuses a stale merge. Merging rather than vLLM's own LoRA path:
one code path on every backend (vLLM's CPU build and its LoRA kernels differ by version), no
``max_lora_rank`` limit, and the numbers are the ones the HF backend's merged DPO side gives (the sweep
merges the same way, :mod:`dsteer_eval.sweep.merged_adapter`).

Concurrent first use (two runs of one pair starting together) is safe: one process builds the merge under a
file lock per digest while the others wait and then read it; the build goes to a staging folder unique to
its process and takes the target's place in one ``os.replace`` once its record is written, so a reader never
sees a half-written folder and a finished folder is never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from dsteer_eval.common.hashing import path_digest
from dsteer_eval.common.output_folder import atomic_write_text
from dsteer_eval.models.embedded import cache_root
from dsteer_eval.models.loading import load_model

RECORD = "dsteer-merged.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


def merged_checkpoint(base, adapter) -> Path:
    """The folder of ``base`` (a local checkpoint folder) with ``adapter`` merged in, built on first use."""
    base, adapter = Path(base), Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"peft={adapter}: not a PEFT adapter folder (no adapter_config.json)")
    digest = hashlib.sha256(f"{path_digest(base)}\0{path_digest(adapter)}".encode()).hexdigest()[:24]
    target = cache_root() / "merged" / digest
    record = target / RECORD
    if record.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # one builder per digest; the others wait, then read its folder
        if record.is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}.building.", dir=target.parent))  # this process's own
        try:
            os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            _build(base, adapter, digest, staging)
            if target.exists():  # an unfinished folder (no record) left by a killed older version
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _build(base: Path, adapter: Path, digest: str, out: Path) -> None:
    model, tokenizer, _ = load_model(str(base), peft=str(adapter), device="cpu")
    merged = model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (base / name).is_file() and not (out / name).exists():
            shutil.copy2(base / name, out / name)
    atomic_write_text(out / RECORD, json.dumps({"base": str(base), "adapter": str(adapter), "digest": digest},
                                               indent=1) + "\n")  # written last: the folder is whole
