"""Numbers read from environment variables (memory budgets, batch caps), checked with the variable named."""

from __future__ import annotations

import os


def env_number(name: str, default: int | float, unit: str, *, minimum: int | float = 0, whole: bool = True):
    """``int`` (``whole``) or ``float`` from ``$name`` (``default`` when unset); a value that is not a number or is
    below ``minimum`` is refused with the variable and its unit named."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a {'whole ' if whole else ''}number of {unit}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be >= {minimum}")
    return value
