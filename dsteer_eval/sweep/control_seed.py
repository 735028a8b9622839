"""Which random directions a sweep's controls use: a seed of its own per sweep, drawn reproducibly, recorded.

One population of K random directions reused by every sweep would make "v̄ is nearest the target in sweep A and
in sweep B" one draw, not two. So a new sweep with controls takes its control seed from what defines it — the
model args, the vector and model contents (by hash, never by path), the tasks, ``--limit``, the layers and the
grid on both sides, K — through sha256: another sweep gets other directions, the same sweep on another
machine or in another folder gets the same ones. Within one sweep the same K directions serve every α and both
sides (a dose-response curve per direction), which the report says.

The seed is recorded in ``sweep.json`` (``settings.control_seed``, compared on resume like any setting that
changes the numbers) and in its provenance (``seeds.controls``, with where it came from). Precedence:
``control_seed=`` in ``--model-args`` (as for a plain ``lm_eval --model steered`` run), then ``--control-seed``,
then the seed recorded by the sweep being resumed, then the derived one. A sweep written before seeds were
recorded used 0 (the steered model's default) and is resumed with it.
"""

from __future__ import annotations

import hashlib
import json

LEGACY_SEED = 0  # what every sweep used before the seed was recorded (steered's control_seed default)
SEED_BITS = 31


def derived_seed(settings: dict, *, tasks, layers, alphas, base_alphas, controls: int) -> int:
    # alphas / base_alphas: the parsed grid, or its text where it is relative to a ceiling (rel:..., auto)
    """The seed of a new sweep: sha256 over what defines it (contents by hash: paths differ between machines)."""
    contents = settings.get("contents") if isinstance(settings.get("contents"), dict) else {}
    hashes = {name: entry.get("sha256") if isinstance(entry, dict) else None for name, entry in sorted(contents.items())}
    identity = {
        "model_args": settings.get("model_args"), "vector_sha256": settings.get("vector_sha256"),
        "limit": settings.get("limit"), "backend": settings.get("backend"), "contents": hashes,
        "tasks": list(tasks), "layers": [str(x) for x in layers], "alphas": _grid(alphas),
        "base_alphas": _grid(base_alphas), "controls": int(controls),
    }
    digest = hashlib.sha256(("dsteer-eval/control-seed/" + json.dumps(identity, sort_keys=True)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (1 << SEED_BITS)


def _grid(values):
    return str(values).strip().lower() if isinstance(values, str) or values is None else [float(a) for a in values]


def parse_seed(value, argument: str) -> int:
    try:
        seed = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{argument}={value!r}: the control seed must be a whole number (e.g. 7)") from None
    if seed < 0:
        raise ValueError(f"{argument}={value!r}: the control seed must be >= 0")
    return seed


def recorded_seed(record: dict | None) -> int | None:
    """The control seed the points of an earlier run (``sweep.json``) were measured with: its recorded seed, 0 for
    a sweep written before seeds were recorded, None when it ran no controls (nothing to keep)."""
    if not isinstance(record, dict) or not any(isinstance(p, dict) and p.get("control") is not None
                                               for p in record.get("points") or []):
        return None
    settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    value = settings.get("control_seed", LEGACY_SEED)
    return LEGACY_SEED if value is None else parse_seed(value, "sweep.json control_seed")


def resolve(*, model_arg, flag, recorded: int | None, derive) -> tuple[int, str]:
    """``(seed, source)``: ``control_seed=`` in the model args, ``--control-seed``, the resumed sweep's seed
    (:func:`recorded_seed`), or ``derive()``."""
    if model_arg is not None:
        seed = parse_seed(model_arg, "--model-args control_seed")
        if flag is not None and parse_seed(flag, "--control-seed") != seed:
            raise ValueError(f"--control-seed {flag} and control_seed={model_arg} in --model-args disagree; give one")
        return seed, "model_args control_seed="
    if flag is not None:
        return parse_seed(flag, "--control-seed"), "--control-seed"
    if recorded is not None:
        return recorded, "the resumed sweep's seed"
    return derive(), "derived from the sweep's settings and grid (sha256)"
