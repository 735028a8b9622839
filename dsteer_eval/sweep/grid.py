"""The (layer, alpha) grid of a sweep, checked completely before any model loads.

A grid point is one steered model: ``alpha * v`` added at one layer, or at every layer of a layer set
with one α (``--layers 20,25+26+27+28+29``: the D-STEER authors' protocol, the last five layers and one
scalar; each layer adds its own v̄ from the vector file).  Every ``alpha == 0`` point is the same unsteered
model whatever its layer, so the grid holds it once (``layer=None``) and every layer's curve shares it.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsteer_eval.steering.args import parse_layers, resolve_site, resolve_sites

if TYPE_CHECKING:  # steer_args imports torch; the leaderboard imports this module for alpha_text only
    from dsteer_eval.steering.args import Layer


class LayerSet(tuple):
    """Several layers steered with one α, written ``25+26+27`` (folder names, sweep.json, reports);
    ``layer=25;26;27`` in a point's model_args."""

    def __str__(self) -> str:
        return "+".join(str(x) for x in self)

    def model_arg(self) -> str:
        return ";".join(str(x) for x in self)


def layer_site(layer, num_layers: int) -> int:
    """The lowest site ``layer`` steers (the site the shared lower layers are kept at)."""
    return min(resolve_sites(tuple(layer), num_layers)) if isinstance(layer, LayerSet) else resolve_site(layer, num_layers)


@dataclass(frozen=True)
class Point:
    layer: Layer | LayerSet | None  # as the user wrote it (int, negative int, "final", a set); None when unsteered
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

    def model_args(self, base: str, control_seed: int | None = None) -> str:
        """``base`` model_args plus this point's ``layer=``/``alpha=`` (as a plain lm_eval run would have),
        ``peft=none`` on the base side and ``control=random:<i>`` for a control (``control_seed=`` too when given
        and ``base`` lacks it)."""
        kept = [item for item in base.split(",") if item.strip()]
        if self.side == "base":
            kept = [item for item in kept if item.partition("=")[0].strip() != "peft"] + ["peft=none"]
        layer = self.layer.model_arg() if isinstance(self.layer, LayerSet) else self.layer
        extra = ["alpha=0"] if self.alpha == 0 else [f"layer={layer}", f"alpha={alpha_text(self.alpha)}"]
        if self.control is not None:
            extra.append(f"control=random:{self.control}")
            if control_seed is not None and not any(i.partition("=")[0].strip() == "control_seed" for i in kept):
                extra.append(f"control_seed={control_seed}")
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


def parse_layer_grid(text: str) -> tuple[Layer | LayerSet, ...]:
    """Comma-separated layers; ``a+b+c`` is one grid layer that steers a, b and c with one α."""
    out: list = []
    for item in _items(text, "--layers"):
        members = [m.strip() for m in item.split("+")]
        try:
            parsed = parse_layers(";".join(members))
        except ValueError as exc:
            raise ValueError(f"--layers {text!r}: {str(exc).split(': ', 1)[-1]}") from None
        if "+" in item and len(parsed) < 2:
            raise ValueError(f"--layers {text!r}: {item!r} is not a layer set; write two or more layers as 25+26")
        out.append(LayerSet(parsed) if "+" in item else parsed[0])
    named = [str(x) for x in out]
    twice = sorted({x for x in named if named.count(x) > 1})
    if twice:
        raise ValueError(f"--layers {text!r}: {', '.join(twice)} is given twice")
    return tuple(out)


def check_layers(layers: tuple, num_layers: int, available: set[int] | None, source: str) -> None:
    """Each layer in range for ``num_layers``, named once among the single layers and once within each layer
    set (the one rule of steer_args.resolve_sites), and (when known) present in the vector file."""

    singles = tuple(x for x in layers if not isinstance(x, LayerSet))
    sets: dict[frozenset, str] = {}
    for group in [singles] + [x for x in layers if isinstance(x, LayerSet)]:
        try:
            sites = resolve_sites(group, num_layers)
        except ValueError as exc:
            message = str(exc)
            if message.startswith("layer=") and "are the same site" in message:  # names the --model_args list
                message = message.split(": ", 1)[1]
            raise ValueError(f"--layers: {message}") from None
        for layer, site in zip(group, sites):
            if available is not None and site not in available:
                raise ValueError(f"--layers: {source} has no vector for layer {layer} (it has {sorted(available)})")
        if isinstance(group, LayerSet):
            same = sets.setdefault(frozenset(sites), str(group))
            if same != str(group):
                raise ValueError(f"--layers: {same} and {group} steer the same layers; name each layer set once")


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
