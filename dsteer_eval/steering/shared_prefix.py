"""Compute the layers below the steered site once for every alpha of a sweep.

Steering at site ``L`` leaves everything below it unchanged, so across the
alpha values of one layer the unsteered hidden state at ``L`` of an input batch
is the same.  :class:`SharedPrefix` keys it by the batch's token ids:

* first time a batch is seen (any alpha): the forward runs normally and a hook,
  registered *before* the steering hook, keeps the unsteered output of the site
  module;
* next time: every decoder layer up to the site (and the final norm when the
  site is ``final``) is swapped for a module that returns the stored state, so
  only the embeddings (cheap), the layers above the site and the head run; the
  steering hook sits on the replay module of the site and adds ``alpha * v``
  exactly as before.

Replayed results are the same computation on the same inputs as a full run.
The first replay at each site is also checked against a full forward: if the
logits differ by more than ``tolerance`` (an architecture this does not fit)
(or the replay raises) the cache switches itself off for the rest of the run and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dsteer_eval.common.env_numbers import env_number
from dsteer_eval.steering.sites import ModelParts
from dsteer_eval.steering.hook import NonFiniteError

log = logging.getLogger(__name__)

DEFAULT_BUDGET_MB = 2048


def budget_bytes() -> int:
    """Memory for stored states: ``DSTEER_SWEEP_CACHE_MB`` (default 2048; 0 turns the cache off)."""
    return int(env_number("DSTEER_SWEEP_CACHE_MB", DEFAULT_BUDGET_MB, "MiB", whole=False) * 2**20)


class _Replay(nn.Module):
    """Stands in for a skipped module: returns the stored hidden state, whatever its input."""

    def __init__(self, state: torch.Tensor, as_tuple: bool) -> None:
        super().__init__()
        self.state, self.as_tuple = state, as_tuple

    def forward(self, *args, **kwargs):
        return (self.state,) if self.as_tuple else self.state


class SharedPrefix:
    """Store of unsteered site states, keyed by the input ids of a batch."""

    def __init__(self, parts: ModelParts, *, budget: int | None = None, tolerance: float | None = None) -> None:
        self.parts = parts
        self.budget = budget_bytes() if budget is None else budget
        dtype = next(parts.lm_head.parameters()).dtype
        self.tolerance = tolerance if tolerance is not None else (1e-4 if dtype in (torch.float32, torch.float64) else 2e-2)
        self.site: int | None = None
        self.scope = ""
        self.enabled = self.budget > 0
        self.stats = {"stored": 0, "replayed": 0, "full": 0, "verified_max_abs_diff": None}
        self._store: dict[tuple, torch.Tensor] = {}
        self._bytes = 0
        self._layer_tuple = False  # do decoder layers return a tuple (older transformers) or a tensor
        self._verified = False
        # where the final norm hangs, for replaying at site ``final`` (None: not a direct child; not replayed)
        self._norm_name = next((n for n, m in parts.decoder.named_children() if m is parts.final_norm), None)

    def set_site(self, site: int | None, scope: str = "") -> None:
        """Share the layers below ``site`` from now on (``None``: none); a new site or a new ``scope`` (the
        side of a base/DPO pair: different weights below the site) empties the store."""
        if (site, scope) != (self.site, self.scope):
            self._store.clear()
            self._bytes, self._verified = 0, False
            self.site, self.scope = site, scope

    @staticmethod
    def _key(ids: torch.Tensor, positions: torch.Tensor | None = None) -> tuple:
        digest = hashlib.blake2b(ids.detach().cpu().contiguous().numpy().tobytes(), digest_size=16)
        if positions is not None:  # packed rows: the positions fix the attention mask too
            digest.update(b"positions")
            digest.update(positions.detach().cpu().contiguous().numpy().tobytes())
        return tuple(ids.shape), str(ids.dtype), digest.hexdigest()

    def call(self, ids: torch.Tensor, run: Callable[[ModelParts], torch.Tensor],
             positions: torch.Tensor | None = None) -> torch.Tensor:
        """``run(parts)`` does the steered forward with hooks on ``parts``; returns its logits.  ``positions``:
        a packed batch's position ids (part of the key)."""
        if (not self.enabled or self.site is None or self.site == 0  # site 0 has nothing below it to share
                or (self.site == self.parts.num_layers and self._norm_name is None)):
            return run(self.parts)
        key = self._key(ids, positions)
        state = self._store.get(key)
        if state is None:
            self.stats["full"] += 1
            with self._recording(key):
                return run(self.parts)
        try:
            with self._replaying(state) as parts:
                out = run(parts)
        except NonFiniteError:
            raise
        except Exception as error:  # noqa: BLE001 - the first replay failing is a failed check, like a mismatch
            if self._verified:
                raise
            log.warning("shared lower layers: replay failed at site %s for this architecture (%s: %s); computing "
                        "every layer from now on", self.site, type(error).__name__, error)
            self._verified, self.enabled = True, False
            self._store.clear()
            return run(self.parts)
        self.stats["replayed"] += 1
        if not self._verified:
            self._verified = True
            full = run(self.parts)
            diff = float((out.float() - full.float()).abs().max())
            self.stats["verified_max_abs_diff"] = max(diff, self.stats["verified_max_abs_diff"] or 0.0)
            if not diff <= self.tolerance:
                log.warning("shared lower layers: replay differs from a full forward by %.3g (> %.3g) at "
                            "site %s for this architecture; computing every layer from now on",
                            diff, self.tolerance, self.site)
                self.enabled = False
                self._store.clear()
                return full
        return out

    @contextmanager
    def _recording(self, key: tuple) -> Iterator[None]:
        def layer_hook(module, args, output):
            self._layer_tuple = isinstance(output, tuple)

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            size = hidden.numel() * hidden.element_size()
            if self._bytes + size <= self.budget:
                # kept on CPU for accelerators: the states of a big model would crowd the GPU
                self._store[key] = hidden.detach().to("cpu", copy=True)
                self._bytes += size
                self.stats["stored"] += 1

        handles = [self.parts.layers[0].register_forward_hook(layer_hook),
                   self.parts.site_module(self.site).register_forward_hook(hook)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def _replaying(self, state: torch.Tensor) -> Iterator[ModelParts]:
        parts, site = self.parts, self.site
        device = next(parts.lm_head.parameters()).device
        state = state.to(device)
        n_skip = min(site, parts.num_layers)
        originals = [parts.layers[i] for i in range(n_skip)]
        below = _Replay(state, self._layer_tuple)
        at_site = _Replay(state, self._layer_tuple)  # its own module: the steering hook goes here only
        norm_replay = _Replay(state, False) if site == parts.num_layers else None
        try:
            for i in range(n_skip):
                parts.layers[i] = at_site if i == site - 1 else below
            if norm_replay is not None:
                setattr(parts.decoder, self._norm_name, norm_replay)
                yield dataclasses.replace(parts, final_norm=norm_replay)
            else:
                yield parts
        finally:
            for i, module in enumerate(originals):
                parts.layers[i] = module
            if norm_replay is not None:
                setattr(parts.decoder, self._norm_name, parts.final_norm)
