"""The one resolver of the shipped pair: what runs when a user names less than everything.

dsteer-eval ships, for the embedded model (``pretrained`` unset or an embedded short name such as
``smollm2``), base/DPO pairs (``pair=refusal``, the default, or ``pair=hh``): a LoRA adapter (the DPO
side) and its steering vector v̄. Every caller that fills in a default (the ``steered`` model, the
CLI verbs, the sweep's fingerprint, the ceiling, the probes) asks this module, so the rule is stated
once:

* no ``vector=``: the shipped v̄ of ``pair`` (embedded models only; any other model must name its
  vector), and, unless ``peft=`` is given, the shipped DPO adapter it belongs to;
* ``vector=`` given: no default adapter (``pair=`` is then refused: it picks shipped files);
* ``vector_pair=Q`` (no ``vector=``): the shipped v̄ of pair Q on the model of ``pair`` (its adapter): a
  vector from another distribution on this pair (the HH pair's v̄ on the refusal pair and back);
* ``peft=none``: the base model itself (kept as the user wrote it; :attr:`Resolved.adapter` is None).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from dsteer_eval.steering.key_scaling import parse_neurons
from dsteer_eval.models.embedded import (
    DEFAULT_MODEL,
    check_pair,
    default_adapter,
    default_vector,
    is_embedded_name,
    shipped_file,
)


class NoDefaultVectorError(ValueError):
    """No vector was named and this install ships none for the model (or a shipped file is missing)."""


def model_name(pretrained) -> str:
    """The label of ``pretrained=``: the user's value, or the embedded default's short name."""
    return DEFAULT_MODEL if pretrained is None or str(pretrained).strip() == "" else str(pretrained)


def _embedded_key(pretrained) -> str | None:
    """The embedded short name ``pretrained`` stands for, or None for any other model."""
    if pretrained is None or str(pretrained).strip() == "":
        return DEFAULT_MODEL
    return str(pretrained).strip().lower() if is_embedded_name(pretrained) else None


def shipped_vector(pretrained=None, pair=None) -> str | None:
    """The shipped v̄ of ``pair`` for ``pretrained``, or None (not an embedded model, or not shipped)."""
    key = _embedded_key(pretrained)
    found = default_vector(key, pair) if key else None
    return None if found is None else str(found)


def shipped_adapter(pretrained=None, pair=None) -> str | None:
    """The shipped DPO adapter of ``pair`` for ``pretrained``, or None."""
    key = _embedded_key(pretrained)
    found = default_adapter(key, pair) if key else None
    return None if found is None else str(found)


@dataclass(frozen=True)
class Resolved:
    """What a ``steered`` run steers: the vector file, and the adapter (``peft=``) the model carries."""

    pretrained: str | None  # as given (None = the embedded default)
    vector: str
    peft: str | None  # as given, or the shipped adapter; "none" kept as written
    shipped: bool  # the vector (and, unless peft= was given, the adapter) are the shipped pair's

    @property
    def adapter(self) -> str | None:
        """The adapter that is loaded (None for no ``peft=`` or ``peft=none``)."""
        if self.peft is None or str(self.peft).strip().lower() in ("", "none"):
            return None
        return str(self.peft)

    @property
    def name(self) -> str:
        return model_name(self.pretrained)


def resolve_default_pair(pretrained=None, *, pair=None, vector=None, peft=None, vector_pair=None) -> Resolved:
    """``pretrained``, ``pair``, ``vector``, ``peft`` -> what a ``steered`` model runs (rule in the module
    docstring). Raises ValueError naming the argument to give."""
    if vector is not None and str(vector).strip() != "":
        if vector_pair is not None:
            raise ValueError("give either vector= (a file) or vector_pair= (another shipped pair's v̄), not both")
        if pair is not None:
            raise ValueError("pair= picks a shipped base/DPO pair; with vector= give peft= yourself")
        return Resolved(pretrained, str(vector), None if peft is None else str(peft), shipped=False)
    key = _embedded_key(pretrained)
    if key is None:
        raise ValueError(
            f"vector= is required for pretrained={pretrained}: pass a .safetensors file from "
            f"`dsteer-eval extract` (or steer_path= for lm-eval's built-in .pt format)"
        )
    if vector_pair is not None:
        check_pair(vector_pair)  # names the known pairs
    found = default_vector(key, pair if vector_pair is None else vector_pair)
    if found is None:
        raise NoDefaultVectorError(
            f"no vector= given, and this install does not ship the steering vector of pair "
            f"{check_pair(pair if vector_pair is None else vector_pair)!r} "
            f"for the embedded model '{key}' (dsteer_eval/artifacts/{key}/; scripts/refusal_pipeline.sh and "
            f"scripts/dsteer_pipeline.sh re-create them). Pass vector=PATH.safetensors and layer=L"
        )
    if peft is None:
        adapter = default_adapter(key, pair)
        if adapter is None:
            raise NoDefaultVectorError(
                f"dsteer-eval ships a vector but no DPO adapter for '{key}' (a broken install?); "
                f"reinstall dsteer-eval, or pass peft=none to steer the base model"
            )
        peft = str(adapter)
    return Resolved(pretrained, str(found), str(peft), shipped=True)


def resolve_dpo_side(pretrained=None, *, dpo=None, peft=None) -> dict:
    """The DPO side of a base/DPO pair as ``ModelPair.load`` takes it: ``{"dpo": CHECKPOINT}`` or
    ``{"adapter": FOLDER}``; for the embedded model with neither, the shipped adapter of the default pair."""
    if dpo and peft:
        raise ValueError("give the DPO model as --dpo CHECKPOINT or as --peft ADAPTER, not both")
    if dpo:
        return {"dpo": dpo}
    if peft:
        return {"adapter": peft}
    adapter = shipped_adapter(pretrained)
    if adapter is not None:
        return {"adapter": adapter}
    raise ValueError("this method needs the DPO model: pass --dpo CHECKPOINT or --peft ADAPTER_FOLDER")


# the ranked toxic neurons of the toxicity pair's base model (written by scripts/lee_after_dpo.py: value vectors
# by cosine with the toxicity probe moved through the final norm), for scale_keys=toxic:K
TOXIC_NEURONS = "toxicity/toxic_neurons.json"


def resolve_key_neurons(pretrained, spec) -> list[tuple[int, int]]:
    """``scale_keys=`` as a list of (layer, index): ``toxic:K`` = the top K toxic neurons the package ships for the
    embedded model (its toxicity pair), or neurons named ``L.j`` joined by ``+``."""
    text = str(spec).strip()
    if not text.lower().startswith("toxic:"):
        return parse_neurons(text)
    try:
        k = int(text.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"scale_keys={spec!r}: toxic:K needs a whole number K >= 1, e.g. scale_keys=toxic:7") from None
    key = _embedded_key(pretrained)
    found = shipped_file(key, TOXIC_NEURONS) if key else None
    if found is None:
        raise ValueError(f"scale_keys={spec!r}: the package ships toxic neurons only for the embedded model's "
                         f"toxicity pair ({TOXIC_NEURONS}); name neurons as LAYER.INDEX joined by '+'")
    ranked = [tuple(n) for n in json.loads(found.read_text(encoding="utf-8"))["neurons"]]
    if not 1 <= k <= len(ranked):
        raise ValueError(f"scale_keys={spec!r}: K must be in 1..{len(ranked)} (the shipped ranking's length)")
    return ranked[:k]
