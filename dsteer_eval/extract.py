"""Extract steering vectors (all hidden-state sites at once) into a vector file.

Methods so far:

* ``caa``  contrastive activation addition on one model: the mean, over
  preference pairs, of h(prompt + chosen) - h(prompt + rejected) at the last
  reply token, at every site.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from dsteer_eval.hidden_states import record
from dsteer_eval.model_parts import resolve_parts
from dsteer_eval.preference_data import PreferencePair


def last_token_states(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8, desc: str = "") -> torch.Tensor:
    """Hidden states of the last token of each text, all sites: ``(len(texts), sites, d)``."""
    parts = resolve_parts(model)
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc or "forward", leave=False):
        chunk = list(texts[start : start + batch_size])
        enc = [tokenizer(t, add_special_tokens=True).input_ids for t in chunk]
        width = max(len(e) for e in enc)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([e + [pad] * (width - len(e)) for e in enc], device=device)
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc], device=device)
        last = torch.tensor([len(e) - 1 for e in enc], device=device)
        with torch.no_grad(), record(model, parts=parts) as seen:
            model(input_ids=ids, attention_mask=mask)
        rows = torch.arange(len(chunk), device=device)
        out.append(torch.stack([seen[s][rows, last].float().cpu() for s in range(parts.num_sites)], 1))
    return torch.cat(out)


def caa(model, tokenizer, pairs: Sequence[PreferencePair], *, batch_size: int = 8) -> dict[int, torch.Tensor]:
    if not pairs:
        raise ValueError("caa needs at least one preference pair")
    chosen = last_token_states(model, tokenizer, [p.prompt + p.chosen for p in pairs], batch_size=batch_size, desc="chosen")
    rejected = last_token_states(model, tokenizer, [p.prompt + p.rejected for p in pairs], batch_size=batch_size, desc="rejected")
    mean = (chosen - rejected).mean(0)
    return {site: mean[site] for site in range(mean.shape[0])}
