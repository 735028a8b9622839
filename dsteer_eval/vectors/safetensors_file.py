"""Steering-vector files: safetensors, one vector per hidden-state site, with metadata.

Layout of a file written by :func:`save_vectors`::

    tensors   "layer.0" ... "layer.<n>"   float32, shape (hidden_size,)
              (site n is the post-norm state; see dsteer_eval.steering.sites)
    metadata  format="dsteer-eval/vectors", format_version="1",
              model_id, model_type, hidden_size, num_layers, vocab_size,
              method, n_examples, package_version, created, provenance (a JSON record,
              dsteer_eval.common.provenance), plus free-form extras

Files without our metadata (e.g. ``save_file({"20": v}, path)``) are accepted:
keys may be ``layer.<i>`` or ``<i>``; only the hidden size is checked then.
Pickles (``torch.save``) are refused: loading one can execute code.
"""

from __future__ import annotations

import json
import os
import pickletools
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsteer_eval import __version__
from dsteer_eval.common import provenance as prov
from dsteer_eval.common.output_folder import atomic_file
from dsteer_eval.steering.hook import NonFiniteError, check_finite
from dsteer_eval.steering.sites import resolve_parts, unwrap
from dsteer_eval.vectors.layer_conventions import BLOCK_OUTPUT

FORMAT = "dsteer-eval/vectors"
FORMAT_VERSION = "1"
_FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_layers", "vocab_size")


class VectorFileError(ValueError):
    """A vector file that cannot be used as asked; the message says why and what to do."""


def model_fingerprint(model) -> dict[str, str]:
    """What a vector file must agree with to be applied to ``model``."""

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
    format: str = "safetensors"  # the file's format (see dsteer_eval.vectors.formats)

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


_PICKLE_OPCODES = frozenset(op.code.encode("latin-1") for op in pickletools.opcodes)
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def _pickle_message(path: Path, argument: str) -> str:
    return (
        f"{argument}={path} is a pickle / torch.save file, not safetensors. dsteer-eval does not "
        f"unpickle vector files here (unpickling can run arbitrary code). Convert it once: "
        f"`dsteer-eval convert {path} v.safetensors` reads lm-eval's built-in steer_path dicts and the "
        f"D-STEER authors' {{layer: tensor}} files with torch.load(weights_only=True); an lm-eval file "
        f"can also go to steer_path= as it is"
    )


def looks_pickled(head: bytes) -> bool:
    """A zip archive (torch.save) or a binary pickle: PROTO 2..5, then FRAME (4, 5) or an opcode (2, 3)."""
    if head.startswith(b"PK\x03\x04"):
        return True
    if len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return head[2:3] == b"\x95" if head[1] >= 4 else head[2:3] in _PICKLE_OPCODES
    return False


def _safetensors_header(path: Path) -> tuple[dict | None, str]:
    """``(parsed JSON header, "")``, or ``(None, why not)``: 8-byte little-endian length, then a JSON object.

    The header also gets ``"__header_len__"`` (the stated length) for :func:`_check_header`."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            return None, f"it is {size} bytes long, too short for a safetensors header"
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > _MAX_HEADER:
            return None, f"its header length {header_len} is not plausible"
        if 8 + header_len > size:
            return None, (f"its header claims {header_len} bytes but the file has {size - 8} after the length: "
                          f"truncated, or not safetensors at all")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"its header is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return None, "its header is not a JSON object"
    header["__header_len__"] = header_len
    return header, ""


def _check_header(path: Path, argument: str, header: dict) -> None:
    """Structure of a parsed header: metadata of strings, tensors inside the file (not truncated)."""
    data_len = os.path.getsize(path) - 8 - header.pop("__header_len__")
    meta = header.get("__metadata__", {})
    if meta is not None and (not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise VectorFileError(
            f"{argument}={path}: bad metadata: '__metadata__' must map strings to strings; "
            f"rewrite the file with dsteer_eval.vectors.save_vectors"
        )
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise VectorFileError(f"{argument}={path}: bad header entry for tensor {key!r} (data_offsets)")
        if offsets[1] > data_len:
            raise VectorFileError(
                f"{argument}={path} is truncated: tensor {key!r} needs bytes up to {offsets[1]} of the data "
                f"section but only {data_len} are there; copy or write the file again"
            )


def _sniff(path: Path, argument: str) -> None:
    """Accept a well-formed safetensors file; refuse pickles (by their real signatures) and anything else.

    The safetensors parse comes first: its first byte is the low byte of the header
    length, which may well be 0x80 (a pickle's first byte) in a valid file."""
    header, why = _safetensors_header(path)
    if header is not None:
        _check_header(path, argument, header)
        return
    with open(path, "rb") as fh:
        head = fh.read(16)
    if looks_pickled(head):
        raise VectorFileError(_pickle_message(path, argument))
    raise VectorFileError(
        f"{argument}={path} is not a safetensors file ({why}); write vectors with "
        f"dsteer_eval.vectors.save_vectors or safetensors.torch.save_file"
    )


def _int_metadata(metadata: dict, key: str, path: Path, argument: str) -> int | None:
    if key not in metadata:
        return None
    try:
        return int(metadata[key])
    except ValueError:
        raise VectorFileError(
            f"{argument}={path}: bad metadata: {key}={metadata[key]!r} is not an integer"
        ) from None


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


def read_safetensors(path: str | os.PathLike, *, argument: str = "vector") -> VectorFile:
    """Read and check one of our safetensors vector files; every failure names ``argument`` and the fix.
    Pickled ``.pt`` files are refused: convert them with ``dsteer-eval convert``.  Any format:
    :func:`dsteer_eval.vectors.formats.load_vectors`."""
    from safetensors import safe_open  # deferred: safetensors loads only when a file is read/written

    path = Path(path).expanduser()
    if not path.is_file():
        raise VectorFileError(
            f"{argument}={path}: no such file. Create one with `dsteer-eval extract` or pass "
            f"the path of an existing .safetensors vector file"
        )
    _sniff(path, argument)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            num_layers = _int_metadata(metadata, "num_layers", path, argument)
            vectors = {}
            for key in fh.keys():
                try:
                    site = _site_of(key, num_layers)
                except VectorFileError as exc:
                    raise VectorFileError(f"{argument}={path}: {exc}") from None
                if site in vectors:
                    raise VectorFileError(f"{argument}={path}: two tensors name layer {site} (key {key!r})")
                vectors[site] = fh.get_tensor(key)
    except VectorFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors name neither the file nor the fix
        raise VectorFileError(
            f"{argument}={path}: cannot read the safetensors file ({type(exc).__name__}: {exc}); "
            f"it may be truncated or corrupt: copy or write it again"
        ) from None
    if not vectors:
        raise VectorFileError(f"{argument}={path} holds no tensors")
    sizes = {tuple(v.shape) for v in vectors.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise VectorFileError(
            f"{argument}={path}: every tensor must be one vector of shape (hidden_size,), "
            f"got shapes {sorted(sizes)}"
        )
    for site, v in vectors.items():
        if not v.is_floating_point():
            raise VectorFileError(f"{argument}={path}: vector for layer {site} is not float ({v.dtype})")
        try:
            check_finite(v, f"{argument}={path}: vector for layer {site}")
        except NonFiniteError as exc:
            raise VectorFileError(str(exc)) from None
    hidden = _int_metadata(metadata, "hidden_size", path, argument)
    if hidden is not None and hidden != next(iter(sizes))[0]:
        raise VectorFileError(f"{argument}={path}: metadata hidden_size disagrees with its tensors")
    return check_sites(VectorFile(path, {k: v.float() for k, v in sorted(vectors.items())}, metadata), argument)


def check_sites(vf: VectorFile, argument: str = "vector") -> VectorFile:
    """Refuse sites no model has: negative ones (a ``layer.-1`` key, a ``dsteer_site`` of -1), and ones past
    the post-norm site of the layer count the file records. Every reader calls it (:func:`load_vectors`,
    :func:`dsteer_eval.vectors.formats.read_any`), so ``convert`` and ``info`` refuse what ``steered`` would."""
    recorded = str(vf.metadata.get("num_layers", ""))
    n = int(recorded) if recorded.isdigit() else None
    for site in vf.vectors:
        if site < 0:
            raise VectorFileError(f"{argument}={vf.path} holds a vector for site {site}; sites count from 0 "
                                  f"(0 = embeddings, n = post-norm): rename its key or entry to the site it steers")
        if n is not None and site > n:
            raise VectorFileError(f"{argument}={vf.path} holds a vector for site {site}, beyond the last site {n} of "
                                  f"a {n}-layer model (num_layers in its metadata); drop it or correct num_layers")
    return vf


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
    check_block_output(vf, int(fp["num_layers"]), argument=argument)
    if mismatched:
        detail = "; ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in mismatched.items())
        raise VectorFileError(
            f"{argument}={vf.path} was extracted from a different model "
            f"({vf.metadata.get('model_id', '?')}): {detail}. Extract a vector from this model "
            f"with `dsteer-eval extract`"
        )


def check_block_output(vf: VectorFile, n: int, *, argument: str = "vector") -> None:
    """Refuse a block-numbered file (``source_layers=block_output``) holding the raw output of the last of
    ``n`` decoder blocks: it would be read as site ``n``, the post-norm state, which it is not."""
    if vf.metadata.get("source_layers") == BLOCK_OUTPUT and n in vf.vectors:
        raise VectorFileError(
            f"{argument}={vf.path} numbers layers by block output (llama.cpp / repeng / D-STEER .pt): its "
            f"layer {n - 1} is the raw output of the last decoder block, before the final norm, which this "
            f"model's site {n} (post-norm) is not. Drop that layer (`dsteer-eval convert --layers`) or "
            f"extract a vector at site {n}"
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
    provenance: Mapping[str, object] | None = None,
) -> Path:
    """Write ``vectors`` (site -> (d,) tensor) atomically, with metadata.

    ``provenance``: the record of how the vectors were made (:func:`dsteer_eval.common.provenance.collect`
    with the data, models and seeds); without one, a minimal record (version, git, command, time)."""
    from safetensors.torch import save_file  # deferred: safetensors loads only when a file is read/written

    if not vectors:
        raise VectorFileError("no vectors to save")
    tensors = {}
    for site, v in sorted(vectors.items()):
        v = v.detach().to("cpu", torch.float32).contiguous()
        if v.dim() != 1:
            raise VectorFileError(f"vector for layer {site} must be 1-D, got shape {tuple(v.shape)}")
        try:
            check_finite(v, f"vector for layer {site}")
        except NonFiniteError as exc:
            raise VectorFileError(str(exc)) from None
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
    meta[prov.KEY] = prov.dumps(provenance if provenance is not None else prov.collect())
    if model is not None:
        meta.update(model_fingerprint(model))
    else:
        meta["hidden_size"] = str(next(iter(tensors.values())).shape[0])
    for key, value in (extra or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)

    path = Path(path)
    with atomic_file(path) as tmp:  # a symlink is followed; the link stays
        save_file(tensors, str(tmp), metadata=meta)
    return path
