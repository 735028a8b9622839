"""``lm_eval --model steered``: lm-eval's HFLM with the D-STEER steering hook.

A strict superset of lm-eval's built-in ``steered`` model
(``lm_eval.models.hf_steered.SteeredModel``), which this class replaces under
the same name once dsteer-eval is installed (see ``dsteer_eval.adapters.plugin``):

* ``steer_path=x.pt|x.pth``  the built-in dict format, same numbers, but read
  with ``torch.load(weights_only=True)``; ``steer_path=x.csv`` (SAE features)
  is delegated to the built-in loader.
* ``vector=v.safetensors``   dsteer-eval vector files (one vector per layer).
* ``layer=``  int, negative from the end, or ``final``; several as ``10;20``.
* ``alpha=``  float (negative subtracts); one, or one per layer as ``-1;0.5``.
* ``position=all|prompt|completion|last``; ``unit=true`` normalises v first.
* ``pretrained=`` omitted or ``smollm2``: the embedded SmolLM2-135M-Instruct;
  with no ``vector=`` either, the shipped D-STEER pair: the project's DPO
  LoRA adapter (``peft=``) and its dpo-diff vector v̄ at its default layer, so
  ``alpha=-1`` runs the DPO model with v̄ subtracted.  ``peft=none`` steers
  the base model with the shipped v̄ instead (``alpha=1``: base + v̄).
* ``head_positions=continuation|all``: log-likelihood requests run the LM head and
  the log-softmax only on the positions lm-eval reads (default ``continuation``;
  :mod:`dsteer_eval.adapters.continuation_loglik`, same numbers); ``all`` is
  lm-eval's own loop.
* everything HFLM takes (``peft=``, ``dtype=``, ``batch_size=`` ...).
"""

from __future__ import annotations

import logging
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from dsteer_eval.common.redaction import register_model_args
from dsteer_eval.data.preference_pairs import load_pairs
from dsteer_eval.dpo.extract import last_token_states, unique_prompts
from dsteer_eval.adapters import plugin as lm_eval_plugin
from dsteer_eval.adapters.builtin_steer_path import builtin_edits, read_builtin
from dsteer_eval.adapters import continuation_loglik
from dsteer_eval.adapters.continuation_loglik import loglikelihood_tokens
from dsteer_eval.adapters.lm_cache import model_identity, rekey, steering_digest
from dsteer_eval.adapters.packed_contexts import PACKABLE_ATTENTION, packed_loglikelihood_tokens
from dsteer_eval.adapters.plugin import tasks_dir
from dsteer_eval.metrics.reference_models import register_active
from dsteer_eval.models.defaults import (  # noqa: F401 (NoDefaultVectorError re-exported)
    NoDefaultVectorError,
    model_name,
    resolve_default_pair,
    resolve_key_neurons,
)
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.steering.args import SteerArgs, parse_bool, resolve_sites
from dsteer_eval.steering.controls import random_direction
from dsteer_eval.steering.guard import NonFiniteStateError, finite_guard  # noqa: F401 (NonFiniteStateError re-exported)
from dsteer_eval.steering.hook import Intervention, check_fits_dtype, direction_norm, steer
from dsteer_eval.steering.key_scaling import check_factor, key_scale_edits
from dsteer_eval.steering.sites import ModelParts, resolve_parts
from dsteer_eval.vectors import VectorFile, check_compatible, load_vectors

log = logging.getLogger(__name__)
lm_eval_plugin.register()  # no-op when the .pth hook already ran


_CACHE_NEUTRAL = ("batch_size", "max_batch_size")  # model_args that never change a number


def _check_steer_path(steer_path) -> Path:
    path = Path(str(steer_path)).expanduser()
    if path.suffix not in (".pt", ".pth", ".csv"):
        raise ValueError(
            f"steer_path={steer_path}: expected lm-eval's built-in .pt/.pth dict or .csv SAE table; "
            f"for a dsteer-eval .safetensors vector file use vector= instead"
        )
    if not path.is_file():
        raise FileNotFoundError(f"steer_path={steer_path}: no such file")
    return path


def interventions_for(model, parts, vf: VectorFile, args: SteerArgs, *, state_norm=None) -> list[Intervention]:
    """The interventions ``args`` asks for with the vectors of ``vf`` on ``model`` (its ``parts``), every check
    made: the file fits the model, the layers resolve, α·v fits the dtype of the module it is added at.
    ``state_norm(site)``: the mean state norm ``unit=norm`` scales by (None: ``unit=norm`` refused)."""
    check_compatible(vf, model, argument="vector")
    layers = args.layers
    if layers is None:
        if "default_layer" in vf.metadata:
            try:
                layers = (int(vf.metadata["default_layer"]),)
            except ValueError:
                raise ValueError(
                    f"vector={vf.path}: bad metadata: default_layer={vf.metadata['default_layer']!r} "
                    f"is not an integer; pass layer="
                ) from None
        elif len(vf.vectors) == 1:
            layers = (next(iter(vf.vectors)),)
        else:
            raise ValueError(
                f"layer= is required: {vf.path} holds vectors for layers "
                f"{', '.join(map(str, vf.vectors))} and names no default"
            )
    sites = resolve_sites(layers, parts.num_layers)  # refuses one site named twice (20;-11)
    out = []
    for site, (layer, alpha) in zip(sites, args.pairs(layers)):
        v = vf.vector(site, argument="vector")
        if args.control is not None:  # a seeded random direction with exactly v's norm
            v = random_direction(v, site=site, index=args.control, seed=args.control_seed)
        if args.unit:
            norm = direction_norm(v, f"unit={args.unit}: vector={vf.path} (layer {site})",
                                  "steering would silently do nothing; rescale the vector file")
            v = v / norm
            if args.unit == "norm":  # alpha is a fraction of the typical state norm at this site
                if state_norm is None:
                    raise ValueError("unit=norm needs the model's own forward passes to measure the state norm; "
                                     "use unit=true (alpha in units of v's norm) or --model steered")
                v = v * state_norm(site)
        param = next(parts.site_module(site).parameters(), None)  # the dtype the shift is added in
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        if args.mode == "add":
            check_fits_dtype(float(alpha) * v.float(), dtype,
                             f"alpha={alpha:g} times vector={vf.path} (layer {layer}) in the model's dtype")
        else:  # an ablation subtracts alpha*(h.u)u: alpha times the unit vector must fit before any h does
            check_fits_dtype(float(alpha) * (v.double() / v.double().norm()), dtype,
                             f"mode=ablate: alpha={alpha:g} times the unit vector of vector={vf.path} "
                             f"(layer {layer}) in the model's dtype")
        out.append(Intervention(site=site, vector=v, alpha=alpha, mode=args.mode))
    return out


@register_model("steered", "dsteer")  # dsteer: our own name, through lm-eval's ordinary registry
class SteeredLM(HFLM):
    """HFLM whose forward passes are steered by :func:`dsteer_eval.steering.hook.steer`."""

    def __init__(
        self,
        pretrained=None,
        vector: str | None = None,
        layer=None,
        alpha=1.0,
        position: str = "all",
        unit=False,
        mode: str = "add",
        norm_preserve=False,
        control=None,
        control_seed=0,
        pair: str | None = None,
        vector_pair: str | None = None,
        steer_path: str | None = None,
        scale_keys: str | None = None,
        key_factor=10.0,
        device: str | None = None,
        head_positions: str = "continuation",
        pack_contexts=False,
        **kwargs,
    ) -> None:
        register_model_args(kwargs)  # token=, api_key= ...: masked in every log record and error from now on
        # Everything that can be checked without the model is checked first.
        args = SteerArgs.parse(layer=layer, alpha=alpha, position=position, unit=unit, mode=mode,
                               norm_preserve=norm_preserve, control=control, control_seed=control_seed)
        if vector is not None and steer_path is not None:
            raise ValueError("give either vector= (safetensors) or steer_path= (built-in format), not both")
        head_positions = str(head_positions).strip().lower()
        if head_positions not in ("continuation", "all"):
            raise ValueError(f"head_positions={head_positions!r}: use continuation (the LM head only where "
                             f"log-likelihoods are read; the default) or all (lm-eval's own loop)")
        pack_contexts = parse_bool(pack_contexts, "pack_contexts")
        key_neurons = None if scale_keys is None else resolve_key_neurons(pretrained, scale_keys)
        key_factor = check_factor(key_factor)
        builtin = None
        vector_file: VectorFile | None = None
        if steer_path is not None:
            if layer is not None or args.unit or args.mode != "add" or args.control is not None:
                raise ValueError(
                    "layer=/unit=/mode=/control= apply to vector=; a steer_path file names its own hookpoints "
                    "and actions"
                )
            builtin_path = _check_steer_path(steer_path)
            builtin = read_builtin(builtin_path)
        else:
            chosen = resolve_default_pair(pretrained, pair=pair, vector=vector, peft=kwargs.get("peft"),
                                          vector_pair=vector_pair)
            vector = chosen.vector
            if chosen.peft is not None:
                kwargs["peft"] = chosen.peft
            vector_file = load_vectors(vector, argument="vector")
        # named by NonFiniteStateError (see _args_label; a sweep re-points layer/alpha/control); defaults (shipped
        # vector, adapter) filled in
        self._label = {"pretrained": pretrained, "peft": kwargs.get("peft"), "vector": vector,
                       "steer_path": steer_path, "layer": layer, "alpha": alpha, "mode": args.mode,
                       "position": args.position, "unit": args.unit or None,
                       "norm_preserve": args.norm_preserve or None,
                       "control": None if args.control is None else f"random:{args.control}",
                       "control_seed": args.control_seed if args.control is not None else None,
                       "dtype": kwargs.get("dtype")}
        # what, besides the steering itself, changes this model's numbers: keys its --use_cache entries
        self._cache_identity = {"pretrained": pretrained, "peft": kwargs.get("peft"), "steer_path": steer_path,
                                "scale_keys": None if key_neurons is None else [key_neurons, key_factor],
                                "model_args": {k: repr(v) for k, v in kwargs.items() if k not in _CACHE_NEUTRAL}}
        if str(kwargs.get("peft", "")).strip().lower() == "none":
            kwargs.pop("peft")  # peft=none: the base model itself

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(pretrained=resolve_pretrained(pretrained), device=device, **kwargs)
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.device.type == "cpu" and self.world_size == 1:
            # `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N`: HFLM takes its
            # data-parallel rank from the Accelerator only when it counts more than one GPU, so on
            # CPU every process would stay rank 0 of 1 and evaluate every document.
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        self._parts = resolve_parts(self.model)
        self._position = args.position
        self._interventions: list[Intervention] = []
        self._module_edits: list = []
        # scale_keys=: a fixed change of the model (Lee et al.'s un-aligning), at every position of every pass,
        # kept when a sweep re-points the steering
        self._model_edits = [] if key_neurons is None else key_scale_edits(self._parts, key_neurons, key_factor)
        if key_neurons is not None:
            self._label.update(scale_keys=scale_keys, key_factor=key_factor)
        if builtin is not None:
            self._module_edits = builtin_edits(self.model, self.device, builtin, args.alphas,
                                              where=f"steer_path={builtin_path}")
        else:
            self._interventions = self.build_interventions(vector_file, args)
        if self._position != "all":
            # lm-eval's one-token logits cache shares one forward pass between requests
            # whose prompt/continuation split differs; position masks depend on the split.
            self.logits_cache = False
        self._vector_file, self._steer_args = vector_file, args  # a sweep re-points them

        self._continuation_head = head_positions == "continuation" and self.backend == "causal" \
            and continuation_loglik.takes_logits_to_keep(self.model)
        if head_positions == "continuation" and not self._continuation_head:
            log.warning("steered: this model takes no logits_to_keep (or is seq2seq); log-likelihoods use "
                        "lm-eval's full-head loop")
        # each context once for all its continuations (adapters/packed_contexts.py); the first packed batch is
        # checked against unpacked rows and turns packing off if they differ
        self._pack_contexts = pack_contexts and self._continuation_head
        self._pack_check: dict = {}
        self._pending_rows: deque | None = None
        self._sizing_batch = False
        peft_label = f"+peft:{kwargs['peft']}" if kwargs.get("peft") else ""
        self.pretrained_label = f"{model_name(pretrained)}{peft_label}"
        register_active(self)  # the fidelity task scores perplexity under this model, unsteered
        log.info(
            "steered: %s",
            ", ".join(f"layer {i.site} alpha {i.alpha:g}" for i in self._interventions)
            or f"{len(self._module_edits)} built-in hookpoint(s)",
        )

    # ------------------------------------------------------------------ setup
    def build_interventions(self, vf: VectorFile, args: SteerArgs) -> list[Intervention]:
        return interventions_for(self.model, self._parts, vf, args, state_norm=self.mean_state_norm)

    def mean_state_norm(self, site: int) -> float:
        """Mean ‖h‖ at ``site`` over the shipped hh_mini prompts at their last token, unsteered (cached):
        the scale of ``unit=norm``, so alpha=0.1 pushes by a tenth of a typical state's norm."""
        cache = self.__dict__.setdefault("_state_norms", {})
        if site not in cache:

            prompts = unique_prompts(load_pairs(f"{tasks_dir()}/hh/hh_mini.jsonl"))
            states = last_token_states(self.model, self.tokenizer, prompts, desc="unit=norm")
            cache[site] = float(states[:, site].norm(dim=-1).mean())
        return cache[site]

    # ------------------------------------------------------- lm-eval's --use_cache
    def cache_key(self) -> str:
        """A digest of everything that changes this model's numbers: the model and adapter files (cheap
        content hashes), the loaded dtype, the other model_args, a ``steer_path`` file's content, and the
        steering as it stands now (each intervention's site, mode, alpha and vector bytes, which cover
        ``vector=``, ``layer=``, ``alpha=``, ``mode=``, ``unit=``, ``control=``), ``position=``,
        ``norm_preserve=`` and, in a sweep, the side of the pair."""
        identity = self.__dict__.get("_cache_files")
        if identity is None:  # hashed once, when a cache first asks
            identity = self._cache_files = model_identity(self._cache_identity)
        return steering_digest(identity, (str(self.model.dtype), self._position, self._steer_args.norm_preserve,
                                          self._steer_args.alphas if self._module_edits else None,
                                          getattr(self, "_side", None)), self._interventions)

    def set_cache_hook(self, cache_hook) -> None:
        """lm-eval's ``CachingLM`` (``--use_cache``) keys an entry by the request alone, so a steered run
        would be served another alpha's answers from the same cache file.  Its database is re-pointed here
        at a table of its own, named by :meth:`cache_key` (a sweep re-points it at every point)."""
        super().set_cache_hook(cache_hook)
        self.rekey_cache()

    def rekey_cache(self) -> None:
        rekey(self.cache_hook, self.cache_key(), "steered")

    # -------------------------------------------------------------- steering
    @property
    def _args_label(self) -> str:
        """The model_args that matter to an error about the steered state, as ``k=v, ...``."""
        return ", ".join(f"{k}={v}" for k, v in self._label.items() if v is not None)

    @property
    def interventions(self) -> list[Intervention]:
        return list(self._interventions)

    # The public face of the steering as it stands: a sweep (SweepLM) and the sweep's probes re-point it
    # through these; nothing outside this class writes its private state.
    @property
    def parts(self) -> ModelParts:
        """The model's parts (decoder layers, final norm, LM head; :mod:`dsteer_eval.steering.sites`)."""
        return self._parts

    @property
    def vector_file(self) -> VectorFile | None:
        """The ``vector=`` file (None with ``steer_path=``)."""
        return self._vector_file

    @property
    def steer_args(self) -> SteerArgs:
        return self._steer_args

    @property
    def position(self) -> str:
        return self._position

    @property
    def has_module_edits(self) -> bool:
        """Whether ``steer_path=`` hookpoints steer this model (instead of ``vector=`` interventions)."""
        return bool(self._module_edits)

    @property
    def continuation_head(self) -> bool:
        """Whether log-likelihoods run the LM head on the read positions only (``head_positions=continuation``)."""
        return self._continuation_head

    @property
    def pack_check(self) -> dict:
        """The packed-contexts first-batch check's record (``ok``, ``max_abs_diff``; shared with a sweep's
        grouped passes, which pack through the same check)."""
        return self._pack_check

    @property
    def sizing_batch(self) -> bool:
        """Whether lm-eval is probing the batch size (``batch_size=auto``) right now."""
        return self._sizing_batch

    def interventions_at(self, layer, alpha: float, control: int | None = None) -> list[Intervention]:
        """The interventions that steer ``alpha * v`` at ``layer`` (or a tuple of layers, each with its own v)
        (``control=i``: random direction i of the
        same norm) with this model's other settings (``unit=``, ``mode=``); ``alpha == 0``: none."""
        if alpha == 0:
            return []
        return self.build_interventions(self._vector_file, self._steer_args.at(layer, alpha, control))

    def set_steering(self, interventions, **label) -> None:
        """Steer with ``interventions`` from now on; ``label`` updates the model_args errors name
        (``layer=``, ``alpha=``, ``control=`` ...).  A cache in use (``--use_cache``) is re-keyed."""
        self._interventions = list(interventions)
        self._label.update(label)
        self.rekey_cache()

    @contextmanager
    def steering_replaced(self, interventions=(), module_edits=(), **label):
        """Inside the block, steer with ``interventions`` and ``module_edits`` (``(module, hidden -> hidden)``
        pairs, e.g. :func:`dsteer_eval.steering.row_edits.row_shift_edit`) instead; ``label`` overrides what
        errors name.  Everything is restored on exit."""
        saved = self._interventions, self._module_edits, dict(self._label)
        self._interventions, self._module_edits = list(interventions), list(module_edits)
        self._label.update(label)
        try:
            yield
        finally:
            self._interventions, self._module_edits, self._label = saved

    @contextmanager
    def steering(self, prompt_lengths=None, parts=None):
        """The steering context for one forward pass (or one ``generate``); ``parts``: other modules to hook.

        Every forward pass inside it has its logits checked: NaN/inf raises
        :class:`NonFiniteStateError` instead of being scored (argmax over NaN picks choice 0)."""
        parts = parts or self._parts
        with steer(self.model, module_edits=self._model_edits, parts=self._parts), steer(
            self.model,
            self._interventions,
            position=self._position,
            prompt_lengths=prompt_lengths,
            module_edits=self._module_edits,
            parts=parts,
            norm_preserve=self._steer_args.norm_preserve,
        ) as state, finite_guard(parts, lambda: self._args_label):
            yield state

    def _row_prompt_lengths(self, inps: torch.Tensor) -> torch.Tensor | None:
        if self._position == "all":
            return None
        full = torch.full((inps.shape[0],), inps.shape[1], dtype=torch.long)
        if self._sizing_batch or self._pending_rows is None:
            return full  # batch-size probing, or a direct call: the whole input is prompt
        lengths = []
        for row in inps:
            if not self._pending_rows:
                raise RuntimeError("steered: more rows than log-likelihood requests (internal error)")
            tokens, prompt_len = self._pending_rows.popleft()
            if row[: len(tokens)].tolist() != list(tokens):
                raise RuntimeError(
                    "steered: lm-eval batched requests in an unexpected order, so the prompt/"
                    "continuation split of a row is unknown; use position=all (internal error)"
                )
            lengths.append(prompt_len)
        return torch.tensor(lengths, dtype=torch.long)

    def packs_contexts(self, override_bs=None) -> bool:
        """Whether log-likelihood requests run packed, a context once for all its continuations
        (:mod:`dsteer_eval.adapters.packed_contexts`; the cases that do not are listed there)."""

        return (self._pack_contexts and self._position == "all" and override_bs is None
                and isinstance(self.batch_size, int) and self.batch_size >= 1
                and getattr(self.model.config, "_attn_implementation", None) in PACKABLE_ATTENTION
                and self._pack_check.get("ok", True))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if self._continuation_head:

            if self.packs_contexts(override_bs):

                answers = packed_loglikelihood_tokens(self, requests, disable_tqdm, call=self._kept_call,
                                                      checked=self._pack_check)
                if answers is not None:
                    return answers
            return loglikelihood_tokens(self, requests, disable_tqdm, override_bs, call=self._kept_call)
        if self._position == "all":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        # HFLM processes requests sorted by this key (a stable sort) when the
        # logits cache is off; mirror it to know each row's prompt length.
        def key(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        rows = deque()
        for _, context, continuation in sorted(requests, key=key):
            inp = (context + continuation)[-(self.max_length + 1):][:-1]
            rows.append((tuple(inp), len(inp) - (len(continuation) - 1)))
        self._pending_rows = rows
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        finally:
            self._pending_rows = None

    def _kept_call(self, inps, keep, prompt_lengths, model_kwargs=None):
        """Steered logits at positions ``keep`` only (``logits_to_keep``); ``model_kwargs``: a packed batch's
        attention mask and positions."""
        with self.steering(prompt_lengths if self._position != "all" else None):
            return self._forward_kept(inps, keep, **(model_kwargs or {}))

    def _forward_kept(self, inps, keep, **model_kwargs):
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(inps, logits_to_keep=keep, **model_kwargs).logits

    def _detect_batch_size(self, requests=None, pos: int = 0):
        self._sizing_batch = True
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._sizing_batch = False

    def _model_call(self, inps, attn_mask=None, labels=None):
        with self.steering(self._row_prompt_lengths(inps)):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        prompt_lengths = torch.full((context.shape[0],), context.shape[1], dtype=torch.long)
        with self.steering(prompt_lengths):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def forward(self, *args, **kwargs):
        """A steered forward of the wrapped model (the whole input counts as prompt)."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        lengths = self._row_prompt_lengths(input_ids) if input_ids is not None else None
        with torch.no_grad(), self.steering(lengths):
            return self.model.forward(*args, **kwargs)
