"""Models a task needs besides the evaluated one: the G-Eval judge and the fidelity reference.

Both are loaded unsteered, once per process (``lru_cache``), from:

* ``smollm2`` (default): the embedded SmolLM2-135M-Instruct -- offline, and weak;
* ``hf:<path or hub id>`` or a bare path: any local/hub causal LM.

The fidelity task prefers the evaluated model itself with steering switched off:
``lm_eval --model steered`` registers its instance here (:func:`register_active`),
and its forward passes outside a steering context are the unsteered model's.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import lru_cache

from dsteer_eval.models.embedded import DEFAULT_MODEL, is_embedded_name
from dsteer_eval.models.loading import load_model

_ACTIVE: list = []


@dataclass(frozen=True)
class ScoringModel:
    model: object
    tokenizer: object
    label: str


def register_active(lm) -> None:
    """Called by the steered adapter: the latest steered model of this process."""
    _ACTIVE[:] = [weakref.ref(lm)]


def active_steered():
    lm = _ACTIVE[0]() if _ACTIVE else None
    return lm


def _strip(spec: str) -> str:
    spec = (spec or "").strip()
    return spec[3:] if spec.startswith("hf:") else spec


@lru_cache(maxsize=None)
def load_scoring_model(spec: str = DEFAULT_MODEL) -> ScoringModel:
    """An unsteered causal LM (eval mode, no grad) for judging or scoring text."""
    target = _strip(spec) or DEFAULT_MODEL
    if target.startswith(("openai:", "http:", "https:")):
        raise ValueError(f"{spec!r} is not a local model; use hf:<path> or smollm2")
    model, tokenizer, path = load_model(target)
    model.requires_grad_(False)
    label = "smollm2 (embedded SmolLM2-135M-Instruct; weak)" if is_embedded_name(target) else f"hf:{target}"
    return ScoringModel(model, tokenizer, label)
