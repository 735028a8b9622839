"""The steering hook: add ``alpha * v`` to a model's hidden states.

This is the one place where dsteer-eval changes a forward pass.  The lm-eval
adapter, the probes and the sweeps all go through :func:`steer`, a context
manager that registers forward hooks on the modules whose outputs are the
chosen hidden-state sites (see :mod:`dsteer_eval.steering.sites`) and removes them
on exit, so the model is never left steered.

Positions
---------
Every row of a batch has a *prompt length* ``p`` (number of prompt tokens):

* ``all``         every position,
* ``prompt``      positions ``< p``,
* ``completion``  positions ``>= p`` (continuation / generated tokens only),
* ``last``        position ``p - 1``, the last prompt token (the one whose
                  hidden state predicts the first reply token).

Positions are absolute: during cached generation a forward pass over new
tokens starts at the cache length, which a pre-hook on the decoder reads, so
steering only generated tokens leaves the prompt's KV cache unsteered.

Modes
-----
* ``add`` (default)  h ← h + α·v. A negative α subtracts v.
* ``ablate``         h ← h − α·(h·v̂)·v̂, v̂ = v/‖v‖: the component along v̂ is scaled by (1 − α)
                     (α = 1 removes it, α = 2 reflects it); every component orthogonal to v̂ is
                     untouched and ‖v‖ does not matter. Ablation has no direction to reverse, so a
                     negative α is refused (it would *amplify* the component).

At one site, ablations read the incoming state and additions follow. ``norm_preserve=True`` then
rescales each steered position to the norm it had before steering (h' · ‖h‖/‖h'‖), so only the
direction changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from dsteer_eval.steering.sites import ModelParts, resolve_parts

POSITIONS = ("all", "prompt", "completion", "last")
MODES = ("add", "ablate")


class NonFiniteError(ValueError):
    """A steering vector, coefficient or shift that holds NaN/inf (or overflows the model's dtype)."""


def check_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``tensor`` unchanged, or raise :class:`NonFiniteError` naming ``what`` if it holds NaN/inf.

    The one check every steering-vector source goes through (vector files, lm-eval's
    ``steer_path`` dicts, :class:`Intervention` objects)."""
    if not isinstance(tensor, torch.Tensor):
        raise NonFiniteError(f"{what} must be a tensor, got {type(tensor).__name__}")
    if tensor.is_floating_point() or tensor.is_complex():
        # float8 (e4m3fn, e5m2, ...) has no isfinite/isnan kernels: checked in float32, which holds every value
        values = tensor.float() if tensor.is_floating_point() and tensor.element_size() == 1 else tensor
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            n_nan = int(torch.isnan(values).sum())
            raise NonFiniteError(
                f"{what} contains NaN or inf ({n_nan} NaN, {int(bad.sum()) - n_nan} inf of "
                f"{tensor.numel()} values); it would make every log-likelihood meaningless"
            )
    return tensor


def check_fits_dtype(shift: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    """``shift`` (computed in float32 or wider) cast to ``dtype``; :class:`NonFiniteError` naming
    ``what`` when a value overflows that dtype (e.g. beyond 65504 in float16)."""
    check_finite(shift, what)
    cast = shift.to(dtype)
    if dtype.is_floating_point and not bool(torch.isfinite(cast).all()):
        raise NonFiniteError(
            f"{what}: |alpha * vector| reaches {float(shift.abs().max()):.4g}, beyond the largest "
            f"{str(dtype).replace('torch.', '')} value {torch.finfo(dtype).max:.6g}; use a smaller alpha "
            f"(or unit=true), or load the model in float32/bfloat16 (dtype=float32)"
        )
    return cast


@dataclass(frozen=True)
class Intervention:
    """Add ``alpha * vector`` at hidden-state site ``site``."""

    site: int
    vector: torch.Tensor
    alpha: float
    mode: str = "add"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.mode == "ablate" and self.alpha < 0:
            raise ValueError(
                f"mode=ablate with alpha={self.alpha:g}: ablation removes the component along v and has no "
                f"direction to reverse (a negative alpha would amplify it); use alpha >= 0 (1 removes it)"
            )
        if self.vector.dim() != 1:
            raise ValueError(f"steering vector must be 1-D, got shape {tuple(self.vector.shape)}")
        if not math.isfinite(self.alpha):
            raise NonFiniteError(f"alpha must be finite, got {self.alpha}")
        check_finite(self.vector, f"steering vector for layer {self.site}")
        if self.mode == "ablate":  # the float32 norm the ablation divides by
            direction_norm(self.vector, f"mode=ablate: the vector for layer {self.site}",
                           "nothing ablated; rescale the vector (only its direction counts)")


def direction_norm(vector: torch.Tensor, what: str, consequence: str) -> float:
    """The float32 norm of ``vector`` when its direction v/|v| is used (``unit=``, ``mode=ablate``): a zero
    vector (no direction) raises ValueError, a norm that overflows float32 (v/|v| would be all zero, and
    steering would silently do nothing) raises :class:`NonFiniteError`.  ``what`` names the vector as
    ``"<setting>: the vector ..."``; ``consequence`` says what would silently happen."""
    norm = float(vector.detach().float().norm())
    setting, _, subject = what.partition(": ")
    if norm == 0.0:
        raise ValueError(f"{what} is zero and has no direction")
    if not math.isfinite(norm):
        raise NonFiniteError(f"{setting}: the norm of {subject} overflows float32 ({norm}), so v/|v| would be zero "
                             f"and {consequence}")
    return norm


@dataclass
class SteeringState:
    """Mutable per-forward information shared by the hooks of one :func:`steer`."""

    position: str = "all"
    prompt_lengths: torch.Tensor | None = None
    offset: int = 0


def position_mask(
    position: str, seq_len: int, offset: int, prompt_lengths: torch.Tensor | None, device
) -> torch.Tensor | None:
    """Boolean ``(batch, seq)`` mask of steered positions (``None`` means all)."""
    if position == "all":
        return None
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if prompt_lengths is None:
        raise RuntimeError(
            f"position={position!r} needs the prompt length of every row; pass "
            f"prompt_lengths to steer() (the lm-eval adapter does this for you)"
        )
    pos = torch.arange(offset, offset + seq_len, device=device)[None, :]
    plen = prompt_lengths.to(device).reshape(-1, 1)
    if position == "prompt":
        return pos < plen
    if position == "completion":
        return pos >= plen
    return pos == plen - 1


def _read_offset(kwargs: dict) -> int:
    cache_position = kwargs.get("cache_position")
    if cache_position is not None and cache_position.numel() > 0:
        return int(cache_position.reshape(-1)[0])
    # transformers >= 5.24 passes the KV cache as ``cache`` (``past_key_values`` before)
    past = kwargs.get("cache", kwargs.get("past_key_values"))
    if past is not None and hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    return 0


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if mask.shape[0] != like.shape[0]:
        if mask.shape[0] == 1 or bool((mask == mask[:1]).all()):
            mask = mask[:1].expand(like.shape[0], -1)
        else:
            raise RuntimeError(
                f"steering mask has {mask.shape[0]} rows but the batch has {like.shape[0]}"
            )
    return mask.reshape(*mask.shape, *([1] * (like.dim() - 2)))


def _make_hook(state: SteeringState, edit: Callable[[torch.Tensor], torch.Tensor]):
    def hook(module: nn.Module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        steered = edit(hidden)
        mask = position_mask(
            state.position, hidden.shape[1], state.offset, state.prompt_lengths, hidden.device
        )
        if mask is not None:
            steered = torch.where(_expand(mask, hidden), steered, hidden)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


def _adder(vectors: Sequence[tuple[torch.Tensor, float]], module: nn.Module, site: int | None = None,
           ablations: Sequence[tuple[torch.Tensor, float]] = (), norm_preserve: bool = False):
    """Edit function for one site: ablate v̂ components, add the sum of ``alpha * v`` in the site's
    dtype, and with ``norm_preserve`` give each position back its incoming norm.

    A sum that overflows that dtype (e.g. float16) is refused here, before any forward pass."""
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    delta = None
    if vectors:
        total = sum(float(alpha) * v.detach().to(torch.float32) for v, alpha in vectors)
        alphas = ", ".join(f"{float(alpha):g}" for _, alpha in vectors)
        where = f"alpha={alphas} times the steering vector" + (f" at layer {site}" if site is not None else "")
        delta = check_fits_dtype(total, dtype, where).to(device=device)
    units = [(v.detach().to(torch.float32) / v.detach().to(torch.float32).norm(), float(a)) for v, a in ablations]
    size = delta.shape[0] if delta is not None else units[0][0].shape[0]

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != size:
            raise RuntimeError(
                f"steering vector has {size} dims but the hidden state has {hidden.shape[-1]}"
            )
        out = hidden
        if units:
            h32 = hidden.float()
            for u, alpha in units:
                u = u.to(h32.device)
                h32 = h32 - alpha * (hidden.float() @ u)[..., None] * u
            out = h32.to(hidden.dtype)
        if delta is not None:
            out = out + (delta if delta.device == out.device and delta.dtype == out.dtype else delta.to(out))
        if norm_preserve:
            before = hidden.float().norm(dim=-1, keepdim=True)
            after = out.float().norm(dim=-1, keepdim=True)
            out = (out.float() * (before / after.clamp_min(torch.finfo(torch.float32).tiny))).to(hidden.dtype)
        return out

    return edit


@contextmanager
def steer(
    model: nn.Module,
    interventions: Iterable[Intervention] = (),
    *,
    position: str = "all",
    prompt_lengths: torch.Tensor | Sequence[int] | None = None,
    module_edits: Iterable[tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]] = (),
    parts: ModelParts | None = None,
    norm_preserve: bool = False,
) -> Iterator[SteeringState]:
    """Steer ``model`` inside the ``with`` block.

    ``interventions`` add ``alpha * v`` (or ablate v̂, see *Modes*) at hidden-state sites; ``module_edits``
    apply arbitrary ``hidden -> hidden`` functions to the outputs of given
    modules (used for lm-eval's built-in ``steer_path`` format).  Both respect
    ``position``.  The yielded :class:`SteeringState` may be updated between
    forward passes (e.g. ``state.prompt_lengths = ...``).
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}; got {position!r}")
    interventions = list(interventions)
    module_edits = list(module_edits)
    parts = parts or resolve_parts(model)
    if prompt_lengths is not None and not isinstance(prompt_lengths, torch.Tensor):
        prompt_lengths = torch.as_tensor(list(prompt_lengths), dtype=torch.long)
    state = SteeringState(position=position, prompt_lengths=prompt_lengths)

    by_site: dict[int, tuple[list, list]] = {}  # site -> (additions, ablations)
    for item in interventions:
        if not 0 <= item.site <= parts.num_layers:
            raise ValueError(f"layer {item.site} is out of range 0..{parts.num_layers}")
        if item.vector.shape[0] != parts.hidden_size:
            raise ValueError(
                f"steering vector has {item.vector.shape[0]} dims but the model's hidden "
                f"size is {parts.hidden_size}"
            )
        adds, ablations = by_site.setdefault(item.site, ([], []))
        (ablations if item.mode == "ablate" else adds).append((item.vector, item.alpha))

    handles = []
    try:
        if position != "all":

            def pre_hook(module, args, kwargs):
                state.offset = _read_offset(kwargs)

            handles.append(parts.decoder.register_forward_pre_hook(pre_hook, with_kwargs=True))
        for site, (adds, ablations) in sorted(by_site.items()):
            module = parts.site_module(site)
            edit = _adder(adds, module, site, ablations, norm_preserve)
            handles.append(module.register_forward_hook(_make_hook(state, edit)))
        for module, edit in module_edits:
            handles.append(module.register_forward_hook(_make_hook(state, edit)))
        yield state
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def adding(shifts: dict[nn.Module, torch.Tensor]) -> Iterator[None]:
    """Inside the block, each module's output (its hidden state) gets ``shift`` added, broadcast over
    ``(batch, positions, d)`` and cast to the output's dtype.  Unlike :func:`steer`, the shift may be a
    tensor that requires grad, so a probe can take the gradient of a loss with respect to a shift of the
    states (``dsteer_eval.probes``: gradient coherence, the lattice field)."""

    def make_hook(shift: torch.Tensor):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden + shift.to(hidden.dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    handles = [module.register_forward_hook(make_hook(shift)) for module, shift in shifts.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
