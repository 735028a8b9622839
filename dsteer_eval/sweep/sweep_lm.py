"""The ``steered`` model, loaded once and re-pointed at each (layer, alpha) of a sweep."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

from lm_eval.models.huggingface import HFLM

from dsteer_eval.adapters.packed_contexts import PassAbandoned
from dsteer_eval.adapters.steered import SteeredLM
from dsteer_eval.adapters.continuation_loglik import loglikelihood_tokens
from dsteer_eval.adapters.packed_contexts import packed_loglikelihood_tokens
from dsteer_eval.steering.args import Layer, parse_bool
from dsteer_eval.steering.hook import NonFiniteError
from dsteer_eval.steering.row_edits import expanded_rows, repeat_layer_inputs, row_shift_edit
from dsteer_eval.steering.shared_prefix import SharedPrefix
from dsteer_eval.sweep.alpha_batch import (
    GenerationStore,
    GroupPoint,
    batched_generate,
    generation_key,
    group_shifts,
    loglik_key,
    shift_dim,
)
from dsteer_eval.sweep.grid import layer_site
from dsteer_eval.sweep.merged_adapter import MergedSides


log = logging.getLogger(__name__)


class _GroupPassDiffers(PassAbandoned):
    """The first grouped log-likelihood pass did not match single passes, or failed (grouping is then off)."""


class SweepLM(SteeredLM):
    """:class:`SteeredLM` whose steering changes between grid points without reloading.

    Log-likelihood forwards go through :class:`SharedPrefix`, so the layers
    below the steered site run once per input batch for all alphas of a layer.
    """

    def __init__(self, *args, shared_prefix: bool = True, merge_adapter: bool = True, **kwargs) -> None:
        if kwargs.get("steer_path") is not None:
            raise ValueError("dsteer-eval sweep steers with vector= files; steer_path= is not supported here")
        # a sweep packs each context once for all its continuations unless told not to (`steered` alone keeps
        # lm-eval's rows by default, so its alpha=0 stays bit-identical to --model hf)
        kwargs.setdefault("pack_contexts", True)
        super().__init__(*args, **kwargs)
        self._merged = MergedSides.build(self.model) if parse_bool(merge_adapter, "merge_adapter") else None
        self._side = "dpo"
        self.shared = SharedPrefix(self.parts) if shared_prefix else None
        self.generations = GenerationStore()
        self.logliks = GenerationStore()  # answers of the group's other points, per request list
        self._multi_ok = True  # switched off for good if a grouped pass ever differs from a single one
        self._group: list[GroupPoint] = []
        self._group_site: int | None = None
        self._point_name: str | None = None

    def set_group(self, points, current: str) -> None:
        """The grid points that share this point's side and steered layer, as ``(name, layer, alpha, control)``
        (α=0: unsteered); ``current`` names this point.  Generation batches them into one ``generate`` call
        per prompt batch (:mod:`dsteer_eval.sweep.alpha_batch`).  A group of one, or a steering setup that
        cannot be batched (ablate, norm_preserve), turns batching off."""
        if current not in {p.name for p in self._group}:
            self.generations.clear()  # a new group: nothing stored can be asked for again
            self.logliks.clear()
        self._point_name = current
        args = self.steer_args
        if len(points) < 2 or args.mode != "add" or args.norm_preserve or self.has_module_edits:
            self._group, self._group_site = [], None
            return
        group, sites = [], set()
        for name, layer, alpha, control in points:
            if alpha == 0:
                group.append(GroupPoint(name, None))
                continue
            found = self.interventions_at(layer, alpha, control)
            if len(found) != 1:  # a layer set (one α at several layers): its points run one by one
                self._group, self._group_site = [], None
                return
            (intervention,) = found
            sites.add(intervention.site)
            group.append(GroupPoint(name, float(alpha) * intervention.vector.detach().float().cpu()))
        if len(sites) != 1:
            raise ValueError(f"a generation group steers one layer; got sites {sorted(sites)} (internal error)")
        if current not in {p.name for p in group}:
            raise ValueError(f"point {current} is not in its group (internal error)")
        self._group, self._group_site = group, sites.pop()
        self._group_alphas = ";".join(repr(float(alpha)) for _, _, alpha, _ in points)
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
        self._side = side
        if self.shared is not None:
            self.shared.set_site(layer_site(layer, self.parts.num_layers), scope=side)
        # a cache in use (--use_cache) is re-keyed: this point's answers are kept apart from the others'
        self.set_steering(self.interventions_at(layer, alpha, control), layer=layer, alpha=repr(float(alpha)),
                          control=None if control is None else f"random:{control}",
                          control_seed=self.steer_args.control_seed if control is not None else None)

    def _sides(self):
        """The DPO side's merged LoRA weights for one call (:mod:`.merged_adapter`), or nothing to do."""
        return self._merged.dpo() if self._merged is not None and self._side == "dpo" else nullcontext()

    def _model_call(self, inps, attn_mask=None, labels=None):
        with self._sides():
            return self._steered_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        with self._sides():
            return self._steered_generate(context, max_length, stop, **generation_kwargs)

    def _steered_call(self, inps, attn_mask=None, labels=None):
        if self.shared is None or attn_mask is not None or labels is not None or self.sizing_batch:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        lengths = self._row_prompt_lengths(inps)  # once: the replay check may run the batch twice

        def run(parts):
            with self.steering(lengths, parts):  # the steering hook goes on these parts' site module
                return HFLM._model_call(self, inps)

        return self.shared.call(inps, run)

    def _steered_generate(self, context, max_length, stop, **generation_kwargs):
        sampling = generation_kwargs.get("do_sample") or float(generation_kwargs.get("temperature", 0.0) or 0.0) > 0
        if sampling or (not self._group and not len(self.generations)):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        key = generation_key(context, max_length, stop, generation_kwargs)
        ready = self.generations.take(self._point_name, key)
        if ready is not None:
            return ready
        if not self._group:  # the last point of its group, asked for something not generated ahead
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

        def generate(rows, rows_kwargs, shifts):
            with self.steering_replaced(module_edits=[(self.parts.site_module(self._group_site),
                                                       row_shift_edit(shifts))]):
                return super(SweepLM, self)._model_generate(rows, max_length, stop, **rows_kwargs)

        return batched_generate(generate, self._group, self._point_name, context, generation_kwargs,
                                self.generations, key)

    # ------------------------------------------------ log-likelihoods, a group per pass
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        with self._sides():
            return self._grouped_loglikelihood_tokens(requests, disable_tqdm, override_bs)

    def _grouped_loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """With a group (:meth:`set_group`) and the continuation head: the first point computes every point's
        answers in one pass per batch (lower layers once, the batch expanded to rows x points at the site,
        each row shifted by its point's alpha*v); the others are served from the store.  The first grouped
        batch is checked against a single pass (max |d logit| <= 1e-4 in fp32); a mismatch turns grouping
        off for the rest of the run."""
        key = loglik_key(requests)
        ready = self.logliks.take(self._point_name, key) if len(self.logliks) else None
        if ready is not None:
            return ready
        if not (self._group and self._multi_ok and self.continuation_head and self.position == "all"
                and isinstance(self.batch_size, int) and self.batch_size >= 1):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        group = self._group

        def call(inps, keep, _lengths, model_kwargs=None):
            return self._group_call(inps, keep, group, model_kwargs or {})

        try:
            answers = None
            if self.packs_contexts(override_bs):
                answers = packed_loglikelihood_tokens(self, requests, disable_tqdm, call=call, variants=len(group),
                                                      checked=self.pack_check)
            if answers is None:
                answers = loglikelihood_tokens(self, requests, disable_tqdm, override_bs, variants=len(group),
                                               call=call)
        except _GroupPassDiffers:  # the check failed on the first batch: computed again point by point
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        mine = None
        for point, result in zip(group, answers):
            if point.name == self._point_name:
                mine = result
            else:
                self.logliks.put(point.name, key, result)
        self.logliks.stats["batched_calls"] += 1
        return mine

    def _group_call(self, inps, keep, group, model_kwargs):
        """Logits at ``keep`` for every point of ``group`` (rows variant-major); the lower layers run once.
        ``model_kwargs``: a packed batch's mask and positions, repeated per point for the layers above the site."""
        shifts = group_shifts(group, inps.shape[0], shift_dim(group))
        module = self.parts.site_module(self._group_site)
        repeated = repeat_layer_inputs(self.parts, self._group_site, inps.shape[0], len(group)) if model_kwargs \
            else nullcontext()
        try:
            # the label: any of the group's alphas may have broken the pass
            with self.steering_replaced(alpha=f"{self._group_alphas} (one pass for the group)"), \
                    expanded_rows(module, shifts, len(group)), repeated, self.steering(None):
                logits = self._forward_kept(inps, keep, **model_kwargs)
        except NonFiniteError:
            raise
        except Exception as error:
            if model_kwargs or self.logliks.stats.get("ran_unpacked"):
                raise  # a packed batch: packed_contexts' first-batch check decides; a later batch: a real error
            # the first grouped batch (e.g. ALiBi models: Bloom's alibi tensor has no rows for the repeated batch)
            log.warning("grouped log-likelihood pass failed for this architecture (%s: %s); evaluating point by "
                        "point from now on", type(error).__name__, error)
            self._multi_ok = False
            raise _GroupPassDiffers from error
        if not model_kwargs:
            self.logliks.stats["ran_unpacked"] = True
        if not self.logliks.stats.get("verified"):
            self.logliks.stats["verified"] = True
            diff = self._check_group_pass(inps, keep, group, logits, model_kwargs)
            self.logliks.stats["verified_max_abs_diff"] = diff
            tolerance = 1e-4 if logits.dtype in (torch.float32, torch.float64) else 2e-2
            if not diff <= tolerance:
                log.warning("grouped log-likelihood pass differs from single passes by %.3g (> %.3g) for this "
                            "architecture; evaluating point by point from now on", diff, tolerance)
                self._multi_ok = False
                raise _GroupPassDiffers
        return logits

    def _check_group_pass(self, inps, keep, group, logits, model_kwargs) -> float:
        worst = 0.0
        for i, point in enumerate(group):
            edit = row_shift_edit(group_shifts([point], inps.shape[0], shift_dim(group)))
            with self.steering_replaced(module_edits=[(self.parts.site_module(self._group_site), edit)]), \
                    self.steering(None):
                single = self._forward_kept(inps, keep, **model_kwargs)
            rows = logits[i * inps.shape[0]:(i + 1) * inps.shape[0]]
            worst = max(worst, float((rows.float() - single.float()).abs().max()))
        return worst

    def _kept_call(self, inps, keep, prompt_lengths, model_kwargs=None):
        model_kwargs = model_kwargs or {}
        if self.shared is None:
            return super()._kept_call(inps, keep, prompt_lengths, model_kwargs)
        lengths = prompt_lengths if self.position != "all" else None

        def run(parts):
            with self.steering(lengths, parts):
                return self._forward_kept(inps, keep, **model_kwargs)

        # a packed row's positions fix its mask: both key the stored states
        return self.shared.call(inps, run, positions=model_kwargs.get("position_ids"))
