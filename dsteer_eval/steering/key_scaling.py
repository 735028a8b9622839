"""Scaling the keys of chosen MLP neurons inside the forward pass: Lee et al. 2024's un-aligning (Table 4: the keys
of the top toxic neurons x10 in the DPO model bring toxicity back), for SwiGLU MLPs.

A SwiGLU neuron ``j`` of layer ``L`` has two keys, row ``j`` of ``gate_proj`` and row ``j`` of ``up_proj``
(:mod:`dsteer_eval.probes.value_vectors`). Scaling both rows by ``f`` is the same as multiplying output channel ``j``
of both projections by ``f`` (Llama's projections have no bias); that is what :func:`key_scale_edits` does, as
``module_edits`` for :func:`dsteer_eval.steering.hook.steer` on the projections' outputs — so it works on a plain
model, on a LoRA-wrapped projection (whose output already holds the adapter's delta: the DPO model's keys are
scaled, not only the base's) and on merged weights alike, and never writes a weight. Because both factors of
``act_fn(g) * u`` scale, the activation grows by about ``f²`` where SiLU is near-linear (documented adaptation).

Neurons are named ``L.j`` (layer, index), several joined by ``+`` (``15.123+20.5``): a comma would end the
lm-eval model argument.
"""

from __future__ import annotations

import math
import re

import torch

from dsteer_eval.steering.sites import ModelParts

_NEURON = re.compile(r"^\s*(\d+)\.(\d+)\s*$")


def parse_neurons(spec: str, argument: str = "scale_keys") -> list[tuple[int, int]]:
    """``"15.123+20.5"`` -> ``[(15, 123), (20, 5)]`` (each neuron once, in order)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{argument}=: name neurons as LAYER.INDEX joined by '+', e.g. {argument}=15.123+20.5")
    out = []
    for part in spec.split("+"):
        found = _NEURON.match(part)
        if not found:
            raise ValueError(f"{argument}={spec!r}: {part!r} is not LAYER.INDEX; name neurons as e.g. 15.123+20.5")
        out.append((int(found.group(1)), int(found.group(2))))
    return list(dict.fromkeys(out))


def check_factor(factor, argument: str = "key_factor") -> float:
    try:
        value = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"{argument}={factor!r}: give a number, e.g. {argument}=10") from None
    if not math.isfinite(value):
        raise ValueError(f"{argument}={factor!r}: must be finite, e.g. {argument}=10")
    return value


def key_scale_edits(parts: ModelParts, neurons, factor: float, argument: str = "scale_keys") -> list:
    """``(module, hidden -> hidden)`` edits multiplying output channel ``j`` of ``gate_proj`` and ``up_proj`` of
    each neuron ``(L, j)`` by ``factor``."""
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        if not 0 <= layer < parts.num_layers:
            raise ValueError(f"{argument}: neuron {layer}.{index}: layer outside 0..{parts.num_layers - 1}")
        mlp = parts.layers[layer].mlp
        width = mlp.gate_proj.out_features if hasattr(mlp.gate_proj, "out_features") else \
            mlp.gate_proj.weight.shape[0]
        if not 0 <= index < width:
            raise ValueError(f"{argument}: neuron {layer}.{index}: index outside 0..{width - 1}")
        by_layer.setdefault(layer, []).append(index)
    edits = []
    for layer, indices in by_layer.items():
        mlp = parts.layers[layer].mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            edits.append((proj, _channel_scaler(indices, factor)))
    return edits


def _channel_scaler(indices: list[int], factor: float):
    index = torch.tensor(indices, dtype=torch.long)

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        scale = torch.ones(hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        scale[index.to(hidden.device)] = factor
        return hidden * scale

    return edit
