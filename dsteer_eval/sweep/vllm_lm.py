"""``dsteer-eval sweep --backend vllm``: the sweep's model on vLLM, loaded once per side, re-pointed in place.

One :class:`~dsteer_eval.adapters.steered_vllm.SteeredVLLM` engine per side of the pair (the DPO side as merged
weights, the base as ``peft=none``), each started the first time a point of its side runs and kept for the
rest of the sweep; between points only the steering tables in the engine's workers are rewritten
(:meth:`SteeredVLLM.set_steering`), never the weights.

Per-request steering: the points that share a side and a layer (the runner's group, as for the HF backend's
α-batched generation) are held by the engine at once, one setting per slot (:meth:`SteeredVLLM.set_slots`).
The group's first point runs each greedy request (log-likelihood or generation) under every slot in one
engine pass; the later points of the group are served those answers (keyed by exact tokens, prompt length
and sampling parameters) and run only what they have not been given. ``DSTEER_VLLM_SLOTS`` caps the
settings held at once (default 16; 1 turns this off). The HF backend's shared lower layers are not used here.

A point whose steering breaks the model (NaN/inf, or a collapsed state: the engine's finite guard) raises
:class:`~dsteer_eval.steering.guard.NonFiniteStateError` from its requests, as on the HF backend, so the runner
records it as failed (``failed.json``), never as a finished unit; a broken setting held in a slot raises when its
point is run (its kept answers are never served), and the group's other points keep theirs.
"""

from __future__ import annotations


from lm_eval.api.model import LM

from dsteer_eval.common.env_numbers import env_number
from dsteer_eval.adapters.steered_vllm import SteeredVLLM, setting_key


def max_slots() -> int:
    return env_number("DSTEER_VLLM_SLOTS", 16, "settings", minimum=1)


class VLLMSweepLM(LM):
    def __init__(self, model_args: dict, *, batch_size=8) -> None:
        super().__init__()
        self._model_args = {k: v for k, v in model_args.items() if k not in ("alpha", "layer")}
        self._batch_size = batch_size
        self._engines: dict[str, SteeredVLLM] = {}
        self._side = "dpo"
        self.shared = None  # no shared lower layers on this backend (the runner prints their stats when present)
        self.engine("dpo")

    def engine(self, side: str) -> SteeredVLLM:
        if side not in self._engines:
            args = dict(self._model_args)
            if side == "base":
                args["peft"] = "none"
            self._engines[side] = SteeredVLLM(**args, alpha=0.0, batch_size=self._batch_size)
        return self._engines[side]

    def set_point(self, layer, alpha: float, side: str = "dpo", control: int | None = None) -> None:
        if side not in ("dpo", "base"):
            raise ValueError(f"side must be 'dpo' or 'base', got {side!r}")
        engine = self.engine(side)
        wanted = engine.interventions_at(layer, alpha, control)
        held = engine.slot_of(wanted)
        if held is None:
            engine.set_steering(wanted)
        else:  # a later point of the group the engine holds: its answers may be kept already
            engine.select_slot(held)
        self._side = side

    def set_group(self, points, current: str) -> None:
        """``points`` (``(name, layer, alpha, control)``, this side and layer, from ``current`` on): the engine
        holds up to ``DSTEER_VLLM_SLOTS`` of them, one per slot, so each request runs under all at once."""
        engine = self.engine(self._side)
        points = list(points)[:max_slots()]
        if len(points) < 2:
            return
        names = [name for name, *_ in points]
        if current not in names:
            raise ValueError(f"point {current} is not in its group (internal error)")
        settings = {}
        for _, layer, alpha, control in points:  # one slot per distinct setting
            found = engine.interventions_at(layer, alpha, control)
            settings.setdefault(setting_key(found), found)
        held = engine.held
        if all(key in held for key in settings):  # a later point of the group that is held already
            return
        keys = list(settings)
        engine.set_slots(list(settings.values()), keys.index(setting_key(engine.interventions)))

    @property
    def interventions(self):
        return self.engine(self._side).interventions

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.engine(self._side).loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.engine(self._side).loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self.engine(self._side).generate_until(requests, disable_tqdm=disable_tqdm)

    def __getattr__(self, name):  # tokenizer_name, apply_chat_template, ...: the current side's engine
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.engine(self._side), name)
