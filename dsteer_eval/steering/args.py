"""Parse and check the steering model_args (``layer=``, ``alpha=``, ``position=``, ``unit=``,
``mode=``, ``norm_preserve=``, ``control=``).

lm-eval hands ``--model_args`` values over already type-cast (``"-1.0"`` -> float,
``"20"`` -> int), so every parser accepts both strings and numbers.  Several
layers are separated by ``;`` (commas separate model_args): ``layer=10;20``,
``alpha=-1`` (one alpha for all) or ``alpha=-1;0.5`` (one per layer).
Everything here runs before any model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dsteer_eval.steering.hook import MODES, POSITIONS

Layer = int | str  # an int site (may be negative) or "final"


def _items(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("|", ";").split(";")]
        if any(not p for p in parts):
            raise ValueError(f"empty item in {value!r}; separate several values with ';'")
        return parts
    return [value]


def parse_layers(value) -> tuple[Layer, ...]:
    out: list[Layer] = []
    for item in _items(value):
        if isinstance(item, bool):
            raise ValueError(f"layer={value!r}: expected an integer or 'final'")
        if isinstance(item, str) and item.lower() == "final":
            out.append("final")
            continue
        try:
            as_float = float(item)
        except (TypeError, ValueError):
            raise ValueError(
                f"layer={value!r}: {item!r} is neither an integer nor 'final' "
                f"(several layers: layer=10;20)"
            ) from None
        if not as_float.is_integer():
            raise ValueError(f"layer={value!r}: {item!r} is not an integer")
        out.append(int(as_float))
    if len(set(out)) != len(out):
        raise ValueError(f"layer={value!r} names a layer twice")
    return tuple(out)


def parse_alphas(value) -> tuple[float, ...]:
    out = []
    for item in _items(value):
        try:
            alpha = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"alpha={value!r}: {item!r} is not a number") from None
        if isinstance(item, bool) or not math.isfinite(alpha):
            raise ValueError(f"alpha={value!r} must be a finite number (got {item!r})")
        out.append(alpha)
    return tuple(out)


def parse_position(value) -> str:
    text = str(value).strip().lower()
    if text not in POSITIONS:
        raise ValueError(f"position={value!r} is not one of: {', '.join(POSITIONS)}")
    return text


def parse_mode(value) -> str:
    text = str(value).strip().lower()
    if text not in MODES:
        raise ValueError(f"mode={value!r} is not one of: {', '.join(MODES)} (add: h + alpha*v; "
                         f"ablate: h - alpha*(h.v_hat)v_hat)")
    return text


def parse_control(value) -> int | None:
    """``control=random:<i>``: steer with random control i (seeded, norm-matched) instead of v."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    kind, _, index = str(value).strip().partition(":")
    if kind != "random" or not index.isdigit():
        raise ValueError(f"control={value!r}: expected random:<i> (e.g. control=random:0), i = 0, 1, ...")
    return int(index)


def parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", "none"):
        return False
    raise ValueError(f"{name}={value!r}: expected true or false")


def resolve_site(layer: Layer, num_layers: int) -> int:
    """Map a user layer (``final``, ``0..n``, or negative from the end) to a site index."""
    if layer == "final":
        return num_layers
    site = num_layers + 1 + layer if layer < 0 else layer
    if not 0 <= site <= num_layers:
        raise ValueError(
            f"layer={layer} is out of range for a model with {num_layers} decoder layers: use "
            f"0..{num_layers} (0 = embeddings, {num_layers} = final post-norm state), "
            f"-1..-{num_layers + 1} from the end, or 'final'"
        )
    return site


def resolve_sites(layers, num_layers: int) -> tuple[int, ...]:
    """Resolve every layer of ``layers`` (see :func:`resolve_site`) and refuse two that name one site.

    ``layer=20;-11`` on a 30-layer model, or ``final;-1``, would add the vector twice
    at the same hidden state; the error names both spellings."""
    sites: list[int] = []
    seen: dict[int, Layer] = {}
    for layer in layers:
        site = resolve_site(layer, num_layers)
        if site in seen:
            raise ValueError(
                f"layer={';'.join(str(x) for x in layers)}: {seen[site]!r} and {layer!r} are the same "
                f"site ({site} of a model with {num_layers} decoder layers), so the vector would be added "
                f"twice; name each layer once"
            )
        seen[site] = layer
        sites.append(site)
    return tuple(sites)


@dataclass(frozen=True)
class SteerArgs:
    layers: tuple[Layer, ...] | None
    alphas: tuple[float, ...]
    position: str = "all"
    unit: bool | str = False  # True: v/|v|; "norm": v/|v| times the mean |h| at the site (alpha = fraction of |h|)
    mode: str = "add"
    norm_preserve: bool = False
    control: int | None = None  # index of the random control that replaces v (dsteer_eval.steering.controls)
    control_seed: int = 0

    @classmethod
    def parse(cls, layer=None, alpha=1.0, position="all", unit=False, mode="add", norm_preserve=False,
              control=None, control_seed=0) -> SteerArgs:
        layers = parse_layers(layer) if layer is not None else None
        alphas = parse_alphas(alpha)
        if layers is not None and len(alphas) not in (1, len(layers)):
            raise ValueError(
                f"alpha={alpha!r} gives {len(alphas)} values for {len(layers)} layers; "
                f"give one alpha, or one per layer"
            )
        if layers is None and len(alphas) != 1:
            raise ValueError(f"alpha={alpha!r} gives several values but no layer= was given")
        mode = parse_mode(mode)
        if mode == "ablate" and any(a < 0 for a in alphas):
            raise ValueError(
                f"mode=ablate with alpha={alpha!r}: ablation removes the component along v and has no direction "
                f"to reverse (a negative alpha would amplify it); use alpha >= 0 (1 removes it)"
            )
        try:
            seed = int(control_seed)
        except (TypeError, ValueError):
            raise ValueError(f"control_seed={control_seed!r} must be a whole number") from None
        unit = "norm" if str(unit).strip().lower() == "norm" else parse_bool(unit, "unit")
        return cls(layers, alphas, parse_position(position), unit, mode,
                   parse_bool(norm_preserve, "norm_preserve"), parse_control(control), seed)

    def at(self, layer, alpha: float, control: int | None = None) -> "SteerArgs":
        """These settings re-pointed at ``layer`` (or a tuple of layers, each steered by its own v with the one
        α), ``alpha`` and ``control`` (a sweep point)."""
        layers = tuple(layer) if isinstance(layer, tuple) else (layer,)
        return replace(self, layers=layers, alphas=(float(alpha),), control=control)

    def pairs(self, layers: tuple[Layer, ...]) -> list[tuple[Layer, float]]:
        alphas = self.alphas * len(layers) if len(self.alphas) == 1 else self.alphas
        return list(zip(layers, alphas, strict=True))
