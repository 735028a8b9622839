"""Steering-vector files: safetensors, one vector per hidden-state site, with metadata.

Layout of a file written by :func:`save_vectors`::

    tensors   "layer.0" ... "layer.<n>"   float32, shape (hidden_size,)
              (site n is the post-norm state; see dsteer_eval.model_parts)
    metadata  format="dsteer-eval/vectors", format_version="1",
              model_id, model_type, hidden_size, num_layers, vocab_size,
              method, n_examples, package_version, created, plus free-form extras

Files without our metadata (e.g. ``save_file({"20": v}, path)``) are accepted:
keys may be ``layer.<i>`` or ``<i>``; only the hidden size is checked then.
Pickles (``torch.save``) are refused: loading one can execute code.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "dsteer-eval/vectors"
FORMAT_VERSION = "1"
_FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_layers", "vocab_size")


class VectorFileError(ValueError):
    """A vector file that cannot be used as asked; the message says why and what to do."""


def model_fingerprint(model) -> dict[str, str]:
    """What a vector file must agree with to be applied to ``model``."""
    from dsteer_eval.model_parts import resolve_parts, unwrap

    inner = unwrap(model)
    parts = resolve_parts(inner)
    cfg = inner.config
    return {
        "model_type": str(getattr(cfg, "model_type", "")),
        "hidden_size": str(parts.hidden_size),
        "num_layers": str(parts.num_layers),
        "vocab_size": str(getattr(cfg, "vocab_size", "")),
    }


@dataclass
class VectorFile:
    path: Path
    vectors: dict[int, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def vector(self, site: int, argument: str = "vector") -> torch.Tensor:
        if site not in self.vectors:
            have = ", ".join(str(s) for s in sorted(self.vectors))
            raise VectorFileError(
                f"{argument}={self.path} has no vector for layer {site} (it has layers: {have}); "
                f"pick one of those layers or extract vectors for layer {site}"
            )
        return self.vectors[site]


def _sniff(path: Path, argument: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise VectorFileError(
            f"{argument}={path} is a pickle / torch.save file, not safetensors. dsteer-eval does not "
            f"unpickle vector files (unpickling can run arbitrary code). Convert it once, in a "
            f"Python session you trust: `safetensors.torch.save_file({{'layer.20': v.float()}}, "
            f"'v.safetensors')`; a file in lm-eval's built-in steering format goes to steer_path= instead"
        )
    if len(head) < 9:
        raise VectorFileError(f"{argument}={path} is too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len > os.path.getsize(path):
        raise VectorFileError(
            f"{argument}={path} is not a safetensors file (bad header); write vectors with "
            f"dsteer_eval.vectors.save_vectors or safetensors.torch.save_file"
        )


def _site_of(key: str, num_layers: int | None) -> int:
    name = key[len("layer."):] if key.startswith("layer.") else key
    if name == "final":
        if num_layers is None:
            raise VectorFileError("key 'final' needs num_layers in the file's metadata")
        return num_layers
    try:
        return int(name)
    except ValueError:
        raise VectorFileError(
            f"tensor key {key!r} is not a layer index; use keys 'layer.<i>' (0 = embeddings, "
            f"n = post-norm)"
        ) from None


def load_vectors(path: str | os.PathLike, *, argument: str = "vector") -> VectorFile:
    """Read and check a vector file; every failure names ``argument`` and the fix."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise VectorFileError(
            f"{argument}={path}: no such file. Create one with `dsteer-eval extract` or pass "
            f"the path of an existing .safetensors vector file"
        )
    _sniff(path, argument)
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
        num_layers = int(metadata["num_layers"]) if "num_layers" in metadata else None
        vectors = {_site_of(k, num_layers): fh.get_tensor(k) for k in fh.keys()}
    if not vectors:
        raise VectorFileError(f"{argument}={path} holds no tensors")
    sizes = {tuple(v.shape) for v in vectors.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise VectorFileError(
            f"{argument}={path}: every tensor must be one vector of shape (hidden_size,), "
            f"got shapes {sorted(sizes)}"
        )
    for site, v in vectors.items():
        if not v.is_floating_point() or not torch.isfinite(v).all():
            raise VectorFileError(f"{argument}={path}: vector for layer {site} has NaN/inf or is not float")
    if "hidden_size" in metadata and int(metadata["hidden_size"]) != next(iter(sizes))[0]:
        raise VectorFileError(f"{argument}={path}: metadata hidden_size disagrees with its tensors")
    return VectorFile(path, {k: v.float() for k, v in sorted(vectors.items())}, metadata)


def check_compatible(vf: VectorFile, model, *, argument: str = "vector") -> None:
    """Raise unless the vectors in ``vf`` fit ``model`` (size, and model when recorded)."""
    fp = model_fingerprint(model)
    if vf.hidden_size != int(fp["hidden_size"]):
        raise VectorFileError(
            f"{argument}={vf.path} has vectors of size {vf.hidden_size} but the model's hidden size "
            f"is {fp['hidden_size']}; use a vector extracted from this model (or its base/DPO pair)"
        )
    recorded = {k: vf.metadata[k] for k in _FINGERPRINT_KEYS if k in vf.metadata}
    mismatched = {k: (v, fp[k]) for k, v in recorded.items() if v != fp[k]}
    if mismatched:
        detail = "; ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in mismatched.items())
        raise VectorFileError(
            f"{argument}={vf.path} was extracted from a different model "
            f"({vf.metadata.get('model_id', '?')}): {detail}. Extract a vector from this model "
            f"with `dsteer-eval extract`"
        )


def save_vectors(
    path: str | os.PathLike,
    vectors: Mapping[int, torch.Tensor],
    *,
    model=None,
    model_id: str = "",
    method: str = "",
    n_examples: int | None = None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write ``vectors`` (site -> (d,) tensor) atomically, with metadata."""
    from safetensors.torch import save_file

    from dsteer_eval import __version__

    if not vectors:
        raise VectorFileError("no vectors to save")
    tensors = {}
    for site, v in sorted(vectors.items()):
        v = v.detach().to("cpu", torch.float32).contiguous()
        if v.dim() != 1 or not torch.isfinite(v).all():
            raise VectorFileError(f"vector for layer {site} must be finite and 1-D")
        tensors[f"layer.{int(site)}"] = v
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "method": method,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if n_examples is not None:
        meta["n_examples"] = str(int(n_examples))
    if model is not None:
        meta.update(model_fingerprint(model))
    else:
        meta["hidden_size"] = str(next(iter(tensors.values())).shape[0])
    for key, value in (extra or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path
