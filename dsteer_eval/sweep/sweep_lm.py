"""The ``steered`` model, loaded once and re-pointed at each (layer, alpha) of a sweep."""

from __future__ import annotations

import dataclasses

from lm_eval.models.huggingface import HFLM

from dsteer_eval.adapters.steered import SteeredLM
from dsteer_eval.steer_args import Layer, resolve_site
from dsteer_eval.sweep.shared_prefix import SharedPrefix


class SweepLM(SteeredLM):
    """:class:`SteeredLM` whose steering changes between grid points without reloading.

    Log-likelihood forwards go through :class:`SharedPrefix`, so the layers
    below the steered site run once per input batch for all alphas of a layer.
    """

    def __init__(self, *args, shared_prefix: bool = True, **kwargs) -> None:
        if kwargs.get("steer_path") is not None:
            raise ValueError("dsteer-eval sweep steers with vector= files; steer_path= is not supported here")
        super().__init__(*args, **kwargs)
        self.shared = SharedPrefix(self._parts) if shared_prefix else None

    def set_point(self, layer: Layer, alpha: float, side: str = "dpo", control: int | None = None) -> None:
        """Steer ``alpha * v`` at ``layer`` from now on; ``alpha == 0`` runs the model unsteered.

        ``side="base"`` switches the PEFT adapter off (the base model of the pair); ``control=i`` steers
        with random control i (same norm, layer and alpha) instead of v. With ``alpha == 0`` the layer
        still tells the shared lower layers which site to keep: the unsteered states are exactly what
        the next alphas of the same side reuse (each side keeps its own).
        """
        if side not in ("dpo", "base"):
            raise ValueError(f"side must be 'dpo' or 'base', got {side!r}")
        adapter = getattr(self.model, "disable_adapter_layers", None)
        if side == "base":
            if adapter is None:
                raise ValueError("a base-side point needs a model with a PEFT adapter (peft=...)")
            self.model.disable_adapter_layers()
        elif adapter is not None:
            self.model.enable_adapter_layers()
        if alpha == 0:
            self._interventions = []
        else:
            args = dataclasses.replace(self._steer_args, layers=(layer,), alphas=(float(alpha),), control=control)
            self._interventions = self._build_interventions(self._vector_file, args)
        if self.shared is not None:
            self.shared.set_site(resolve_site(layer, self._parts.num_layers), scope=side)

    def _model_call(self, inps, attn_mask=None, labels=None):
        if self.shared is None or attn_mask is not None or labels is not None or self._sizing_batch:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        lengths = self._row_prompt_lengths(inps)  # once: the replay check may run the batch twice

        def run(parts):
            with self.steering(lengths, parts):  # the steering hook goes on these parts' site module
                return HFLM._model_call(self, inps)

        return self.shared.call(inps, run)

    def _kept_call(self, inps, keep, prompt_lengths):
        if self.shared is None:
            return super()._kept_call(inps, keep, prompt_lengths)
        lengths = prompt_lengths if self._position != "all" else None

        def run(parts):
            with self.steering(lengths, parts):
                return self._forward_kept(inps, keep)

        return self.shared.call(inps, run)
