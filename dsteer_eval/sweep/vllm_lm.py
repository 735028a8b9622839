"""``dsteer-eval sweep --backend vllm``: the sweep's model on vLLM, loaded once per side, re-pointed in place.

One :class:`~dsteer_eval.harness.steered_vllm.SteeredVLLM` engine per side of the pair (the DPO side as merged
weights, the base as ``peft=none``), each started the first time a point of its side runs and kept for the
rest of the sweep; between points only the steering buffers in the engine's workers are rewritten
(:meth:`SteeredVLLM.set_steering`), never the weights. Each point is one pass over its requests: the
α-batched group passes and the shared lower layers of the HF backend are not used here (per-request α in
one engine batch is future work, docs/vllm.md).
"""

from __future__ import annotations

from lm_eval.api.model import LM

from dsteer_eval.harness.steered_vllm import SteeredVLLM


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
        engine.set_steering(engine.interventions_at(layer, alpha, control))
        self._side = side

    def set_group(self, points, current: str) -> None:
        """Nothing to group: every point is its own pass on this backend."""

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
