"""Run a decoder from a hidden-state site on: compute the layers below a site once, then re-run only the layers above
it for many vectors added there (fitting and measuring steering vectors: dsteer_eval.dpo.vector_fit).

:func:`run_to_site` runs ``model`` on a batch and stops when the state at site ``s`` (the input of ``layers[s]``,
:mod:`dsteer_eval.steering.sites`) is reached: a forward pre-hook on ``layers[s]`` keeps that state and every other
argument the decoder passes its layers (causal mask, rotary position embeddings, position ids ...), then stops the
pass. :func:`run_from_site` feeds ``state + shift`` through ``layers[s:]`` with those same arguments and the final
norm, giving the final post-norm hidden state — the same tensor a full forward pass with the shift added at site
``s`` produces (tested bit for bit against :func:`dsteer_eval.steering.steer`). The pass runs with
``use_cache=False`` so no key/value cache is written. Sites ``1 … num_layers − 1`` (the input of a decoder layer) are
supported; the gradient flows through ``shift``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dsteer_eval.steering.sites import ModelParts, resolve_parts


class _Stop(Exception):
    """Raised inside the pre-hook to end the forward pass once the site's state is kept."""


@dataclass
class SiteState:
    site: int
    hidden: torch.Tensor  # (B, T, d) the state at the site (detached)
    args: tuple  # the layer's other positional arguments
    kwargs: dict  # the layer's keyword arguments (mask, position embeddings, ...)


def _check_site(parts: ModelParts, site) -> int:
    if isinstance(site, bool) or not isinstance(site, int) or not 1 <= site < parts.num_layers:
        raise ValueError(f"site must be an int in 1 … {parts.num_layers - 1} (the input of a decoder layer), got "
                         f"{site!r}")
    return site


@torch.no_grad()
def run_to_site(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, site: int,
                parts: ModelParts | None = None) -> SiteState:
    """The state at ``site`` and the arguments ``layers[site]`` receives, from a pass stopped there."""
    parts = parts or resolve_parts(model)
    site = _check_site(parts, site)
    kept: dict = {}

    def hook(module, args, kwargs):
        kept["hidden"], kept["args"], kept["kwargs"] = args[0].detach(), tuple(args[1:]), dict(kwargs)
        raise _Stop

    handle = parts.layers[site].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        parts.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "hidden" not in kept:
        raise RuntimeError(f"the forward pass never reached layer {site}: is this a standard decoder stack?")
    return SiteState(site, kept["hidden"], kept["args"], kept["kwargs"])


def run_from_site(model: nn.Module, state: SiteState, shift: torch.Tensor | None = None,
                  parts: ModelParts | None = None) -> torch.Tensor:
    """The final post-norm hidden state ``(B, T, d)`` after ``layers[site:]`` and the final norm, fed
    ``state.hidden + shift`` (``shift`` broadcast to ``(B, T, d)``; may require grad)."""
    parts = parts or resolve_parts(model)
    hidden = state.hidden if shift is None else state.hidden + shift.to(state.hidden.dtype)
    for layer in parts.layers[state.site:]:
        out = layer(hidden, *state.args, **state.kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return parts.final_norm(hidden)
