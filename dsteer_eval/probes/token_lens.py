"""The logit lens of a token set through the layers (Lee et al. 2024, Fig 3's analogue).

At each residual-stream site ``s`` (:mod:`dsteer_eval.steering.sites`: 0 = the token embeddings,
``i`` = the output of decoder layer ``i``) the state at one position is read as if it were the last
layer's — through the model's final norm and its unembedding — and the log-probability the resulting
distribution gives a *set* of tokens (log Σ p) is returned. Site ``num_layers`` is already the final,
post-norm state, so it goes through the unembedding alone: there the lens is exactly the model's own
next-token distribution. :func:`single_token_words` turns a word list (e.g. the offline toxicity scorer's most
toxic words) into the token ids that spell each word as one token after a space.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from dsteer_eval.steering.capture import record
from dsteer_eval.steering.sites import resolve_parts


def single_token_words(tokenizer, words: Iterable[str], prefix: str = " ") -> list[tuple[str, int]]:
    """``(word, id)`` for each word that ``prefix + word`` encodes to exactly one token (no special tokens),
    in the order given, each id once. Words that need two or more tokens are left out."""
    out, seen = [], set()
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"words: every entry must be a non-empty string, got {word!r}")
        ids = tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in seen:
            seen.add(ids[0])
            out.append((word, int(ids[0])))
    return out


def _last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row (left or right padding)."""
    keep = attention_mask != 0
    if not bool(keep.any(dim=1).all()):
        raise ValueError("attention_mask: a row has no non-padding position; drop empty rows")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    return torch.where(keep, positions, torch.full_like(positions, -1)).max(dim=1).values


def token_set_lens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   token_ids: Sequence[int], sites: Iterable[int] | None = None) -> torch.Tensor:
    """``log Σ_{t ∈ token_ids} softmax(lm_head(final_norm(h_s)))_t`` at each row's last non-padding
    position, for every site ``s`` in ``sites`` (default: all, 0 … num_layers; the last one post-norm already):
    ``[len(sites), batch]``, float32 on the CPU, natural log. One set; :func:`token_sets_lens` reads many."""
    return token_sets_lens(model, input_ids, attention_mask, [token_ids], sites)[..., 0]


@torch.no_grad()
def token_sets_lens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    token_sets: Sequence[Sequence[int]], sites: Iterable[int] | None = None) -> torch.Tensor:
    """:func:`token_set_lens` for several token sets from the same forward pass: ``[len(sites), batch,
    len(token_sets)]``.

    One forward pass; the states are read with :func:`dsteer_eval.steering.capture.record` (hooks removed
    even when the pass raises) and passed through the model's own final norm and ``lm_head`` in the model's
    dtype, the log-softmax taken in float32.
    """
    parts = resolve_parts(model)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                         f"{tuple(input_ids.shape)}: give one mask entry per token")
    vocab = parts.lm_head.weight.shape[0]
    if not token_sets:
        raise ValueError("token_sets: give at least one set of token ids")
    sets = []
    for one in token_sets:
        ids = [int(t) for t in one]
        if not ids or any(t < 0 or t >= vocab for t in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"token_ids must be distinct ids in [0, {vocab}), at least one per set; got {ids[:8]}…")
        sets.append(ids)
    wanted = list(range(parts.num_sites)) if sites is None else [int(s) for s in sites]
    bad = [s for s in wanted if not 0 <= s < parts.num_sites]
    if bad or not wanted:
        raise ValueError(f"sites must lie in 0 … {parts.num_sites - 1} (0 = embeddings, {parts.num_sites - 1} = "
                         f"the final post-norm state), got {bad or wanted}")
    last = _last_positions(attention_mask)
    device = parts.lm_head.weight.device
    with record(model, wanted, parts=parts) as seen:
        model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    rows = torch.arange(input_ids.shape[0], device=device)
    indices = [torch.tensor(ids, device=device) for ids in sets]
    out = []
    for site in wanted:
        state = seen[site][rows, last.to(device)]  # (batch, d)
        normed = state[:, None, :] if site == parts.num_layers else parts.final_norm(state[:, None, :])
        logp = torch.log_softmax(parts.lm_head(normed)[:, 0].float(), dim=-1)
        out.append(torch.stack([torch.logsumexp(logp[:, index], dim=-1) for index in indices], dim=-1).cpu())
    return torch.stack(out)
