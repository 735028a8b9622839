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
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from dsteer_eval.common.hashing import sha256_file
from dsteer_eval.common.provenance import command_line
from dsteer_eval.vectors import formats
from dsteer_eval.vectors.layer_conventions import hookpoint_names
from dsteer_eval.vectors.safetensors_file import (
    VectorFile,
    VectorFileError,
    check_block_output,
    check_compatible,
    model_fingerprint,
)


@dataclass
class Converted:
    source: Path
    source_format: str
    out: Path
    out_format: str
    sites: list[int]
    left_out: dict[int, str] = field(default_factory=dict)  # {site: why the target cannot hold it}


_SITE = re.compile(r"^(?:-?\d+|final)$", re.IGNORECASE)
_RANGE = re.compile(r"^(-?\d+)\s*-\s*(-?\d+)$")


def parse_layers(text: str, num_layers: int | None) -> list[int]:
    """``--layers``: sites (ours), ranges ``a-b`` (both ends included), negative sites from the end
    (``-1`` = the last, site ``num_layers``) and ``final``, separated by ``;`` or ``,``: ``2-5;10;-1``."""
    flag = f"--layers {text}"

    def site(word: str) -> int:
        if word.lower() != "final" and int(word) >= 0:
            return int(word)
        if num_layers is None:
            raise VectorFileError(f"{flag}: {word} counts from the end, which needs the model's layer count: "
                                  f"pass --num-layers N or --model (or name the site)")
        found = num_layers if word.lower() == "final" else num_layers + 1 + int(word)
        if found < 0:
            raise VectorFileError(f"{flag}: {word} counts back past site 0 of a {num_layers}-layer model")
        return found

    sites: list[int] = []
    for item in (p.strip() for p in str(text).replace(",", ";").split(";")):
        match = _RANGE.match(item)
        if match:
            low, high = site(match.group(1)), site(match.group(2))
            if low > high:
                raise VectorFileError(f"{flag}: {item} is an empty range (sites {low} to {high}); write it low-high, "
                                      f"e.g. 2-29")
            sites.extend(range(low, high + 1))
        elif _SITE.match(item):
            sites.append(site(item))
        else:
            raise VectorFileError(f"{flag}: {item!r} is not a site, a range such as 2-29, a negative site from the "
                                  f"end (-1 = the last) or 'final'; e.g. --layers '2-5;10;-1'")
    twice = sorted({s for s in sites if sites.count(s) > 1})
    if twice:
        raise VectorFileError(f"{flag} names site {', '.join(map(str, twice))} twice; name each site once")
    return sites


def _select(vf: VectorFile, layers: list[int] | None, text: str = "") -> VectorFile:
    if layers is None:
        return vf
    missing = [s for s in layers if s not in vf.vectors]
    if missing:
        have = ", ".join(map(str, vf.vectors))
        raise VectorFileError(f"--layers {text or ';'.join(map(str, layers))}: {vf.path} has no site(s) "
                              f"{missing} (it has: {have}; sites are ours: block k is site k+1)")
    return VectorFile(vf.path, {s: vf.vectors[s] for s in sorted(layers)}, dict(vf.metadata), vf.format)


def _reasons(left_out: dict[int, str]) -> str:
    return "; ".join(f"site {site}: {why}" for site, why in sorted(left_out.items()))


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
            alpha: float = 1.0, layers: str | list[int] | None = None, force: bool = False,
            command: str | None = None) -> Converted:
    """Convert ``source`` to ``out``; ``model`` (loaded) checks the fit and names lm-eval hookpoints.

    ``layers``: the sites to convert (a list, or ``--layers`` text for :func:`parse_layers`); default:
    every site the target can hold, the others listed in ``Converted.left_out`` with the reason. Named
    sites the target cannot hold are refused, all of them in one message."""
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
    text = layers if isinstance(layers, str) else ""
    if isinstance(layers, str):
        recorded = vf.metadata.get("num_layers")
        layers = parse_layers(layers, num_layers if num_layers is not None else
                              (int(recorded) if recorded is not None and recorded.isdigit() else None))
    vf = _select(vf, layers, text)
    if model is not None:
        check_compatible(vf, model, argument="IN")
    for key, value in fingerprint.items():
        vf.metadata.setdefault(key, value)
    if num_layers is not None:
        vf.metadata.setdefault("num_layers", str(num_layers))
        check_block_output(vf, num_layers, argument="IN")  # a conversion must not relabel it as post-norm
    left_out = formats.sites_left_out(vf, fmt, num_layers)
    if left_out and layers is not None:
        raise VectorFileError(f"--layers {text or ';'.join(map(str, layers))}: {fmt} cannot hold site(s) "
                              f"{', '.join(map(str, sorted(left_out)))} ({_reasons(left_out)}); leave them out of "
                              f"--layers (without --layers every site it can hold is converted)")
    if left_out and len(left_out) == len(vf.vectors):
        raise VectorFileError(f"{fmt} cannot hold any site of IN={source} ({_reasons(left_out)})")
    if left_out:
        vf = VectorFile(vf.path, {s: v for s, v in vf.vectors.items() if s not in left_out}, vf.metadata, vf.format)
    record = {
        "from": str(source), "from_format": vf.format, "from_sha256": sha256_file(source), "to_format": fmt,
        "steering_coefficient": alpha, "command": command or command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if left_out:
        record["sites_left_out"] = sorted(left_out)
    previous = earlier_conversions(vf.metadata)
    if previous:
        record["previous"] = previous
    vf.metadata["conversion"] = json.dumps(record, sort_keys=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    formats.write_any(vf, out, fmt, num_layers=num_layers, names=names, alpha=alpha)
    return Converted(source, vf.format, out, fmt, sorted(vf.vectors), left_out)
