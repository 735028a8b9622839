"""Detect a vector file's format, read any of them, write any of them (``dsteer-eval convert``).

Formats, by name:

* ``safetensors``        ours (:mod:`.safetensors_file`)
* ``gguf``               llama.cpp / repeng / dialz control vectors (:mod:`.gguf_control`)
* ``lm-eval-pt``         lm-eval's built-in ``steer_path`` dict (:mod:`.torch_dicts`)
* ``dsteer-authors-pt``  the D-STEER authors' ``{layer: tensor}`` ``vectors.pt`` (:mod:`.torch_dicts`)

Detection reads the file's first bytes (GGUF magic, zip/pickle signatures, a safetensors header),
not its name; a ``.pt`` is then told apart by its structure. In-memory ``steering_vectors.SteeringVector``
objects come in through :func:`from_steering_vectors`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dsteer_eval.vectors import gguf_control, torch_dicts
from dsteer_eval.vectors.layer_conventions import BLOCK_OUTPUT, block_of_site, site_of_block
from dsteer_eval.vectors.safetensors_file import (
    VectorFile,
    VectorFileError,
    check_sites,
    looks_pickled,
    read_safetensors,
    save_vectors,
)

FORMATS = ("safetensors", "gguf", torch_dicts.LM_EVAL_FORMAT, torch_dicts.DSTEER_AUTHORS_FORMAT)
_BY_SUFFIX = {".safetensors": "safetensors", ".gguf": "gguf", ".pt": torch_dicts.LM_EVAL_FORMAT,
              ".pth": torch_dicts.LM_EVAL_FORMAT}


def load_vectors(path: str | os.PathLike, *, argument: str = "vector") -> VectorFile:
    """Read and check a vector file for steering: ours (safetensors) or a llama.cpp control-vector GGUF
    (detected by content); every failure names ``argument`` and the fix.  Pickled ``.pt`` files are refused:
    convert them with ``dsteer-eval convert``."""
    path = Path(path).expanduser()
    if path.is_file() and gguf_control.is_gguf(path):
        return check_sites(gguf_control.read_gguf(path, argument=argument), argument)
    return read_safetensors(path, argument=argument)


def detect(path: str | os.PathLike, *, argument: str = "vector") -> str:
    """The format of an existing file, from its content."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VectorFileError(f"{argument}={path}: no such file")
    if gguf_control.is_gguf(path):
        return "gguf"
    with open(path, "rb") as fh:
        head = fh.read(16)
    if looks_pickled(head):
        blob = torch_dicts.load_torch_dict(path, argument)
        if torch_dicts.is_lm_eval_dict(blob):
            return torch_dicts.LM_EVAL_FORMAT
        if torch_dicts.is_dsteer_authors_dict(blob):
            return torch_dicts.DSTEER_AUTHORS_FORMAT
        raise VectorFileError(
            f"{argument}={path} is a torch.save file but neither lm-eval's steering dict "
            f"({{hookpoint: {{'steering_vector': ...}}}}) nor the D-STEER authors' {{layer: tensor}}"
        )
    return "safetensors"  # load_vectors checks the header and says what else it might be


def read_any(path: str | os.PathLike, *, argument: str = "vector", num_layers: int | None = None,
             names: dict[int, str] | None = None) -> VectorFile:
    """Read a vector file of any known format; ``num_layers``/``names`` resolve lm-eval hookpoints."""
    fmt = detect(path, argument=argument)
    if fmt == torch_dicts.LM_EVAL_FORMAT:
        vf = torch_dicts.read_lm_eval_pt(path, argument=argument, num_layers=num_layers, names=names)
    elif fmt == torch_dicts.DSTEER_AUTHORS_FORMAT:
        vf = torch_dicts.read_dsteer_authors_pt(path, argument=argument)
    else:
        vf = load_vectors(path, argument=argument)
    return check_sites(vf, argument)  # one rule for every format: no negative site, none past the last


def format_for(path: str | os.PathLike, to: str | None) -> str:
    """The format to write: ``to`` if given, else from the suffix of ``path``."""
    if to is not None:
        if to not in FORMATS:
            raise VectorFileError(f"--to {to}: unknown format; use one of {', '.join(FORMATS)}")
        return to
    suffix = Path(path).suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise VectorFileError(f"OUT={path}: cannot tell the format from the suffix {suffix!r}; name it "
                              f".safetensors, .gguf or .pt, or pass --to ({', '.join(FORMATS)})")
    return _BY_SUFFIX[suffix]


def check_alpha(fmt: str, alpha: float) -> None:
    """``--alpha`` is lm-eval's ``steering_coefficient``; every other format stores the vector itself,
    so an alpha there would be ignored (or silently baked in): refused."""
    if alpha != 1.0 and fmt != torch_dicts.LM_EVAL_FORMAT:
        raise VectorFileError(f"--alpha applies to lm-eval .pt files only (their steering_coefficient); "
                              f"{fmt} stores the vector itself: drop --alpha {alpha:g} and give alpha= when "
                              f"steering, or convert to .pt")


def write_any(vf: VectorFile, path: str | os.PathLike, fmt: str, *, num_layers: int | None = None,
              names: dict[int, str] | None = None, alpha: float = 1.0) -> Path:
    """Write ``vf`` in format ``fmt``; ``alpha`` is the lm-eval ``steering_coefficient``."""
    check_alpha(fmt, alpha)
    if fmt == "safetensors":  # every metadata key is kept as it was (save_vectors' extras win)
        return save_vectors(path, vf.vectors, extra=dict(vf.metadata))
    if fmt == "gguf":
        return gguf_control.write_gguf(vf, path, num_layers=num_layers)
    if fmt == torch_dicts.LM_EVAL_FORMAT:
        return torch_dicts.write_lm_eval_pt(vf, path, alpha=alpha, num_layers=num_layers, names=names)
    if fmt == torch_dicts.DSTEER_AUTHORS_FORMAT:
        return torch_dicts.write_dsteer_authors_pt(vf, path, num_layers=num_layers)
    raise VectorFileError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def sites_left_out(vf: VectorFile, fmt: str, num_layers: int | None = None) -> dict[int, str]:
    """``{site: why}`` for every site of ``vf`` that ``fmt`` cannot hold: a block-numbered target (GGUF,
    the D-STEER authors' .pt) has no slot for the embeddings or the final post-norm state, and llama.cpp
    none for block 0. Empty for the other formats, and while the layer count is unknown (the writer
    then asks for it)."""
    n = num_layers if num_layers is not None else torch_dicts._int(vf.metadata.get("num_layers"))
    if n is None or fmt not in ("gguf", torch_dicts.DSTEER_AUTHORS_FORMAT):
        return {}
    out = {}
    for site in vf.vectors:
        try:
            if fmt == "gguf":
                gguf_control.direction_of_site(site, n)
            else:
                block_of_site(site, n, target="the D-STEER authors' vectors.pt")
        except ValueError as exc:
            out[site] = str(exc)
    return out


def from_steering_vectors(obj, *, path: str = "<steering_vectors.SteeringVector>") -> VectorFile:
    """A ``steering_vectors.SteeringVector`` (``layer_activations`` {block: tensor}, ``layer_type``)."""
    layer_type = getattr(obj, "layer_type", None)
    activations = getattr(obj, "layer_activations", None)
    if layer_type != "decoder_block" or not isinstance(activations, dict) or not activations:
        raise VectorFileError(
            f"{path}: expected a SteeringVector with layer_type='decoder_block' and layer_activations "
            f"{{layer: tensor}}, got layer_type={layer_type!r}; other layer types are not residual-stream sites"
        )
    vectors = {site_of_block(int(k)): torch_dicts._one_vector(f"{path} layer {k}", v)
               for k, v in activations.items()}
    metadata = {"source_format": "steering-vectors", "source_layers": BLOCK_OUTPUT,
                "hidden_size": str(next(iter(vectors.values())).shape[0])}
    return VectorFile(Path(path), dict(sorted(vectors.items())), metadata, format="steering-vectors")
