"""The (layer, alpha) grid of a sweep, checked completely before any model loads.

A grid point is one steered model: ``alpha * v`` added at one layer.  Every
``alpha == 0`` point is the same unsteered model whatever its layer, so the
grid holds it once (``layer=None``) and every layer's curve shares it.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsteer_eval.steering.args import parse_layers, resolve_sites

if TYPE_CHECKING:  # steer_args imports torch; the leaderboard imports this module for alpha_text only
    from dsteer_eval.steering.args import Layer


@dataclass(frozen=True)
class Point:
    layer: Layer | None  # as the user wrote it (int, negative int, "final"); None when unsteered
    alpha: float
    side: str = "dpo"  # "dpo": the model as loaded; "base": its PEFT adapter switched off (peft=none)
    control: int | None = None  # random control i in place of v (dsteer_eval.steering.controls), same alpha and layer

    @property
    def name(self) -> str:
        """Folder name: ``unsteered``, ``L20_a-1``, ``L20_a-1_random0``, ``base``, ``base_L20_a1``, ...
        (α as :func:`alpha_text` writes it)."""
        core = "unsteered" if self.alpha == 0 else f"L{self.layer}_a{alpha_text(self.alpha)}"
        if self.control is not None:
            core += f"_random{self.control}"
        if self.side == "base":
            return "base" if self.alpha == 0 else f"base_{core}"
        return core

    def model_args(self, base: str) -> str:
        """``base`` model_args plus this point's ``layer=``/``alpha=`` (as a plain lm_eval run would have),
        ``peft=none`` on the base side and ``control=random:<i>`` for a control."""
        kept = [item for item in base.split(",") if item.strip()]
        if self.side == "base":
            kept = [item for item in kept if item.partition("=")[0].strip() != "peft"] + ["peft=none"]
        extra = ["alpha=0"] if self.alpha == 0 else [f"layer={self.layer}", f"alpha={alpha_text(self.alpha)}"]
        if self.control is not None:
            extra.append(f"control=random:{self.control}")
        return ",".join(kept + extra)


def alpha_text(alpha: float) -> str:
    """``alpha`` as the shortest text that ``float()`` reads back as exactly ``alpha``.

    ``-1``, ``0.5``, ``1e-07`` as ``format(alpha, "g")`` writes them when that is exact (so folder
    names of earlier sweeps stay the same); otherwise Python's shortest round-trip ``repr``
    (``1.0000001``, ``0.3333333333333333``), never the 6 significant digits of ``:g``, which made
    ``1`` and ``1.0000001`` the same folder.
    """
    alpha = float(alpha)
    short = format(alpha, "g")
    return short if float(short) == alpha else repr(alpha)


def _items(text: str, flag: str) -> list[str]:
    items = [p.strip() for p in str(text).split(",")]
    if not text or not str(text).strip() or any(not p for p in items):
        raise ValueError(f"{flag} {text!r}: give a comma-separated list with no empty items, e.g. {flag} -1,0,1")
    return items


def parse_alpha_grid(text: str, flag: str = "--alphas") -> tuple[float, ...]:
    out: list[float] = []
    for item in _items(text, flag):
        try:
            alpha = float(item)
        except ValueError:
            raise ValueError(f"{flag} {text!r}: {item!r} is not a number") from None
        if not math.isfinite(alpha):
            raise ValueError(f"{flag} {text!r}: {item!r} is not finite")
        if alpha in out:
            raise ValueError(f"{flag} {text!r}: {item!r} is given twice")
        out.append(alpha + 0.0)  # -0.0 -> 0.0
    return tuple(out)


def parse_layer_grid(text: str) -> tuple[Layer, ...]:
    items = _items(text, "--layers")
    try:
        return parse_layers(";".join(items))
    except ValueError as exc:
        raise ValueError(f"--layers {text!r}: {str(exc).split(': ', 1)[-1]}") from None


def check_layers(layers: tuple[Layer, ...], num_layers: int, available: set[int] | None, source: str) -> None:
    """Each layer in range for ``num_layers``, named once (the one rule of steer_args.resolve_sites) and
    (when known) present in the vector file."""

    try:
        sites = resolve_sites(layers, num_layers)
    except ValueError as exc:
        message = str(exc)
        if message.startswith("layer=") and "are the same site" in message:  # names the --model_args list
            message = message.split(": ", 1)[1]
        raise ValueError(f"--layers: {message}") from None
    for layer, site in zip(layers, sites):
        if available is not None and site not in available:
            raise ValueError(f"--layers: {source} has no vector for layer {layer} (it has {sorted(available)})")


def check_tasks(tasks: tuple[str, ...], task_manager) -> None:
    """Every name known to lm-eval (a task, a group or a tag), else a clear error with suggestions."""
    known = set(task_manager.all_tasks)
    for name in tasks:
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"--tasks: unknown task {name!r}{hint}; `lm_eval ls tasks` lists them, "
                         f"--include-path adds a folder of YAML tasks")


def points(layers: tuple[Layer, ...], alphas: tuple[float, ...], *, base_alphas: tuple[float, ...] = (),
           controls: int = 0) -> list[Point]:
    """The grid in run order: the model as loaded (α=0 first, then layer by layer, each steered α followed
    by its ``controls`` random directions), then its base side (adapter off) over ``base_alphas`` the same
    way. α=0 first on each side: its unsteered states are what the shared lower layers replay."""
    def side(name: str, values: tuple[float, ...]) -> list[Point]:
        out = [Point(None, 0.0, name)] if 0.0 in values else []
        for layer in layers:
            for a in values:
                if a != 0.0:
                    out.append(Point(layer, a, name))
                    out += [Point(layer, a, name, i) for i in range(controls)]
        return out

    return side("dpo", alphas) + side("base", base_alphas)


_SAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def safe_name(text: str) -> str:
    """A task name as a folder name."""
    return _SAFE.sub("_", text)
