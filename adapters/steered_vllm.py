"""``lm_eval --model steered-vllm``: lm-eval's vLLM backend with dsteer-eval's steering.

It takes the steering arguments of ``--model steered`` (``vector=``, ``layer=`` incl. several, ``alpha=``,
``position=all|prompt|completion|last``, ``mode=add|ablate``, ``unit=true``, ``control=random:i``, ``pair=``,
``peft=``, ``vector_pair=``) and checks them, the vector file against the model and α·v against its dtype,
*before* the engine loads: the same :func:`~dsteer_eval.adapters.steered.interventions_for` runs on a
weightless (meta-device) copy of the model. The shipped pair is the default, as for ``steered``; its DPO side
runs as merged weights (:mod:`dsteer_eval.models.merged_checkpoint`, and why), ``peft=none`` is the base.

Steering runs inside the engine's worker(s): the engine starts with
:class:`~dsteer_eval.steering.engine_hooks.SteeringWorker` as vLLM's ``worker_extension_cls``, and
``LLM.collective_rpc`` calls its methods *by name* on every worker (install the steering; read the finite
guard), so nothing is pickled and ``VLLM_ALLOW_INSECURE_SERIALIZATION`` is never needed.
Each request carries its prompt length (a log-likelihood request's context length: vLLM sees context and
continuation as one prompt) and its steering slot in ``SamplingParams.extra_args``, and a prefix-cache salt
naming the steering it ran under, so vLLM's prefix cache never serves KV computed under other steering.
``data_parallel_size > 1`` runs that many steered engine replicas as Ray actors
(:mod:`dsteer_eval.adapters.vllm_replicas`); ``tensor_parallel_size`` reaches every rank through
``collective_rpc``. Everything else, log-likelihoods through prompt log-probs and generation, is lm-eval's
``VLLM``.

Several settings in one engine pass (:meth:`SteeredVLLM.set_slots`, :meth:`SteeredVLLM.select_slot`):
the first call for a batch runs it under every slot at once and keeps the other slots' answers, keyed by the
exact tokens, prompt length and sampling parameters, for when that slot is selected (greedy requests only).

The finite guard, as ``steered``'s: after every engine call the workers' per-slot counts of real tokens whose
LM-head input is NaN/inf or all zero are read once; a non-zero count raises
:class:`~dsteer_eval.steering.guard.NonFiniteStateError` naming the model args (alpha, dtype), for the requests
of the slot in use now, and for a slot whose answers were kept (it is marked broken until re-pointed).

``dtype=auto`` runs the *base* model's config dtype on both sides of the pair (the merged DPO checkpoint is
saved in float32 and would otherwise resolve on its own), and α·v is checked against that dtype.

Refused, each with the fix: ``unit=norm`` (measures the model's own states), ``norm_preserve``,
``steer_path=``, and ``enforce_eager=false`` (hooks added after vLLM compiles the model or captures CUDA graphs
may not run: a graph replay skips them, silently unsteered numbers).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict, deque
from dataclasses import replace

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM
from transformers import AutoConfig, AutoModelForCausalLM
from vllm import SamplingParams, TokensPrompt

from dsteer_eval.adapters.lm_cache import model_identity, rekey, steering_digest
from dsteer_eval.adapters.steered import interventions_for
from dsteer_eval.adapters.vllm_replicas import ReplicaPool
from dsteer_eval.common.redaction import register_model_args
from dsteer_eval.models.defaults import model_name, resolve_default_pair
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.models.merged_checkpoint import merged_checkpoint
from dsteer_eval.steering.args import SteerArgs, parse_bool, parse_position
from dsteer_eval.steering.engine_batch import PROMPT_LEN, SLOT
from dsteer_eval.steering.engine_hooks import EXTENSION, guard_counts, guard_error
from dsteer_eval.steering.sites import resolve_parts
from dsteer_eval.vectors.formats import load_vectors

log = logging.getLogger("dsteer_eval.steered_vllm")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def engine_dtype(dtype, config) -> str:
    """The dtype the engine runs: as given, or for ``auto`` ``config``'s (the base model's) ``torch_dtype``
    (float32 when it names none), passed to vLLM explicitly so both sides of a pair run the same precision."""
    dtype = str(dtype)
    if dtype != "auto":
        return dtype
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    name = str(found).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype=auto: the model's config names torch_dtype={name}; pass one of {', '.join(DTYPES)}")
    return name


def skeleton(config, dtype: torch.dtype):
    """The model without weights (meta device): enough for every check of the steering before vLLM loads."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _plan_entries(interventions) -> list:
    return [(i.site, i.mode, float(i.alpha), i.vector.detach().float().tolist()) for i in interventions]


def setting_key(interventions) -> tuple:
    """A hashable identity of a steering setting (its sites, modes, α and exact vectors)."""
    return tuple((i.site, i.mode, float(i.alpha), i.vector.detach().float().cpu().numpy().tobytes())
                 for i in interventions)


def _canonical(value):
    return json.loads(json.dumps(value))


@register_model("steered-vllm")
class SteeredVLLM(VLLM):
    def __init__(self, pretrained=None, vector=None, layer=None, alpha=1.0, position="all", unit=False, mode="add",
                 norm_preserve=False, control=None, control_seed=0, pair=None, vector_pair=None, peft=None,
                 steer_path=None, dtype="float32", enforce_eager=True, data_parallel_size=1, **kwargs) -> None:
        register_model_args(kwargs)  # token=, api_key= ...: masked in every log record and error from now on
        args = SteerArgs.parse(layer=layer, alpha=alpha, position=position, unit=unit, mode=mode,
                               norm_preserve=norm_preserve, control=control, control_seed=control_seed)
        refused = [(args.unit == "norm", "unit=norm: use unit=true with steered-vllm, or --model steered"),
                   (args.norm_preserve, "norm_preserve=true: not in steered-vllm yet; use --model steered"),
                   (steer_path is not None, "steer_path=: use vector= with steered-vllm, or --model steered"),
                   ("scale_keys" in kwargs or "key_factor" in kwargs,
                    "scale_keys=/key_factor=: not in steered-vllm yet; use --model steered"),
                   (not parse_bool(enforce_eager, "enforce_eager"), "enforce_eager=false: steered-vllm runs vLLM eagerly, because hooks "
                    "added after vLLM compiles the model or captures CUDA graphs may not run (a graph replay "
                    "skips them: unsteered numbers); drop enforce_eager (default true)"),
                   (int(data_parallel_size) < 1, f"data_parallel_size={data_parallel_size}: use 1 or more"),
                   ("worker_extension_cls" in kwargs, "worker_extension_cls=: steered-vllm installs its own "
                    "(the steering and the finite guard run in it); drop the argument")]
        for bad, message in refused:
            if bad:
                raise ValueError(message)
        if str(dtype) not in (*DTYPES, "auto"):
            raise ValueError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}, auto")
        chosen = resolve_default_pair(pretrained, pair=pair, vector=vector, peft=peft, vector_pair=vector_pair)
        vector_file = load_vectors(chosen.vector, argument="vector")
        base = resolve_pretrained(pretrained)
        config = AutoConfig.from_pretrained(base)
        runs = engine_dtype(dtype, config)  # auto: the base's config dtype, on both sides (the merged DPO is float32)
        self.skeleton = skeleton(config, DTYPES[runs])  # kept: every re-pointing is checked on it again
        interventions = interventions_for(self.skeleton, resolve_parts(self.skeleton), vector_file, args)
        self.vector_file, self.steer_args = vector_file, args
        adapter = None if chosen.peft is None or str(chosen.peft).strip().lower() == "none" else chosen.peft
        weights = merged_checkpoint(base, adapter) if adapter else base
        self.pretrained_label = f"{model_name(pretrained)}{f'+peft:{adapter}' if adapter else ''}"
        # what a NonFiniteStateError names besides each slot's layer / alpha / control (as steered's label)
        self._guard_label = {"pretrained": pretrained, "peft": adapter, "vector": chosen.vector, "mode": args.mode,
                             "position": args.position, "unit": args.unit or None,
                             "dtype": runs if str(dtype) == runs else f"{dtype} ({runs})"}
        self._described = {setting_key(interventions): {
            "layer": layer if layer is not None else ";".join(str(i.site) for i in interventions) or None,
            "alpha": alpha, "control": args.control}}
        self._settings, self._slot, self._version = [list(interventions)], 0, 0
        self._stash: dict = {}
        self._broken: dict = {}  # slot -> the guard's counts, for the settings held now
        self._prompt_lens: dict | None = None
        self.replicas: ReplicaPool | None = None
        # what, besides the steering, changes this model's numbers: keys its --use_cache entries (lm_cache)
        self._engine_identity = {"pretrained": model_name(pretrained), "peft": adapter, "dtype": runs,
                                "model_args": {k: repr(v) for k, v in kwargs.items()
                                               if k not in ("batch_size", "max_batch_size")}}
        super().__init__(pretrained=str(weights), dtype=runs, enforce_eager=True,
                         data_parallel_size=int(data_parallel_size), worker_extension_cls=EXTENSION, **kwargs)
        if self.data_parallel_size > 1:
            self.replicas = ReplicaPool(self.data_parallel_size, self.model_args, self.tensor_parallel_size)
        self.set_steering(interventions)

    # -- steering -----------------------------------------------------------------------------------------
    @property
    def interventions(self) -> list:
        return self._settings[self._slot]

    def interventions_at(self, layer, alpha: float, control: int | None = None):
        """The interventions of ``layer`` (or a tuple of layers) at ``alpha`` with this model's other settings."""
        if alpha == 0:
            return []
        found = interventions_for(self.skeleton, resolve_parts(self.skeleton), self.vector_file,
                                  self.steer_args.at(layer, alpha, control))
        self._described[setting_key(found)] = {"layer": layer if not isinstance(layer, tuple) else
                                               ";".join(map(str, layer)), "alpha": repr(float(alpha)),
                                               "control": control}
        return found

    def describe(self, slot: int) -> str:
        """The model args that steer slot ``slot``, as ``k=v, ...`` (what a NonFiniteStateError names)."""
        setting = self._settings[slot]
        found = self._described.get(setting_key(setting)) or (
            {"layer": ";".join(str(i.site) for i in setting),
             "alpha": ";".join(f"{float(i.alpha):g}" for i in setting)} if setting else {"alpha": 0})
        label = {**self._guard_label, **found}
        label["control"] = None if label.get("control") is None else f"random:{label['control']}"
        order = ("pretrained", "peft", "vector", "layer", "alpha", "mode", "position", "unit", "control", "dtype")
        return ", ".join(f"{k}={label[k]}" for k in order if label.get(k) is not None)

    def _plan(self, settings) -> dict:
        return {"position": self.steer_args.position, "slots": [_plan_entries(s) for s in settings]}

    def set_steering(self, interventions) -> None:
        """Steer with ``interventions`` from now on, in every worker of every replica (tables rewritten in
        place)."""
        self.set_slots([list(interventions)], 0)

    def set_slots(self, settings, slot: int) -> None:
        """Hold several steering settings (lists of interventions) at once, requests using ``settings[slot]``
        now (:meth:`select_slot` changes it); a greedy request then runs under every setting in one pass."""
        settings = [list(s) for s in settings]
        if not 0 <= slot < len(settings):
            raise ValueError(f"slot {slot}: {len(settings)} settings given")
        plan = self._plan(settings)
        placed = self.replicas.steer(plan) if self.replicas is not None else \
            self.model.collective_rpc("dsteer_install", args=(plan,))
        slot0: dict = {}
        for i in settings[0]:
            slot0.setdefault(i.site, []).append((i.mode, float(i.alpha)))
        expected = _canonical({"slots": len(settings), "position": plan["position"], "slot0": slot0})
        for worker in placed:
            if _canonical(worker) != expected:
                raise RuntimeError(f"steered-vllm: a worker steers {worker}, expected {expected} (internal error)")
        self._settings, self._slot = settings, slot
        self._held = [setting_key(s) for s in settings]
        self.steered_workers = len(placed)  # every tensor-parallel rank of every replica answered
        self._version += 1
        self._stash.clear()
        self._broken.clear()
        self.rekey_cache()
        log.info("steered-vllm: %s%s", ", ".join(f"layer {i.site} alpha {i.alpha:g}" for i in self.interventions)
                 or "off", f" (setting {slot} of {len(settings)} held)" if len(settings) > 1 else "")

    def set_position(self, position: str) -> None:
        """Steer ``position`` (all|prompt|completion|last) from now on, with the settings held now."""
        self.steer_args = replace(self.steer_args, position=parse_position(position))
        self.set_slots(self._settings, self._slot)

    def select_slot(self, slot: int) -> None:
        """Requests use steering slot ``slot`` from now on (answers already run under it are served kept)."""
        if not 0 <= slot < len(self._settings):
            raise ValueError(f"slot {slot}: the engine holds {len(self._settings)} settings")
        self._slot = slot
        self.rekey_cache()

    # -- lm-eval's --use_cache ----------------------------------------------------------------------------
    def cache_key(self) -> str:
        """A digest of the model and adapter files (content hashes), dtype and other model_args, the position
        and the steering requests use now (each intervention's site, mode, α and vector bytes)."""
        identity = self.__dict__.get("_engine_files")
        if identity is None:  # hashed once, when a cache first asks
            identity = self._engine_files = model_identity(self._engine_identity)
        return steering_digest(identity, ("vllm", self.steer_args.position), self.interventions)

    def set_cache_hook(self, cache_hook) -> None:
        """lm-eval's ``CachingLM`` keys entries by the request alone: re-pointed at a table per steering."""
        super().set_cache_hook(cache_hook)
        self.rekey_cache()

    def rekey_cache(self) -> None:
        if hasattr(self, "cache_hook"):
            rekey(self.cache_hook, self.cache_key(), "steered-vllm")

    @property
    def held(self) -> list:
        """:func:`setting_key` of each setting the engine holds, slot by slot."""
        return list(self._held)

    def slot_of(self, interventions) -> int | None:
        """The slot holding exactly ``interventions`` (same sites, modes, α and vectors), if any."""
        wanted = setting_key(interventions)
        return next((k for k, key in enumerate(self._held) if key == wanted), None)

    # -- requests -----------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False):
        # vLLM sees context + continuation as one prompt: each input's context length travels with it
        max_ctx = self.max_length - 1  # as lm-eval's VLLM._loglikelihood_tokens
        lengths: dict = defaultdict(deque)
        for _, context, continuation in sorted(requests, key=lambda x: (-len(x[1] + x[2]), tuple(x[1] + x[2]))):
            tokens = (context + continuation)[-max_ctx:]
            lengths[tuple(tokens)].append(len(context) - max(0, len(context) + len(continuation) - max_ctx))
        self._prompt_lens = lengths
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm)
        finally:
            self._prompt_lens = None

    def _prompt_len(self, tokens, generate: bool) -> int:
        if generate:
            return len(tokens)
        if self._prompt_lens is None:
            raise RuntimeError("steered-vllm: a log-likelihood batch without its context lengths (internal error)")
        queue = self._prompt_lens.get(tuple(tokens))
        if not queue:
            raise RuntimeError("steered-vllm: an input that no log-likelihood request made (internal error)")
        return queue.popleft()

    def _model_generate(self, requests, generate: bool = False, sampling_params=None):
        self._raise_if_broken()  # answers kept for this slot came from a broken pass
        if not generate or sampling_params is None:
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(requests)
        jobs = []  # (tokens, params, prompt length, identity: what an answer kept for another slot is found by)
        for tokens, params in zip(requests, sampling_params, strict=True):
            prompt_len = self._prompt_len(tokens, generate)
            jobs.append((list(tokens), params, prompt_len, (tuple(tokens), prompt_len, repr(params))))
        answers: list = [None] * len(jobs)
        runs = []  # (job index or None, slot, job)
        for index, job in enumerate(jobs):
            kept = self._stash.pop((self._slot, job[3]), None)
            if kept is not None:
                answers[index] = kept
                continue
            runs.append((index, self._slot, job))
            if len(self._settings) > 1 and job[1].temperature == 0:  # greedy: the other slots' answers too
                runs += [(None, slot, job) for slot in range(len(self._settings)) if slot != self._slot
                         and (slot, job[3]) not in self._stash]
        if runs:
            outputs = self._run([self._prompt(slot, job) for _, slot, job in runs],
                                [self._params(slot, job) for _, slot, job in runs])
            for (index, slot, job), output in zip(runs, outputs, strict=True):
                if index is None:
                    self._stash[(slot, job[3])] = output
                else:
                    answers[index] = output
            self._read_guard()
            self._raise_if_broken()
        return answers

    # -- the finite guard ---------------------------------------------------------------------------------
    def _read_guard(self) -> None:
        """The workers' counts since the last read (one RPC per engine call): slots with a NaN/inf or collapsed
        real token are broken until re-pointed."""
        found = self.replicas.guard() if self.replicas is not None else \
            guard_counts(self.model.collective_rpc("dsteer_guard"))
        for slot, counts in enumerate(found):
            if any(counts) and slot < len(self._settings):
                kept = self._broken.get(slot, [0, 0])
                self._broken[slot] = [a + b for a, b in zip(kept, counts)]

    def _raise_if_broken(self) -> None:
        error = guard_error(self.describe(self._slot), self._broken[self._slot]) if self._slot in self._broken \
            else None
        if error is not None:
            raise error

    def _prompt(self, slot: int, job):
        tokens, _, prompt_len, _ = job
        if not any(self._settings):
            return TokensPrompt(prompt_token_ids=tokens)
        # the prefix cache keys blocks by their tokens: the salt keeps KV computed under other steering out
        return TokensPrompt(prompt_token_ids=tokens, cache_salt=f"dsteer:{self._version}:{slot}:{prompt_len}")

    def _params(self, slot: int, job):
        _, params, prompt_len, _ = job
        params = params.clone()
        params.extra_args = {**(params.extra_args or {}), SLOT: slot, PROMPT_LEN: prompt_len}
        return params

    def _run(self, prompts, params):
        if self.replicas is not None:
            return self.replicas.generate(prompts, params, self.lora_request)
        return self.model.generate(prompts, sampling_params=params, use_tqdm=self.batch_size == "auto",
                                   lora_request=self.lora_request)
