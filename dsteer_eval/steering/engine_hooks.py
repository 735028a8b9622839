"""Steering inside a serving engine's model: vLLM's Llama-style decoders, in every worker.

vLLM's decoder layers return ``(hidden, residual)``: the residual stream that a transformers model returns
as ``hidden_states[i]`` is their sum (the next layer's fused add-and-norm forms it; the final norm too), so
adding α·v to ``hidden`` adds it to the stream exactly where :func:`dsteer_eval.steering.hook.steer` adds it
at the same site. Sites follow :mod:`dsteer_eval.steering.sites`: 0 = the token embeddings' output,
i = ``layers[i-1]``'s output, n = the final norm's output (its first element).

* ``add``: the stream gains Σ α·v (summed in float32, added in the model's dtype), as ``steer`` does;
* ``ablate``: the stream h = hidden + residual loses α·(h·v̂)·v̂ (float32), taken off ``hidden``.

One hook per site reads persistent buffers (the shift for add; α and v̂ for ablate). Re-pointing between
sweep points (:func:`apply`) copies new values into those buffers in place (``Tensor.copy_``) when the sites
are the same, so a captured CUDA graph, which replays fixed memory addresses, would see the new α without
re-capture; a site in no intervention keeps a zero shift (x + 0 = x exactly). The functions here run in the
engine's worker processes (``LLM.apply_model``), so they take plain data (lists), never tensors of the
caller's process.
"""

from __future__ import annotations

import torch

ATTR = "_dsteer_engine_steering"


def _inner(model):
    return getattr(model, "model", model)


def num_layers(model) -> int:
    return len(_inner(model).layers)


def _site_module(model, site: int):
    inner = _inner(model)
    n = len(inner.layers)
    if not 0 <= site <= n:
        raise ValueError(f"site {site} outside 0..{n}")
    return inner.embed_tokens if site == 0 else inner.norm if site == n else inner.layers[site - 1]


def _make_hook(buffers: dict):
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        residual = output[1] if isinstance(output, tuple) and len(output) > 1 and output[1] is not None \
            and module is not buffers["norm"] else None
        if buffers["mode"] == "ablate":
            stream = hidden.float() if residual is None else hidden.float() + residual.float()
            u = buffers["unit"]
            hidden = (hidden.float() - buffers["alpha"] * (stream @ u)[..., None] * u).to(hidden.dtype)
        else:
            hidden = hidden + buffers["shift"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
    return hook


def apply(model, plan: list) -> dict:
    """Steer ``model`` with ``plan``: ``[(site, mode, alpha, vector as a list)]`` (one entry per site; an empty
    plan steers nothing). Hooks are installed at new sites; every known site's buffers are rewritten in place.
    Returns what is in place, ``{site: (mode, alpha)}``, for the caller to check."""
    state = getattr(model, ATTR, None)
    if state is None:
        state = {}
        setattr(model, ATTR, state)
    param = next(model.parameters())
    wanted = {int(site): (mode, float(alpha), vector) for site, mode, alpha, vector in plan}
    for site, (mode, alpha, vector) in wanted.items():
        module = _site_module(model, site)
        if site not in state:
            size = len(vector)
            buffers = {"mode": mode, "alpha": torch.zeros((), dtype=torch.float32, device=param.device),
                       "unit": torch.zeros(size, dtype=torch.float32, device=param.device),
                       "shift": torch.zeros(size, dtype=param.dtype, device=param.device),
                       "norm": _inner(model).norm}
            buffers["handle"] = module.register_forward_hook(_make_hook(buffers))
            state[site] = buffers
        buffers = state[site]
        v = torch.tensor(vector, dtype=torch.float32)
        buffers["mode"] = mode
        if mode == "ablate":
            buffers["unit"].copy_(v / v.norm())
            buffers["alpha"].fill_(alpha)
            buffers["shift"].zero_()
        else:
            buffers["shift"].copy_((alpha * v).to(buffers["shift"].dtype))
            buffers["alpha"].zero_()
    for site, buffers in state.items():
        if site not in wanted:  # steered before, not now: adds zero
            buffers["mode"] = "add"
            buffers["shift"].zero_()
            buffers["alpha"].zero_()
    return {site: (mode, alpha) for site, (mode, alpha, _) in wanted.items()}


def remove(model) -> int:
    """Take every steering hook off ``model``; returns how many there were."""
    state = getattr(model, ATTR, None) or {}
    for buffers in state.values():
        buffers["handle"].remove()
    if hasattr(model, ATTR):
        delattr(model, ATTR)
    return len(state)
