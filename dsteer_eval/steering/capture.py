"""Record hidden states at hidden-state sites with forward hooks.

transformers' ``output_hidden_states`` records a layer's output before user
hooks run, so it does not show steering.  :func:`record` hooks the same
modules as :mod:`dsteer_eval.steering.hook`; entered inside a ``steer(...)`` block
it sees the steered states.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dsteer_eval.steering.sites import ModelParts, resolve_parts


@contextmanager
def record(
    model: nn.Module, sites: Iterable[int] | None = None, *, parts: ModelParts | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict filled with ``site -> (batch, seq, d)`` on every forward pass."""
    parts = parts or resolve_parts(model)
    wanted = range(parts.num_sites) if sites is None else list(sites)
    seen: dict[int, torch.Tensor] = {}
    handles = []

    def make(site: int):
        def hook(module, args, output):
            seen[site] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    try:
        for site in wanted:
            handles.append(parts.site_module(site).register_forward_hook(make(site)))
        yield seen
    finally:
        for handle in handles:
            handle.remove()
