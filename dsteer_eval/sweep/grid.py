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

if TYPE_CHECKING:  # steer_args imports torch; the leaderboard imports this module for alpha_text only
    from dsteer_eval.steer_args import Layer


@dataclass(frozen=True)
class Point:
    layer: Layer | None  # as the user wrote it (int, negative int, "final"); None when unsteered
    alpha: float

    @property
    def name(self) -> str:
        """Folder name: ``unsteered``, ``L20_a-1``, ``Lfinal_a0.5``, ``L2_a1.0000001`` (see :func:`alpha_text`)."""
        if self.alpha == 0:
            return "unsteered"
        return f"L{self.layer}_a{alpha_text(self.alpha)}"

    def model_args(self, base: str) -> str:
        """``base`` model_args plus this point's ``layer=``/``alpha=`` (as a plain lm_eval run would have)."""
        extra = "alpha=0" if self.alpha == 0 else f"layer={self.layer},alpha={alpha_text(self.alpha)}"
        return f"{base},{extra}" if base else extra


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


def parse_alpha_grid(text: str) -> tuple[float, ...]:
    out: list[float] = []
    for item in _items(text, "--alphas"):
        try:
            alpha = float(item)
        except ValueError:
            raise ValueError(f"--alphas {text!r}: {item!r} is not a number") from None
        if not math.isfinite(alpha):
            raise ValueError(f"--alphas {text!r}: {item!r} is not finite")
        if alpha in out:
            raise ValueError(f"--alphas {text!r}: {item!r} is given twice")
        out.append(alpha + 0.0)  # -0.0 -> 0.0
    return tuple(out)


def parse_layer_grid(text: str) -> tuple[Layer, ...]:
    from dsteer_eval.steer_args import parse_layers

    items = _items(text, "--layers")
    try:
        return parse_layers(";".join(items))
    except ValueError as exc:
        raise ValueError(f"--layers {text!r}: {str(exc).split(': ', 1)[-1]}") from None


def check_layers(layers: tuple[Layer, ...], num_layers: int, available: set[int] | None, source: str) -> None:
    """Each layer in range for ``num_layers``, named once (the one rule of steer_args.resolve_sites) and
    (when known) present in the vector file."""
    from dsteer_eval.steer_args import resolve_sites

    try:
        sites = resolve_sites(layers, num_layers)
    except ValueError as exc:
        message = str(exc)
        if message.startswith("layer="):  # the --model_args spelling; here the flag is --layers
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


def points(layers: tuple[Layer, ...], alphas: tuple[float, ...]) -> list[Point]:
    """Unsteered first (when 0 is in the grid), then layer by layer, alphas in the given order."""
    grid = [Point(None, 0.0)] if 0.0 in alphas else []
    return grid + [Point(layer, a) for layer in layers for a in alphas if a != 0.0]


_SAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def safe_name(text: str) -> str:
    """A task name as a folder name."""
    return _SAFE.sub("_", text)
