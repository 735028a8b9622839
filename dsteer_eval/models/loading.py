"""Load a causal LM and its tokenizer by hub id, local path, or embedded short name."""

from __future__ import annotations

import torch

from dsteer_eval.models.embedded import resolve_pretrained


def load_model(pretrained=None, *, peft: str | None = None, dtype=torch.float32, device: str | None = None):
    """``(model, tokenizer, resolved_path)``; ``pretrained=None``/``smollm2`` is the embedded model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers loads only when a model is loaded

    path = resolve_pretrained(pretrained)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    if peft:
        from peft import PeftModel  # deferred: peft loads only when an adapter is used

        model = PeftModel.from_pretrained(model, peft).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, str(path)
