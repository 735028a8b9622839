"""Steering vectors saved with ``torch.save``: lm-eval's built-in dict and the D-STEER authors' ``vectors.pt``.

Both are read with ``torch.load(weights_only=True)`` only (tensors, numbers, strings; no code runs).

* **lm-eval** (``--model steered --model_args steer_path=x.pt``)::

      {hookpoint: {"steering_vector": (d,), "steering_coefficient": c, "action": "add"|"clamp",
                   "bias": None, "head_index": None}}

  A hookpoint is a module name under ``model.base_model`` (``layers.<k>`` = our site ``k + 1``).
  Only ``add`` entries are vectors: read as ``c · steering_vector``. Written with
  ``steering_coefficient = alpha`` (default 1, so the file alone reproduces ``alpha=1``); our metadata
  and site travel inside each entry (``dsteer_metadata``, ``dsteer_site``), which lm-eval ignores.
* **D-STEER authors** (``samarthraina/dsteer`` ``scripts/train_steering_vector.py``, read by its
  ``--vectors``): ``{k: tensor}`` with ``k`` the decoder block whose output is steered (block-output
  numbering, our site ``k + 1``) and the sign DPO − base, as ours.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import torch

from dsteer_eval.common.output_folder import atomic_file
from dsteer_eval.steering.hook import NonFiniteError, check_finite
from dsteer_eval.vectors.layer_conventions import (
    BLOCK_OUTPUT,
    block_of_site,
    hookpoint_of_site,
    is_block_hookpoint,
    site_of_block,
    site_of_hookpoint,
)
from dsteer_eval.vectors.safetensors_file import VectorFile, VectorFileError

LM_EVAL_FORMAT = "lm-eval-pt"
DSTEER_AUTHORS_FORMAT = "dsteer-authors-pt"


def check_builtin_entry(where: str, info: dict) -> None:
    """Finite vector, coefficient and bias, and a direction for 'clamp' (before any model loads)."""
    vec = info.get("steering_vector")
    if not isinstance(vec, torch.Tensor) or not vec.is_floating_point():
        raise ValueError(f"{where}: 'steering_vector' must be a float tensor")
    check_finite(vec, f"{where} steering_vector")
    coef = info.get("steering_coefficient", 1.0)
    try:
        coef_value = float(coef)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: steering_coefficient={coef!r} is not a number") from None
    if not math.isfinite(coef_value):
        raise NonFiniteError(f"{where}: steering_coefficient={coef!r} must be a finite number")
    bias = info.get("bias")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise ValueError(f"{where}: 'bias' must be a tensor or None")
        check_finite(bias, f"{where} bias")
    if info.get("action", "add") == "clamp" and float(torch.linalg.vector_norm(vec.double())) == 0.0:
        raise NonFiniteError(
            f"{where}: a 'clamp' steering_vector of norm 0 has no direction (clamping divides by its "
            f"norm, which gives NaN everywhere); use a non-zero direction"
        )


def load_torch_dict(path: Path, argument: str):
    """``torch.load(weights_only=True)``; anything else in the pickle is refused with the file named."""
    try:
        with open(path, "rb") as fh:
            return torch.load(fh, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{argument}={path} holds objects other than tensors, numbers and strings, which "
            f"dsteer-eval will not unpickle (weights_only=True). Save the dict with plain tensors: "
            f"{exc}"
        ) from None


def is_lm_eval_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, dict) for k, v in obj.items())


def is_dsteer_authors_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, int) and not isinstance(k, bool) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_builtin_pt(path: Path, argument: str = "steer_path") -> dict:
    """lm-eval's built-in dict, every entry checked (used by ``steer_path=`` and by conversion)."""
    config = load_torch_dict(path, argument)
    if not is_lm_eval_dict(config):
        raise ValueError(
            f"{argument}={path} is not lm-eval's steering format "
            f"{{hookpoint: {{'steering_vector': tensor, 'action': 'add'|'clamp', ...}}}}"
        )
    for hookpoint, info in config.items():
        check_builtin_entry(f"{argument}={path} hookpoint {hookpoint!r}", info)
    return config


def _one_vector(where: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 1 and not (tensor.dim() == 2 and 1 in tensor.shape):
        raise VectorFileError(f"{where} has shape {tuple(tensor.shape)}, not one vector (d,)")
    vector = tensor.detach().to("cpu").reshape(-1).float()
    try:
        check_finite(vector, where)
    except NonFiniteError as exc:
        raise VectorFileError(str(exc)) from None
    return vector


def _vector_file(path: Path, vectors: dict, metadata: dict, fmt: str, argument: str) -> VectorFile:
    if len({v.shape[0] for v in vectors.values()}) != 1:
        raise VectorFileError(f"{argument}={path}: its vectors differ in length")
    metadata.setdefault("hidden_size", str(next(iter(vectors.values())).shape[0]))
    return VectorFile(path, dict(sorted(vectors.items())), metadata, format=fmt)


def read_lm_eval_pt(path: str | os.PathLike, *, argument: str = "vector", num_layers: int | None = None,
                    names: dict[int, str] | None = None) -> VectorFile:
    """Vectors of an lm-eval built-in dict (``add`` entries only), at our sites."""
    path = Path(path)
    try:
        config = load_builtin_pt(path, argument)
    except NonFiniteError as exc:
        raise VectorFileError(str(exc)) from None
    except ValueError as exc:
        raise VectorFileError(str(exc)) from None
    by_name = {name: site for site, name in (names or {}).items()}
    vectors, metadata, unsized_blocks = {}, {}, False
    for hookpoint, info in config.items():
        where = f"{argument}={path} hookpoint {hookpoint!r}"
        if info.get("action", "add") != "add":
            raise VectorFileError(f"{where}: action {info.get('action')!r} is not a steering vector (only "
                                  f"'add' entries convert); remove it or keep using the file as steer_path=")
        if info.get("head_index") is not None or info.get("bias") is not None:
            raise VectorFileError(f"{where}: per-head or biased entries are not one residual vector")
        if isinstance(info.get("dsteer_metadata"), str):
            metadata.update(json.loads(info["dsteer_metadata"]))
        site = info.get("dsteer_site")
        if not isinstance(site, int):
            n = num_layers if num_layers is not None else _int(metadata.get("num_layers"))
            try:
                site = by_name[hookpoint] if hookpoint in by_name else site_of_hookpoint(hookpoint, n)
            except ValueError as exc:
                raise VectorFileError(f"{where}: {exc}") from None
            if n is None and is_block_hookpoint(hookpoint):
                unsized_blocks = True  # the last block's raw output is refused once the model is known
        if site in vectors:
            raise VectorFileError(f"{where}: a second entry for site {site}")
        coefficient = float(info.get("steering_coefficient", 1.0))
        vector = _one_vector(where, info["steering_vector"])
        vectors[site] = vector if coefficient == 1.0 else vector * coefficient
    if "format" not in metadata:
        metadata["source_format"] = LM_EVAL_FORMAT
    if unsized_blocks:
        metadata["source_layers"] = BLOCK_OUTPUT
    return _vector_file(path, vectors, metadata, LM_EVAL_FORMAT, argument)


def write_lm_eval_pt(vf: VectorFile, path: str | os.PathLike, *, alpha: float = 1.0,
                     num_layers: int | None = None, names: dict[int, str] | None = None) -> Path:
    """Write ``vf`` as lm-eval's built-in dict, ``steering_coefficient = alpha`` for every hookpoint."""
    if not math.isfinite(alpha):
        raise VectorFileError(f"--alpha {alpha} must be a finite number")
    num_layers = num_layers if num_layers is not None else _int(vf.metadata.get("num_layers"))
    metadata = json.dumps(vf.metadata, sort_keys=True)
    config = {}
    for site, vector in vf.vectors.items():
        try:
            hookpoint = hookpoint_of_site(site, num_layers, names)
        except ValueError as exc:
            raise VectorFileError(f"{vf.path}: {exc}") from None
        config[hookpoint] = {"steering_vector": vector.detach().to("cpu", torch.float32).clone(),
                             "steering_coefficient": float(alpha), "action": "add", "bias": None,
                             "head_index": None, "dsteer_site": int(site), "dsteer_metadata": metadata}
    return _atomic_save(config, Path(path))


def read_dsteer_authors_pt(path: str | os.PathLike, *, argument: str = "vector") -> VectorFile:
    """The D-STEER authors' ``{block: tensor}``: block-output numbering, site ``k + 1``."""
    path = Path(path)
    blob = load_torch_dict(path, argument)
    if not is_dsteer_authors_dict(blob):
        raise VectorFileError(f"{argument}={path} is not a {{layer: tensor}} dict of the D-STEER authors' "
                              f"vectors.pt")
    vectors = {site_of_block(k): _one_vector(f"{argument}={path} layer {k}", v) for k, v in blob.items()}
    metadata = {"source_format": DSTEER_AUTHORS_FORMAT, "source_layers": BLOCK_OUTPUT}
    return _vector_file(path, vectors, metadata, DSTEER_AUTHORS_FORMAT, argument)


def write_dsteer_authors_pt(vf: VectorFile, path: str | os.PathLike, *, num_layers: int | None = None) -> Path:
    """Write ``{block: tensor}`` for the D-STEER authors' ``--vectors`` (no room for metadata there)."""
    num_layers = num_layers if num_layers is not None else _int(vf.metadata.get("num_layers"))
    if num_layers is None:
        raise VectorFileError(f"{vf.path} does not record the model's layer count, needed to tell its "
                              f"post-norm site from a block output; pass --num-layers N or --model")
    blob = {}
    for site, vector in vf.vectors.items():
        try:
            blob[block_of_site(site, num_layers, target="the D-STEER authors' vectors.pt")] = \
                vector.detach().to("cpu", torch.float32).clone()
        except ValueError as exc:
            raise VectorFileError(f"{vf.path}: {exc}") from None
    return _atomic_save(blob, Path(path))


def _int(value) -> int | None:
    return None if value is None else int(value)


def _atomic_save(obj, path: Path) -> Path:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)
    return path
