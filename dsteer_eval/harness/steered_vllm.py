"""``lm_eval --model steered-vllm``: lm-eval's vLLM backend with dsteer-eval's steering.

It takes the steering arguments of ``--model steered`` (``vector=``, ``layer=`` incl. several, ``alpha=``,
``mode=add|ablate``, ``unit=true``, ``control=random:i``, ``pair=``, ``peft=``, ``vector_pair=``) and checks
them, the vector file against the model and α·v against its dtype, *before* the engine loads: the same
:func:`~dsteer_eval.harness.steered.interventions_for` runs on a weightless (meta-device) copy of the model.
The shipped pair is the default, as for ``steered``; its DPO side runs as merged weights
(:mod:`dsteer_eval.models.merged_checkpoint`, and why), ``peft=none`` is the base.

Steering runs inside the engine's worker(s): :func:`dsteer_eval.steering.engine_hooks.apply` is sent with
``LLM.apply_model`` (vLLM pickles the function across processes, which it allows only with
``VLLM_ALLOW_INSECURE_SERIALIZATION=1``; set here for the engine this model starts, unless already set).
Everything else, log-likelihoods through prompt log-probs and generation, is lm-eval's ``VLLM`` unchanged.

Not in this version (each refused with the fix): ``position=`` other than ``all`` (per-token masks need the
engine's request boundaries), ``unit=norm`` (measures the model's own states), ``norm_preserve``,
``steer_path=``, and ``data_parallel_size > 1`` (lm-eval starts its data-parallel engines inside Ray tasks,
which this hook does not reach yet); ``tensor_parallel_size`` works through ``apply_model``, which runs on
every worker.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM

from dsteer_eval.harness.steered import interventions_for
from dsteer_eval.models.defaults import model_name, resolve_default_pair
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.models.merged_checkpoint import merged_checkpoint
from dsteer_eval.steering import engine_hooks
from dsteer_eval.steering.args import SteerArgs
from dsteer_eval.steering.sites import resolve_parts
from dsteer_eval.vectors.formats import load_vectors

log = logging.getLogger("dsteer_eval.steered_vllm")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": torch.float32}


def skeleton(path, dtype: torch.dtype):
    """The model without weights (meta device): enough for every check of the steering before vLLM loads."""
    from transformers import AutoConfig, AutoModelForCausalLM  # deferred: config only, no weights

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


@register_model("steered-vllm")
class SteeredVLLM(VLLM):
    def __init__(self, pretrained=None, vector=None, layer=None, alpha=1.0, position="all", unit=False, mode="add",
                 norm_preserve=False, control=None, control_seed=0, pair=None, vector_pair=None, peft=None,
                 steer_path=None, dtype="float32", enforce_eager=True, data_parallel_size=1, **kwargs) -> None:
        args = SteerArgs.parse(layer=layer, alpha=alpha, position=position, unit=unit, mode=mode,
                               norm_preserve=norm_preserve, control=control, control_seed=control_seed)
        refused = [(args.position != "all", f"position={args.position}: steered-vllm steers every position in this "
                    "version; use --model steered for prompt/completion/last"),
                   (args.unit == "norm", "unit=norm: use unit=true with steered-vllm, or --model steered"),
                   (args.norm_preserve, "norm_preserve=true: not in steered-vllm yet; use --model steered"),
                   (steer_path is not None, "steer_path=: use vector= with steered-vllm, or --model steered"),
                   (int(data_parallel_size) > 1, "data_parallel_size>1: not in steered-vllm yet (lm-eval starts "
                    "those engines inside Ray tasks the steering does not reach); run one process per shard "
                    "with --limit/--samples, or tensor_parallel_size")]
        for bad, message in refused:
            if bad:
                raise ValueError(message)
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
        chosen = resolve_default_pair(pretrained, pair=pair, vector=vector, peft=peft, vector_pair=vector_pair)
        vector_file = load_vectors(chosen.vector, argument="vector")
        base = resolve_pretrained(pretrained)
        self.skeleton = skeleton(base, DTYPES[str(dtype)])  # kept: every re-pointing is checked on it again
        self.interventions = interventions_for(self.skeleton, resolve_parts(self.skeleton), vector_file, args)
        self.vector_file, self.steer_args = vector_file, args
        adapter = None if chosen.peft is None or str(chosen.peft).strip().lower() == "none" else chosen.peft
        weights = merged_checkpoint(base, adapter) if adapter else base
        self.pretrained_label = f"{model_name(pretrained)}{f'+peft:{adapter}' if adapter else ''}"
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model pickles the hook function
        super().__init__(pretrained=str(weights), dtype=str(dtype), enforce_eager=enforce_eager, **kwargs)
        self.set_steering(self.interventions)

    def interventions_at(self, layer, alpha: float, control: int | None = None):
        """The interventions of ``layer`` (or a tuple of layers) at ``alpha`` with this model's other settings."""
        if alpha == 0:
            return []
        return interventions_for(self.skeleton, resolve_parts(self.skeleton), self.vector_file,
                                 self.steer_args.at(layer, alpha, control))

    def set_steering(self, interventions) -> None:
        """Steer with ``interventions`` from now on, in every worker (buffers rewritten in place)."""
        plan = [(i.site, i.mode, float(i.alpha), i.vector.detach().float().tolist()) for i in interventions]
        placed = self.model.apply_model(partial(engine_hooks.apply, plan=plan))
        expected = {i.site: (i.mode, float(i.alpha)) for i in interventions}
        for worker in placed:
            if worker != expected:
                raise RuntimeError(f"steered-vllm: a worker steers {worker}, expected {expected} (internal error)")
        self.interventions = list(interventions)
        log.info("steered-vllm: %s", ", ".join(f"layer {i.site} alpha {i.alpha:g}" for i in interventions) or "off")
