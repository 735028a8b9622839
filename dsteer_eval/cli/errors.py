"""One-line messages for errors a verb raises (no tracebacks for bad input or unwritable outputs)."""

from __future__ import annotations

import argparse
import os


def _output_flag(args: argparse.Namespace) -> tuple[str, str] | None:
    for flag, name in (("--out", "out"), ("--output", "output")):
        value = getattr(args, name, None)
        if value:
            return flag, str(value)
    return None


def _touches(filename: str, out: str) -> bool:
    """Whether ``filename`` is ``out``, inside it, one of its parents, or a staging sibling of it."""
    f = os.path.realpath(os.path.expanduser(filename))
    o = os.path.realpath(os.path.expanduser(out))
    sibling = os.path.dirname(f) == os.path.dirname(o) and os.path.basename(f).startswith(f".{os.path.basename(o)}.")
    return f == o or f.startswith(o + os.sep) or o.startswith(f + os.sep) or sibling


def os_error_message(exc: OSError, args: argparse.Namespace) -> str:
    reason = exc.strerror or str(exc)
    filename = exc.filename if isinstance(exc.filename, str) else None
    output = _output_flag(args)
    if output is not None and (filename is None or _touches(filename, output[1])):
        flag, out = output
        return f"cannot write {filename or out}: {reason} ({flag} {out})"
    return f"{filename}: {reason}" if filename else reason
