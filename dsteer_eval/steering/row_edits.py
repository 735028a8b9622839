"""Per-row steering: one batch carries several alphas (rows x points), each row shifted by its own alpha*v.

Used by the sweep's grouped passes (:mod:`dsteer_eval.sweep.alpha_batch`, :class:`~dsteer_eval.sweep.sweep_lm.
SweepLM`): generation runs every point of a group in one ``generate`` call (rows repeated per point, shifted
per row: :func:`row_shift_edit`), and a log-likelihood pass runs the layers below the site once and expands
the batch there (:func:`expanded_rows`; the layers above get their per-row inputs repeated by
:func:`repeat_layer_inputs`).  Rows never mix: each row's result is that of a separate pass with its shift.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dsteer_eval.steering.sites import ModelParts


def row_shift_edit(shifts: torch.Tensor):
    """``hidden -> hidden + shifts[row]`` for a ``(rows, d)`` tensor of per-row shifts (a ``module_edits``
    function for :func:`dsteer_eval.steering.hook.steer`)."""

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[0] != shifts.shape[0]:
            raise RuntimeError(f"per-row steering: {shifts.shape[0]} shifts for a batch of {hidden.shape[0]} rows")
        return hidden + shifts.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(1)

    return edit


@contextmanager
def expanded_rows(module: nn.Module, shifts: torch.Tensor, times: int) -> Iterator[None]:
    """Inside the block, ``module``'s output of ``rows`` rows becomes ``rows x times`` rows (variant-major: the
    whole batch once per variant), row ``i`` shifted by ``shifts[i]`` (``shifts``: ``(rows x times, d)``)."""

    def expand(mod, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        grown = hidden.repeat(times, *([1] * (hidden.dim() - 1)))
        grown = grown + shifts.to(device=grown.device, dtype=grown.dtype).unsqueeze(1)
        return (grown, *output[1:]) if isinstance(output, tuple) else grown

    handle = module.register_forward_hook(expand)
    try:
        yield
    finally:
        handle.remove()


# the per-row inputs a decoder layer takes besides the hidden states (transformers' names)
_ROW_INPUTS = ("attention_mask", "position_ids", "position_embeddings")


def _repeat_rows(value, rows: int, times: int):
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_repeat_rows(v, rows, times) for v in value)
    return value


@contextmanager
def repeat_layer_inputs(parts: ModelParts, site: int, rows: int, times: int) -> Iterator[None]:
    """Inside the block, the decoder layers above ``site`` repeat their per-row inputs (a packed batch's mask,
    positions and rotary embeddings, ``rows`` each) ``times`` times when the hidden states arrive with
    ``rows x times`` rows (a grouped pass expanded at the site)."""

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if rows == 1 or hidden is None or hidden.shape[0] != rows * times:
            return None
        kwargs = {k: (_repeat_rows(v, rows, times) if k in _ROW_INPUTS else v) for k, v in kwargs.items()}
        return args, kwargs

    handles = [parts.layers[i].register_forward_pre_hook(pre_hook, with_kwargs=True)
               for i in range(min(site, parts.num_layers), parts.num_layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
