"""Extract steering vectors (all hidden-state sites at once) into a vector file.

Methods:

* ``dpo-diff``   the D-STEER vector v̄: for each prompt x,
                 δ(x) = h_dpo(x) − h_base(x) at the last prompt token, at every
                 site; v̄ = mean δ.  The pair is a :class:`~dsteer_eval.dpo.model_pair.ModelPair`
                 (two checkpoints, or one model with its adapter toggled).
* ``preference`` the logit-geometry vector: mean Δe = W_U[y_w] − W_U[y_l] over
                 preference pairs, where y_w / y_l are the chosen / rejected
                 tokens at the first position where the two replies' tokens
                 differ.  Δe lives where W_U reads, the final post-norm state,
                 so the file holds one vector, for site ``n`` (``final``).
* ``caa``        contrastive activation addition on one model: mean of
                 h(prompt + chosen) − h(prompt + rejected) at the last reply token.

All run in batches with a progress bar and are deterministic (no sampling;
inputs in file order).  A text longer than the model's context
(:func:`context_limit`) is cut to its last tokens (the state read is the last
token's; a leading BOS is kept) and counted: ``stats["truncated"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dsteer_eval.data.preference_pairs import PreferencePair
from dsteer_eval.steering.capture import record
from dsteer_eval.steering.sites import resolve_parts, unwrap

log = logging.getLogger(__name__)
_SANE_CONTEXT = 10_000_000  # tokenizers without a limit say 1e30; configs sometimes say absurd things


def context_limit(model, tokenizer=None) -> int | None:
    """The most tokens one forward pass may take: the smaller of the config's position limit
    (``max_position_embeddings``, ``n_positions``, ...) and the tokenizer's ``model_max_length``,
    ignoring values that are not sane (missing, <= 1, or the "no limit" 1e30); ``None`` if neither is."""

    found = []
    config = getattr(unwrap(model), "config", None) if model is not None else None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            found.append(value)
            break
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and not isinstance(value, bool):
        found.append(value)
    sane = [v for v in found if 1 < v < _SANE_CONTEXT]
    return min(sane) if sane else None


def keep_end(tokens: Sequence[int], max_length: int | None, bos_token_id: int | None = None) -> list[int]:
    """``tokens`` cut to their last ``max_length`` (a leading BOS stays first); unchanged if they fit."""
    tokens = list(tokens)
    if max_length is None or len(tokens) <= max_length:
        return tokens
    if bos_token_id is not None and tokens and tokens[0] == bos_token_id and max_length > 1:
        return [tokens[0]] + tokens[len(tokens) - (max_length - 1):]
    return tokens[len(tokens) - max_length:]


def pad_batch(tokenizer, token_lists: Sequence[Sequence[int]], device, *, max_length: int | None = None,
              stats: dict | None = None):
    """Right-padded ``(ids, attention_mask, last_index)`` for lists of token ids.

    With ``max_length``, longer lists keep their last tokens (:func:`keep_end`) and
    ``stats["truncated"]`` counts them.  Callers that index positions from the start
    (continuation scoring) leave ``max_length`` out."""
    if any(len(t) == 0 for t in token_lists):
        raise ValueError("an empty text has no last token")
    if max_length is not None:
        bos = getattr(tokenizer, "bos_token_id", None)
        cut = [keep_end(t, max_length, bos) for t in token_lists]
        n_cut = sum(len(a) != len(b) for a, b in zip(cut, token_lists))
        if n_cut:
            log.warning("%d token sequence(s) longer than the model's context of %d tokens are cut to their "
                        "last %d tokens", n_cut, max_length, max_length)
        if stats is not None:
            stats["truncated"] = stats.get("truncated", 0) + n_cut
        token_lists = cut
    width = max(len(t) for t in token_lists)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([list(t) + [pad] * (width - len(t)) for t in token_lists], device=device)
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in token_lists], device=device)
    last = torch.tensor([len(t) - 1 for t in token_lists], device=device)
    return ids, mask, last


def sorted_batches(tokenizer, texts: Sequence[str], batch_size: int, device, *, max_length: int | None = None,
                   stats: dict | None = None):
    """``(indices, ids, mask, last)`` batches of ``texts`` in order of token length (less padding).

    With ``max_length`` (see :func:`context_limit`), a longer text keeps its last
    ``max_length`` tokens and is counted in ``stats["truncated"]``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [tokenizer(t, add_special_tokens=True).input_ids for t in texts]
    bos = getattr(tokenizer, "bos_token_id", None)
    cut = [keep_end(ids, max_length, bos) for ids in encoded]
    n_cut = sum(len(a) != len(b) for a, b in zip(cut, encoded))
    if n_cut:
        log.warning("%d of %d text(s) are longer than the model's context of %d tokens; each is cut to its "
                    "last %d tokens (the last token's state is the one read)", n_cut, len(texts), max_length,
                    max_length)
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + n_cut
        stats["context"] = max_length
    order = sorted(range(len(texts)), key=lambda i: (len(cut[i]), i))
    for start in range(0, len(texts), batch_size):
        index = order[start : start + batch_size]
        yield (index, *pad_batch(tokenizer, [cut[i] for i in index], device))


def last_token_states(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8, desc: str = "",
                      stats: dict | None = None) -> torch.Tensor:
    """Hidden states of the last token of each text, all sites: ``(len(texts), sites, d)`` float32.

    Texts are batched in order of length and returned in input order.  Only the
    decoder runs: no logits are computed.  Texts longer than the model's context
    keep their last tokens; ``stats["truncated"]`` counts them.
    """
    parts = resolve_parts(model)
    device = next(model.parameters()).device
    out = torch.empty(len(texts), parts.num_sites, parts.hidden_size)
    batches = sorted_batches(tokenizer, texts, batch_size, device, max_length=context_limit(model, tokenizer),
                             stats=stats)
    for index, ids, mask, last in tqdm(batches, total=-(-len(texts) // batch_size), desc=desc or "forward", leave=False):
        with torch.no_grad(), record(model, parts=parts) as seen:
            parts.decoder(input_ids=ids, attention_mask=mask, use_cache=False)
        rows = torch.arange(len(index), device=device)
        out[index] = torch.stack([seen[s][rows, last].float().cpu() for s in range(parts.num_sites)], 1)
    return out


def unique_prompts(pairs: Sequence[PreferencePair]) -> list[str]:
    """Prompts of the pairs, first occurrence order, without repeats."""
    return list(dict.fromkeys(p.prompt for p in pairs))


@dataclass
class PairStates:
    """Last-prompt-token states of both sides over the same prompts: ``(N, sites, d)`` each."""

    prompts: list[str]
    base: torch.Tensor
    dpo: torch.Tensor
    truncated: int = 0  # prompts cut to the model's context (their last tokens kept)

    @property
    def delta(self) -> torch.Tensor:
        return self.dpo - self.base


def pair_states(pair, prompts: Sequence[str], *, batch_size: int = 8, stats: dict | None = None) -> PairStates:
    if not prompts:
        raise ValueError("dpo-diff needs at least one prompt")
    states, seen = {}, {}
    for which in ("base", "dpo"):
        side_stats: dict = {}
        with pair.side(which) as model:
            states[which] = last_token_states(model, pair.tokenizer, prompts, batch_size=batch_size, desc=which,
                                              stats=side_stats)
        seen[which] = side_stats
    truncated = max(s.get("truncated", 0) for s in seen.values())  # the same prompts on both sides
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + truncated
        stats["context"] = seen["base"].get("context")
    return PairStates(list(prompts), states["base"], states["dpo"], truncated)


def dpo_diff(pair, prompts: Sequence[str], *, batch_size: int = 8,
             stats: dict | None = None) -> dict[int, torch.Tensor]:
    """v̄ = mean over prompts of h_dpo − h_base at the last prompt token, every site."""
    mean = pair_states(pair, prompts, batch_size=batch_size, stats=stats).delta.mean(0)
    return {site: mean[site] for site in range(mean.shape[0])}


@dataclass(frozen=True)
class Divergence:
    """Where a pair's chosen and rejected token sequences first differ."""

    prefix: tuple[int, ...]  # tokens up to (not including) the divergent one
    chosen_token: int
    rejected_token: int


def first_divergence(tokenizer, pair: PreferencePair) -> Divergence | None:
    """First token where prompt+chosen and prompt+rejected differ (EOS stands in for an ended reply).

    ``None`` when the two token sequences are identical.
    """
    a = tokenizer(pair.prompt + pair.chosen, add_special_tokens=True).input_ids
    b = tokenizer(pair.prompt + pair.rejected, add_special_tokens=True).input_ids
    eos = tokenizer.eos_token_id
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    if n == len(a) and n == len(b):
        return None
    ca = a[n] if n < len(a) else eos
    cb = b[n] if n < len(b) else eos
    if ca is None or cb is None or ca == cb or n == 0:
        return None
    return Divergence(tuple(a[:n]), int(ca), int(cb))


def divergences(tokenizer, pairs: Sequence[PreferencePair]) -> tuple[list[Divergence], int]:
    """Divergence of every pair that has one, and the number of pairs without one."""
    found = [first_divergence(tokenizer, p) for p in pairs]
    kept = [d for d in found if d is not None]
    return kept, len(found) - len(kept)


def unembedding(model) -> torch.Tensor:
    return resolve_parts(model).lm_head.weight.detach().float()


def preference(model, tokenizer, pairs: Sequence[PreferencePair]) -> tuple[dict[int, torch.Tensor], int]:
    """``({final_site: mean Δe}, pairs used)``; Δe = W_U[y_w] − W_U[y_l] at the first divergent token."""
    found, _ = divergences(tokenizer, pairs)
    if not found:
        raise ValueError("no preference pair has chosen and rejected replies that differ in their tokens")
    w = unembedding(model)
    chosen = torch.tensor([d.chosen_token for d in found])
    rejected = torch.tensor([d.rejected_token for d in found])
    mean = (w[chosen] - w[rejected]).mean(0).cpu()
    return {resolve_parts(model).num_layers: mean}, len(found)


def caa(model, tokenizer, pairs: Sequence[PreferencePair], *, batch_size: int = 8,
        stats: dict | None = None) -> dict[int, torch.Tensor]:
    if not pairs:
        raise ValueError("caa needs at least one preference pair")
    chosen = last_token_states(model, tokenizer, [p.prompt + p.chosen for p in pairs], batch_size=batch_size,
                               desc="chosen", stats=stats)
    rejected = last_token_states(model, tokenizer, [p.prompt + p.rejected for p in pairs], batch_size=batch_size,
                                 desc="rejected", stats=stats)
    mean = (chosen - rejected).mean(0)
    return {site: mean[site] for site in range(mean.shape[0])}
