"""Both sides of a LoRA pair as plain weights, so neither side of a sweep pays for the LoRA matmuls.

A sweep runs the DPO model (adapter on) and the base model (adapter off) from one PEFT model. With
the adapter on, every adapted linear layer computes ``W x + s·B(A x)``: on a CPU that is about 13 %
of the whole pass for the shipped rank-16, all-linear adapter (377 s vs 333 s per side in the main
job). :class:`MergedSides` computes ``W + s·BA`` once per adapted layer and keeps it beside ``W``;
during a DPO-side forward pass (:meth:`MergedSides.dpo`) each layer's weight points at the merged
tensor and the adapter layers are off; afterwards both are put back. Nothing is rounded twice: the base side always sees the original ``W`` (bit for bit), and the
DPO side sees the merged weight peft's own ``merge`` would compute (``W + get_delta_weight``).

Used only for plain LoRA linear layers (no DoRA or other variants, no LoRA bias, one active
adapter) and when the merged copies fit in :data:`MAX_EXTRA_BYTES`; otherwise the sweep toggles the
adapter as before.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

MAX_EXTRA_BYTES = 2 << 30  # merged copies held beside the base weights


class MergedSides:
    def __init__(self, model, pairs: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]]) -> None:
        self._model = model
        self._pairs = pairs  # (the layer's weight parameter, base W, merged W + ΔW)
        self._depth = 0  # dpo() nests: the outermost call swaps and restores

    @classmethod
    def build(cls, model) -> "MergedSides | None":
        """Merged weights for every LoRA layer of ``model``, or None where merging does not apply."""
        try:
            from peft.tuners.lora import LoraLayer  # deferred: peft loads only when an adapter is used
        except ImportError:
            return None
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        if not layers or not hasattr(model, "disable_adapter_layers"):
            return None
        extra = 0
        for layer in layers:
            active = list(getattr(layer, "active_adapters", []))
            base = layer.get_base_layer()
            if (len(active) != 1 or not isinstance(base, torch.nn.Linear) or getattr(layer, "merged", False)
                    or active[0] in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(active[0])
                    or active[0] not in layer.lora_A):
                return None
            extra += base.weight.numel() * base.weight.element_size()
        if extra > MAX_EXTRA_BYTES:
            log.info("sweep: LoRA adapter kept unmerged (merged copies would take %.1f GiB)", extra / 2**30)
            return None
        pairs = []
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                delta = layer.get_delta_weight(layer.active_adapters[0]).to(weight.dtype)
                pairs.append((weight, weight.data, weight.data + delta))
        log.info("sweep: %d LoRA layers merged once for the DPO side (%.0f MiB)", len(pairs), extra / 2**20)
        return cls(model, pairs)

    @contextmanager
    def dpo(self):
        """The DPO side as plain merged weights for the duration of one call; outside it the model is
        the ordinary PEFT model again (base weights, adapter layers on), so probes see nothing new."""
        self._depth += 1
        try:
            if self._depth == 1:
                for weight, _, merged in self._pairs:
                    weight.data = merged
                self._model.disable_adapter_layers()
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                for weight, base, _ in self._pairs:
                    weight.data = base
                self._model.enable_adapter_layers()
