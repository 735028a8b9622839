"""The finite guard: a steered forward pass whose logits are NaN/inf or collapsed stops the run.

Steering far enough (large alpha, float16 overflow) breaks the numbers a task reads: argmax over NaN picks
choice 0, and a collapsed state scores every choice alike so the shortest wins.  Inside
:func:`finite_guard`, every forward pass's logits are checked on real tokens (padding is never read) and
:class:`NonFiniteStateError` is raised instead of scoring them.  The check only reads; it edits nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from dsteer_eval.steering.hook import NonFiniteError
from dsteer_eval.steering.sites import ModelParts


class NonFiniteStateError(NonFiniteError):
    """A steered forward pass produced NaN/inf: the run stops instead of scoring meaningless numbers."""


@contextmanager
def finite_guard(parts: ModelParts, describe: Callable[[], str]) -> Iterator[None]:
    """Hooks that check the logits (real tokens only, by the attention mask) of every forward pass: NaN/inf,
    or a collapsed state (a token whose logits are all equal, or whose state feeding the LM head is all
    zero: alpha*v overflowed a norm's mean square, and the shortest choice would win).  One pass over the
    logits and one over the head's input in the usual case."""
    seen = {"mask": None}

    def pre_hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        seen["mask"] = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def hook(module, args, output):
        logits = output[0] if isinstance(output, tuple) else output
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.numel() == 0:
            return
        lo, hi = torch.aminmax(logits.detach(), dim=-1)  # per token; NaN propagates to both
        nonfinite = ~(torch.isfinite(lo) & torch.isfinite(hi))
        collapsed = hi == lo
        hidden = args[0] if args else None
        if isinstance(hidden, torch.Tensor) and hidden.shape[:-1] == lo.shape:
            collapsed |= hidden.detach().abs().amax(dim=-1) == 0
        if not bool((nonfinite | collapsed).any()):
            return  # the usual case
        mask = seen["mask"]
        if mask is not None and logits.dim() == 3 and mask.shape[0] == logits.shape[0] \
                and mask.shape[1] >= logits.shape[1]:
            real = mask[:, -logits.shape[1]:].to(device=logits.device, dtype=torch.bool)
            nonfinite, collapsed = nonfinite & real, collapsed & real  # padding is never read
        if bool(nonfinite.any()):
            n_bad = int((~torch.isfinite(logits[nonfinite])).sum())
            raise NonFiniteStateError(
                f"steered model ({describe()}): a forward pass gave NaN/inf logits ({n_bad} values); "
                f"log-likelihoods and generations from it would be meaningless, so the run stops instead "
                f"of scoring them. Use a smaller alpha, dtype=float32 (float16 overflows above 65504), or "
                f"check the vector"
            )
        if bool(collapsed.any()):
            raise NonFiniteStateError(
                f"steered model ({describe()}): a forward pass collapsed: the logits of "
                f"{int(collapsed.sum())} token(s) are the same for every vocabulary entry (or the state "
                f"feeding the LM head is all zero), as when alpha*v overflows the model's normalisation; "
                f"every choice would score alike and the shortest would win, so the run stops instead of "
                f"scoring them. Use a much smaller alpha (|alpha*v| well below the hidden-state norm; "
                f"unit=norm makes alpha a fraction of it), or check the vector"
            )

    handles = [parts.decoder.register_forward_pre_hook(pre_hook, with_kwargs=True),
               parts.lm_head.register_forward_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
