"""Find the modules of a Hugging Face causal LM that steering and probes address.

Layer sites follow ``output_hidden_states`` indexing of transformers, so a vector
extracted from ``hidden_states[i]`` is added back at exactly that point:

* site ``0``           output of the token embeddings,
* site ``i`` (1..n-1)  output of decoder layer ``i`` (``layers[i-1]``),
* site ``n``           the final, post-norm hidden state that feeds ``lm_head``
                       (transformers returns this, not the raw output of the
                       last decoder layer, as ``hidden_states[n]``).

``n`` is the number of decoder layers; ``final`` is a name for site ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_LAYER_ATTRS = ("layers", "h", "blocks", "block")
_NORM_ATTRS = ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f")


def unwrap(model: nn.Module) -> nn.Module:
    """Return the transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@dataclass(frozen=True)
class ModelParts:
    decoder: nn.Module
    embeddings: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Module
    hidden_size: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_sites(self) -> int:
        """Number of hidden-state sites (``num_layers + 1``)."""
        return len(self.layers) + 1

    def site_module(self, site: int) -> nn.Module:
        """The module whose output *is* hidden-state site ``site``."""
        if not 0 <= site <= self.num_layers:
            raise ValueError(f"site {site} outside 0..{self.num_layers}")
        if site == 0:
            return self.embeddings
        if site == self.num_layers:
            return self.final_norm
        return self.layers[site - 1]


def _first_attr(obj: nn.Module, names: tuple[str, ...], kind: type | None = None):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None and (kind is None or isinstance(value, kind)):
            return value
    return None


def resolve_parts(model: nn.Module) -> ModelParts:
    """Locate embeddings, decoder layers, final norm and LM head of ``model``."""
    inner = unwrap(model)
    get_decoder = getattr(inner, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is inner:
        decoder = _first_attr(inner, ("model", "transformer", "gpt_neox")) or inner
    layers = _first_attr(decoder, _LAYER_ATTRS, nn.ModuleList)
    if layers is None and hasattr(decoder, "decoder"):  # OPT-style nesting
        decoder = decoder.decoder
        layers = _first_attr(decoder, _LAYER_ATTRS, nn.ModuleList)
    final_norm = _first_attr(decoder, _NORM_ATTRS, nn.Module)
    embeddings = inner.get_input_embeddings()
    lm_head = inner.get_output_embeddings()
    if layers is None or final_norm is None or embeddings is None or lm_head is None:
        raise ValueError(
            f"cannot locate decoder layers / final norm / embeddings / lm_head in "
            f"{type(inner).__name__}; dsteer-eval supports decoder-only transformers "
            f"models that expose `layers` (or `h`) and a final norm (`norm`/`ln_f`)"
        )
    hidden_size = getattr(inner.config, "hidden_size", None) or embeddings.weight.shape[1]
    return ModelParts(decoder, embeddings, layers, final_norm, lm_head, int(hidden_size))
