"""``dsteer-eval convert IN OUT``: a vector file from one format to another, layers renumbered.

The layer numbering of every format is mapped through our hidden-state sites
(:mod:`.layer_conventions`), the vectors are copied bit for bit (float32), and metadata goes where
the target has room for it (safetensors metadata; ``dsteer.*`` GGUF keys; lm-eval entries). A
``conversion`` record (source path, format and sha256, the command) is added; the records of earlier
conversions of the same vectors go into its ``previous`` list (oldest first), so a chain keeps them all.
``--alpha`` (lm-eval's ``steering_coefficient``) is refused for every other target format.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from dsteer_eval.hashing import sha256_file
from dsteer_eval.provenance import command_line
from dsteer_eval.vectors import formats
from dsteer_eval.vectors.layer_conventions import hookpoint_names
from dsteer_eval.vectors.safetensors_file import VectorFile, VectorFileError, check_compatible, model_fingerprint


@dataclass
class Converted:
    source: Path
    source_format: str
    out: Path
    out_format: str
    sites: list[int]


def _select(vf: VectorFile, layers: list[int] | None) -> VectorFile:
    if layers is None:
        return vf
    missing = [s for s in layers if s not in vf.vectors]
    if missing:
        have = ", ".join(map(str, vf.vectors))
        raise VectorFileError(f"--layers {','.join(map(str, layers))}: {vf.path} has no site(s) "
                              f"{missing} (it has: {have}; sites are ours: block k is site k+1)")
    return VectorFile(vf.path, {s: vf.vectors[s] for s in layers}, dict(vf.metadata), vf.format)


def earlier_conversions(metadata: dict) -> list:
    """The conversion records already in ``metadata`` (``conversion`` and its ``previous``), oldest first:
    a conversion of a converted file keeps them (an unreadable one is kept as its text)."""
    if "conversion" not in metadata:
        return []
    try:
        last = json.loads(metadata["conversion"])
    except (TypeError, json.JSONDecodeError):
        return [metadata["conversion"]]
    if not isinstance(last, dict):
        return [last]
    last = dict(last)
    previous = last.pop("previous", [])
    return [*(previous if isinstance(previous, list) else [previous]), last]


def convert(source, out, *, to: str | None = None, model=None, num_layers: int | None = None,
            alpha: float = 1.0, layers: list[int] | None = None, force: bool = False,
            command: str | None = None) -> Converted:
    """Convert ``source`` to ``out``; ``model`` (loaded) checks the fit and names lm-eval hookpoints."""
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if out.exists() and not force:
        raise VectorFileError(f"OUT={out} exists; pass --force to replace it")
    if out.resolve() == source.resolve():
        raise VectorFileError(f"OUT={out} is the input file; write the conversion elsewhere")
    fmt = formats.format_for(out, to)
    formats.check_alpha(fmt, alpha)  # before anything is read
    names, fingerprint = None, {}
    if model is not None:
        fingerprint = model_fingerprint(model)
        num_layers = int(fingerprint["num_layers"]) if num_layers is None else num_layers
        names = hookpoint_names(model)
    vf = formats.read_any(source, argument="IN", num_layers=num_layers, names=names)
    vf = _select(vf, layers)
    if model is not None:
        check_compatible(vf, model, argument="IN")
    for key, value in fingerprint.items():
        vf.metadata.setdefault(key, value)
    if num_layers is not None:
        vf.metadata.setdefault("num_layers", str(num_layers))
    record = {
        "from": str(source), "from_format": vf.format, "from_sha256": sha256_file(source), "to_format": fmt,
        "steering_coefficient": alpha, "command": command or command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    previous = earlier_conversions(vf.metadata)
    if previous:
        record["previous"] = previous
    vf.metadata["conversion"] = json.dumps(record, sort_keys=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    formats.write_any(vf, out, fmt, num_layers=num_layers, names=names, alpha=alpha)
    return Converted(source, vf.format, out, fmt, sorted(vf.vectors))
