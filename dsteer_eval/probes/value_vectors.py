"""MLP value vectors and their keys in Llama-style (SwiGLU) models: the toxic-neuron analysis of
Lee et al. (2024), "A Mechanistic Understanding of Alignment Algorithms: A Case Study on DPO and
Toxicity", adapted from GPT-2's GELU MLP to SwiGLU.

Definitions (HF Llama names; ``mlp = model.model.layers[layer].mlp``, ``d`` = hidden size,
``n`` = ``intermediate_size``):

* value vector of neuron ``(layer, j)``   column ``j`` of ``mlp.down_proj.weight`` (``d``-vector).
* keys of neuron ``(layer, j)``           row ``j`` of ``mlp.gate_proj.weight`` and row ``j`` of
                                          ``mlp.up_proj.weight`` (two ``d``-vectors; GPT-2 has one).
* activation of neuron ``(layer, j)``     ``act_fn(gate_proj(x))[j] * up_proj(x)[j]`` — entry ``j`` of
                                          the input of ``down_proj``; ``x`` is the MLP's input (the
                                          output of ``post_attention_layernorm``).
* residual entering layer ``L``           the hidden state passed to ``layers[L]``; for Llama this is
                                          ``output_hidden_states[L]``, i.e. site ``L`` of
                                          :mod:`dsteer_eval.steering.sites` (``0 <= L < num_layers``).

The MLP's output is ``Σ_j activation_j · value_j`` (+ the ``down_proj`` bias, if any), which is why a
value vector that points along a toxicity probe ``w`` writes toxicity whenever its neuron fires.

Means over tokens (:func:`neuron_activations`, :func:`mean_residual`) pool every non-padding
position of the batch (positions where ``attention_mask != 0``) into one mean: a long row weighs
more than a short one. Read-outs of weights are float32 copies (never views of the parameters);
nothing here changes a model except :func:`scale_keys`, which restores it bit for bit.

Only plain transformers models are handled (a PEFT wrapper is unwrapped to its base model, but a
LoRA adapter must be merged into the weights beforehand for its effect to be seen).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from dsteer_eval.steering.capture import record
from dsteer_eval.steering.hook import steer
from dsteer_eval.steering.sites import ModelParts, resolve_parts

__all__ = [
    "Neuron",
    "value_vectors",
    "keys",
    "rank_by_cosine",
    "logit_lens",
    "top_svd",
    "weight_change",
    "neuron_activations",
    "scale_keys",
    "mean_residual",
]


@dataclass(frozen=True)
class Neuron:
    """One MLP neuron: ``layer`` (0-based decoder layer), ``index`` (into ``intermediate_size``),
    ``cosine`` of its value vector with the ranking direction, ``norm`` (L2) of its value vector."""

    layer: int
    index: int
    cosine: float = math.nan
    norm: float = math.nan


# ----------------------------------------------------------------------------------------- helpers


def _parts(model: nn.Module) -> ModelParts:
    return resolve_parts(model)


def _as_int(value) -> int | None:
    """``value`` as an int when it is an integer (Python, numpy or 0-d torch), else None; never a bool."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_layer(parts: ModelParts, layer, name: str = "layer") -> int:
    checked = _as_int(layer)
    if checked is None:
        raise ValueError(f"{name} must be an int decoder-layer index, got {layer!r}")
    layer = checked
    if not 0 <= layer < parts.num_layers:
        raise ValueError(
            f"{name}={layer} is out of range: the model has {parts.num_layers} decoder layers, "
            f"pass 0..{parts.num_layers - 1}"
        )
    return layer


def _mlp(parts: ModelParts, layer: int) -> nn.Module:
    block = parts.layers[layer]
    mlp = getattr(block, "mlp", None)
    if mlp is None or not all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
        raise ValueError(
            f"decoder layer {layer} ({type(block).__name__}) has no SwiGLU MLP: value vectors need a "
            f"Llama-style `mlp` with `gate_proj`, `up_proj` and `down_proj` (use a Llama-architecture model)"
        )
    return mlp


def _as_pairs(parts: ModelParts, neurons, name: str = "neurons") -> list[tuple[int, int]]:
    """``(layer, index)`` for each of ``neurons`` (``Neuron`` objects or ``(layer, index)`` pairs), checked."""
    if neurons is None:
        raise ValueError(f"{name} is None: pass a non-empty list of Neuron (e.g. from rank_by_cosine)")
    items = list(neurons)
    if not items:
        raise ValueError(f"{name} is empty: pass at least one Neuron (e.g. rank_by_cosine(...)[:k])")
    pairs = []
    for item in items:
        if isinstance(item, Neuron):
            layer, index = item.layer, item.index
        elif isinstance(item, Sequence) and len(item) == 2:
            layer, index = item
        else:
            raise ValueError(f"{name} holds {item!r}: each entry must be a Neuron or a (layer, index) pair")
        layer = _check_layer(parts, layer, f"{name}: layer")
        width = _mlp(parts, layer).down_proj.weight.shape[1]
        checked = _as_int(index)
        if checked is None or not 0 <= checked < width:
            raise ValueError(
                f"{name}: index {index!r} of layer {layer} is out of range: pass 0..{width - 1} "
                f"(the layer's intermediate size is {width})"
            )
        pairs.append((layer, checked))
    return pairs


def _check_batch(input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(
            "input_ids must be a 2-D integer tensor (batch, seq), e.g. tokenizer(texts, padding=True, "
            f"return_tensors='pt').input_ids; got {type(input_ids).__name__} "
            f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else ''}".rstrip()
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must be a tensor of input_ids' shape {tuple(input_ids.shape)}, got "
            f"{tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask!r}"
        )
    if not bool((attention_mask != 0).any()):
        raise ValueError("attention_mask has no non-padding position: there is nothing to average over")
    return input_ids, attention_mask


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` (batch, seq, k) over positions with ``mask != 0``, pooled over the batch."""
    keep = (mask != 0).to(states.device)
    return states.float()[keep].mean(dim=0)


# ------------------------------------------------------------------------------------ read weights


def value_vectors(model: nn.Module, layer: int) -> torch.Tensor:
    """The value vectors of ``layer``: ``[n, d]``, row ``j`` = column ``j`` of ``mlp.down_proj.weight``.

    A float32 copy on the weight's device (editing it does not touch the model)."""
    parts = _parts(model)
    mlp = _mlp(parts, _check_layer(parts, layer))
    return mlp.down_proj.weight.detach().t().to(torch.float32, copy=True).contiguous()


def keys(model: nn.Module, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys of ``layer``: ``(gate [n, d], up [n, d])`` = ``gate_proj.weight`` and ``up_proj.weight``
    (row ``j`` = neuron ``j``), float32 copies on the weights' device. Biases, if any, are not included."""
    parts = _parts(model)
    mlp = _mlp(parts, _check_layer(parts, layer))
    return (mlp.gate_proj.weight.detach().to(torch.float32, copy=True),
            mlp.up_proj.weight.detach().to(torch.float32, copy=True))


def _check_direction(direction, d: int) -> torch.Tensor:
    if not isinstance(direction, torch.Tensor):
        try:
            direction = torch.as_tensor(direction)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"direction must be a {d}-vector (tensor or array), got {direction!r}") from exc
    direction = direction.detach().to(torch.float32)
    if direction.dim() == 2 and direction.shape[0] == 1:
        direction = direction[0]
    if direction.dim() != 1 or direction.shape[0] != d:
        raise ValueError(
            f"direction has shape {tuple(direction.shape)}, but the model's hidden size is {d}: pass one "
            f"({d},) vector from the same model (a probe or steering vector of its residual stream)"
        )
    if not bool(torch.isfinite(direction).all()):
        raise ValueError("direction has non-finite entries (nan/inf): pass a finite vector")
    if float(direction.norm()) == 0.0:
        raise ValueError("direction is the zero vector: a cosine with it is undefined; pass a non-zero vector")
    return direction


def rank_by_cosine(model: nn.Module, direction, layers: Iterable[int] | None = None,
                   top: int = 128) -> list[Neuron]:
    """The ``top`` neurons whose value vectors have the largest cosine with ``direction``, descending.

    ``cosine = <v, w> / (‖v‖ ‖w‖)`` in float32, clipped to [-1, 1] (a zero value vector gets cosine 0).
    ``layers``: decoder layers to search (default all; duplicates are ignored). Works one layer at a
    time: at most one layer's value vectors are materialised (as float32) at once. Ties are broken by
    (layer, index) ascending. Fewer than ``top`` are returned when the layers hold fewer neurons.
    """
    parts = _parts(model)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int (how many neurons to return), got {top!r}")
    wanted = list(range(parts.num_layers)) if layers is None else list(layers)
    if not wanted:
        raise ValueError("layers is empty: pass None (all layers) or a list of decoder-layer indices")
    wanted = sorted({_check_layer(parts, layer, "layers: layer") for layer in wanted})
    w = _check_direction(direction, parts.hidden_size)
    best: list[Neuron] = []
    for layer in wanted:
        weight = _mlp(parts, layer).down_proj.weight.detach()
        values = weight.to(torch.float32).t()  # [n, d]; a copy unless already float32
        wl = w.to(values.device)
        norms = values.norm(dim=1)
        dots = values @ wl
        denom = norms * wl.norm()
        cos = torch.where(denom > 0, dots / denom.clamp_min(torch.finfo(torch.float32).tiny),
                          torch.zeros_like(dots)).clamp(-1.0, 1.0)
        idx = torch.sort(cos, descending=True, stable=True).indices[:top]  # ties: lower index first
        best += [Neuron(layer, int(i), float(c), float(n))
                 for i, c, n in zip(idx.tolist(), cos[idx].tolist(), norms[idx].tolist())]
        best = sorted(best, key=lambda n: (-n.cosine, n.layer, n.index))[:top]
        del values, norms, dots, cos
    return best


# ------------------------------------------------------------------------------------- logit lens


@torch.no_grad()
def logit_lens(model: nn.Module, tokenizer, vector, top: int = 10) -> list[tuple[str, float]]:
    """The ``top`` tokens of ``lm_head(final_norm(vector))``, highest logit first.

    ``vector`` (one ``d``-vector) is treated exactly as if it were a residual-stream state at the last
    layer: it is shaped ``(1, 1, d)``, cast to the final norm's weight dtype and device (the model's
    dtype: a float32 vector is rounded to bf16 for a bf16 model), passed through the model's final
    norm (RMSNorm for Llama: ``v / sqrt(mean(v²) + eps) * weight``) and then through ``lm_head``
    (bias included, if any). Returns ``(tokenizer.decode([id]), logit)`` pairs; ``top`` is capped at
    the size of the unembedding.
    """
    parts = _parts(model)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int (how many tokens to return), got {top!r}")
    v = _check_vector(vector, parts.hidden_size)
    ref = getattr(parts.final_norm, "weight", None)
    ref = ref if isinstance(ref, torch.Tensor) else parts.lm_head.weight
    state = v.to(device=ref.device, dtype=ref.dtype).reshape(1, 1, -1)
    logits = parts.lm_head(parts.final_norm(state))[0, 0].float()
    vals, idx = torch.topk(logits, min(top, logits.shape[0]))
    return [(tokenizer.decode([int(i)]), float(x)) for x, i in zip(vals.tolist(), idx.tolist())]


def _check_vector(vector, d: int) -> torch.Tensor:
    if not isinstance(vector, torch.Tensor):
        vector = torch.as_tensor(vector)
    if vector.dim() != 1 or vector.shape[0] != d:
        raise ValueError(
            f"vector has shape {tuple(vector.shape)}, but the model's hidden size is {d}: pass one ({d},) "
            f"vector (e.g. value_vectors(model, layer)[j])"
        )
    if not bool(torch.isfinite(vector).all()):
        raise ValueError("vector has non-finite entries (nan/inf): pass a finite vector")
    return vector.detach()


# ---------------------------------------------------------------------------------- SVD of a group


def _value(parts: ModelParts, layer: int, index: int) -> torch.Tensor:
    return _mlp(parts, layer).down_proj.weight.detach()[:, index]


def top_svd(model: nn.Module, neurons, k: int = 1) -> torch.Tensor:
    """The top-``k`` right singular vectors of the stacked value vectors of ``neurons``: ``[k, d]``.

    ``M`` = the value vectors stacked as rows (raw, not normalised, not centred; ``[len(neurons), d]``),
    ``M = U S Vᵀ`` computed in float64; row ``i`` of the result is ``V[:, i]`` (unit norm; "SVD.U[0]"
    of Lee et al. for ``i = 0``), returned as float32 on the CPU. Sign fixed so that the mean cosine
    of each row with the rows of ``M`` is positive (left unchanged when that mean is exactly 0).
    ``k`` must be 1..min(len(neurons), d).
    """
    parts = _parts(model)
    pairs = _as_pairs(parts, neurons)
    limit = min(len(pairs), parts.hidden_size)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
        raise ValueError(f"k must be an int in 1..{limit} (min of the number of neurons and d), got {k!r}")
    m = torch.stack([_value(parts, layer, index).to("cpu", torch.float64) for layer, index in pairs])
    if float(m.abs().sum()) == 0.0:
        raise ValueError("the value vectors of these neurons are all zero: they have no singular vectors")
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    out = vh[:k].clone()
    row_norms = m.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    for i in range(k):
        if float(((m @ out[i]) / row_norms).mean()) < 0:
            out[i] = -out[i]
    return out.to(torch.float32)


# --------------------------------------------------------------------------- base vs. DPO weights


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(cos(a, b) clipped to [-1, 1], ‖b − a‖ / ‖a‖) in float64; (1.0, 0.0) exactly for identical
    vectors, nan where a norm is zero (the cosine with a zero vector, or a change relative to a zero ``a``)."""
    if torch.equal(a, b):
        return (1.0, 0.0) if float(a.norm()) > 0 else (math.nan, math.nan)
    a64, b64 = a.to("cpu", torch.float64), b.to("cpu", torch.float64)
    na, nb = float(a64.norm()), float(b64.norm())
    cos = min(1.0, max(-1.0, float(a64 @ b64) / (na * nb))) if na > 0 and nb > 0 else math.nan
    rel = float((b64 - a64).norm()) / na if na > 0 else math.nan
    return cos, rel


def weight_change(base_model: nn.Module, dpo_model: nn.Module, neurons) -> list[dict]:
    """How DPO moved each neuron's value vector and keys (one dict per neuron, in order).

    Keys of each dict: ``layer``, ``index``; ``value_cos`` = cos(v_base, v_dpo), ``value_rel_change`` =
    ‖v_dpo − v_base‖ / ‖v_base‖; the same for the gate row (``gate_cos``, ``gate_rel_change``) and the
    up row (``up_cos``, ``up_rel_change``). Computed in float64; exactly (1.0, 0.0) when a vector is
    unchanged; nan where a norm is zero. Both models must be plain transformers models of the same
    shape (merge a LoRA adapter first, e.g. ``peft_model.merge_and_unload()``).
    """
    base, dpo = _parts(base_model), _parts(dpo_model)
    pairs = _as_pairs(base, neurons)
    if dpo.num_layers != base.num_layers or dpo.hidden_size != base.hidden_size:
        raise ValueError(
            f"dpo_model ({dpo.num_layers} layers, d={dpo.hidden_size}) does not match base_model "
            f"({base.num_layers} layers, d={base.hidden_size}): pass the DPO model trained from this base"
        )
    rows = []
    for layer, index in pairs:
        mb, md = _mlp(base, layer), _mlp(dpo, layer)
        if md.down_proj.weight.shape != mb.down_proj.weight.shape:
            raise ValueError(
                f"layer {layer}: dpo_model's down_proj has shape {tuple(md.down_proj.weight.shape)}, the "
                f"base's {tuple(mb.down_proj.weight.shape)}: pass the DPO model trained from this base"
            )
        row = {"layer": layer, "index": index}
        for name, a, b in (
            ("value", mb.down_proj.weight.detach()[:, index], md.down_proj.weight.detach()[:, index]),
            ("gate", mb.gate_proj.weight.detach()[index], md.gate_proj.weight.detach()[index]),
            ("up", mb.up_proj.weight.detach()[index], md.up_proj.weight.detach()[index]),
        ):
            row[f"{name}_cos"], row[f"{name}_rel_change"] = _compare(a, b)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ activations


@torch.no_grad()
def neuron_activations(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       neurons, per_token: bool = False) -> torch.Tensor:
    """Mean activation of each of ``neurons`` over the batch's non-padding positions: ``[len(neurons)]``;
    with ``per_token=True`` every non-padding position's activation instead, ``[positions, len(neurons)]``
    (row-major over the batch: all kept positions of row 0, then of row 1, ...).

    The activation of neuron ``(layer, j)`` at a position is entry ``j`` of the input of that layer's
    ``mlp.down_proj``, ``act_fn(gate_proj(x))[j] * up_proj(x)[j]``. One forward pass
    ``model(input_ids=..., attention_mask=...)`` runs with read-only edits (identity functions that keep
    a reference to their input) on the outputs of ``gate_proj`` and ``up_proj`` of each needed layer,
    through :func:`dsteer_eval.steering.steer` (``module_edits``: the project hooks a forward pass only
    in :mod:`dsteer_eval.steering`); the down_proj input is then rebuilt as ``mlp.act_fn(g) * u`` —
    the same operations on the same tensors in the model's dtype as Llama's ``MLP.forward``, so it is
    bit-for-bit the tensor ``down_proj`` receives. The mean pools all positions with
    ``attention_mask != 0`` (``None`` = every position, run as an all-ones mask). Float32,
    on the CPU, in the order of ``neurons``. The hooks are removed even when the forward pass raises.
    Run the model in eval mode for deterministic numbers.
    """
    parts = _parts(model)
    pairs = _as_pairs(parts, neurons)
    if not isinstance(per_token, bool):
        raise ValueError(f"per_token must be True or False, got {per_token!r}")
    input_ids, attention_mask = _check_batch(input_ids, attention_mask)
    by_layer: dict[int, list[int]] = {}
    for layer, index in pairs:
        by_layer.setdefault(layer, []).append(index)
    seen: dict[tuple[int, str], torch.Tensor] = {}

    def reader(layer: int, which: str, indices: list[int]):
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            seen[(layer, which)] = hidden[..., indices].detach()
            return hidden

        return edit

    edits = []
    for layer, indices in by_layer.items():
        mlp = _mlp(parts, layer)
        edits += [(mlp.gate_proj, reader(layer, "gate", indices)), (mlp.up_proj, reader(layer, "up", indices))]
    device = _device(model)
    with steer(model, module_edits=edits, parts=parts):
        model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    means = {}
    for layer in by_layer:
        act = _mlp(parts, layer).act_fn(seen[(layer, "gate")]) * seen[(layer, "up")]
        kept = act[attention_mask.to(act.device) != 0].float().cpu() if per_token else None
        means[layer] = kept if per_token else _masked_mean(act, attention_mask).cpu()
    position = {layer: 0 for layer in by_layer}
    out = []
    for layer, _ in pairs:
        out.append(means[layer][..., position[layer]])
        position[layer] += 1
    return torch.stack(out, dim=-1)


@torch.no_grad()
def mean_residual(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  layer: int) -> torch.Tensor:
    """Mean residual-stream state entering decoder layer ``layer`` over non-padding positions: ``[d]``.

    Read with :func:`dsteer_eval.steering.capture.record` at site ``layer`` during one forward pass:
    the output of ``layers[layer - 1]``, or of the token embeddings for ``layer = 0`` — which for Llama
    is exactly the hidden state passed into ``layers[layer]`` (``output_hidden_states[layer]``; a model
    that rescales its embeddings inside the decoder's forward, like Gemma 1/2, would differ at
    ``layer = 0``). The mean pools all positions with ``attention_mask != 0`` (``None`` = every
    position, run as an all-ones mask); float32 on the CPU. The hook is removed even when
    the pass raises.
    """
    parts = _parts(model)
    layer = _check_layer(parts, layer)
    input_ids, attention_mask = _check_batch(input_ids, attention_mask)
    device = _device(model)
    with record(model, [layer], parts=parts) as seen:
        model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    return _masked_mean(seen[layer], attention_mask).cpu()


# ------------------------------------------------------------------------------------- un-aligning


@contextmanager
def scale_keys(model: nn.Module, neurons, factor: float) -> Iterator[None]:
    """Multiply the keys of ``neurons`` by ``factor`` in place; restore the exact weights on exit.

    For SwiGLU, "the key" is two rows, and BOTH are scaled: row ``j`` of ``gate_proj.weight`` and row
    ``j`` of ``up_proj.weight`` (and entry ``j`` of their biases, when the projections have biases, so
    that ``gate_proj(x)[j]`` and ``up_proj(x)[j]`` each scale by exactly ``factor``). This is a
    documented adaptation of Lee et al., who scale the single key of GPT-2's GELU MLP. Because both
    factors of ``act_fn(g) * u`` scale, the activation scales by about ``factor²`` wherever SiLU is
    roughly linear (large positive ``g``: silu(s·g) ≈ s·g; near 0: silu(s·g) ≈ s·g/2) — not by
    ``factor``; for negative ``g`` SiLU saturates, so there the change is smaller (and for
    ``factor > 1`` the gate is pushed further towards 0). To scale the activation by about ``s``, pass
    ``factor = sqrt(s)``.

    A neuron listed twice is scaled once. The original rows are copied before the edit and copied
    back on exit (also when the body raises), so the weights are bit-for-bit the originals after.
    """
    parts = _parts(model)
    pairs = list(dict.fromkeys(_as_pairs(parts, neurons)))
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise ValueError(f"factor must be a finite number (e.g. 10.0), got {factor!r}")
    saved: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    with torch.no_grad():
        for layer, index in pairs:
            mlp = _mlp(parts, layer)
            for proj in (mlp.gate_proj, mlp.up_proj):
                saved.append((proj.weight, index, proj.weight[index].clone()))
                if proj.bias is not None:
                    saved.append((proj.bias, index, proj.bias[index].clone()))
    try:
        with torch.no_grad():
            for tensor, index, _ in saved:
                tensor[index].mul_(factor)
        yield
    finally:
        with torch.no_grad():
            for tensor, index, original in reversed(saved):
                tensor[index].copy_(original)
