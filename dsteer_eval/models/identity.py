"""What identifies a model in a record: its loaded shape and the content of its files.

* :func:`content`      ``{"sha256", "path"}`` of the files a model name points at: a local file or folder,
                       the embedded model's GGUF, or a Hugging Face cache snapshot (never downloaded).
                       Hashed cheaply (size + first and last MiB per file, :mod:`dsteer_eval.common.hashing`).
* :func:`model_entry`  the ``{"role", "path_or_id", "fingerprint"}`` entry a provenance record lists under
                       ``models`` (:func:`dsteer_eval.common.provenance.collect` takes it as a fact).
"""

from __future__ import annotations

from pathlib import Path

from dsteer_eval.common.hashing import file_digest, path_digest, sha256_file, sha256_tree
from dsteer_eval.models.embedded import EMBEDDED, is_embedded_name
from dsteer_eval.steering.sites import unwrap
from dsteer_eval.vectors import model_fingerprint


def _hub_snapshot(name: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download  # deferred: only for hub ids

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a cached hub repo (or not a repo id at all)
        return None


def content(value, revision: str | None = None) -> dict:
    """``{"sha256", "path"}`` identifying the model (or file) ``value`` names; only ``sha256`` is compared.

    ``sha256`` is None when the files cannot be found here yet (a hub model not downloaded before the
    first run, the embedded model's wheel missing): the name in the settings still pins the model, and
    the next run, which finds the files, records their hash for the runs after it.
    """
    text = str(value).strip()
    if is_embedded_name(text):
        try:
            gguf = EMBEDDED[text.lower()].locate_gguf()
        except FileNotFoundError:
            return {"sha256": None, "path": text}
        return {"sha256": file_digest(gguf), "path": str(gguf)}
    local = Path(text).expanduser()
    if local.exists():
        return {"sha256": path_digest(local), "path": str(local.resolve())}
    snapshot = _hub_snapshot(text, revision)
    if snapshot is not None:
        return {"sha256": path_digest(snapshot), "path": str(snapshot)}
    return {"sha256": None, "path": text}


def loaded_fingerprint(model) -> dict:
    try:
        found = dict(model_fingerprint(model))
    except Exception as exc:  # noqa: BLE001 - an unusual architecture must not fail the run that records it
        found = {"error": f"{type(exc).__name__}: {exc}"}
    found["name_or_path"] = str(getattr(getattr(unwrap(model), "config", None), "_name_or_path", "") or "")
    return found


def files_fingerprint(path_or_id: str) -> dict:
    path = Path(path_or_id).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file():
        weights = path / "adapter_model.safetensors"
        return {"adapter_sha256": sha256_file(weights) if weights.is_file() else sha256_tree(path)}
    return {"content_digest": content(path_or_id)["sha256"]}


def model_entry(role: str, path_or_id=None, *, model=None) -> dict:
    """``{"role", "path_or_id", "fingerprint"}`` of a model: its shape when ``model`` (loaded) is given,
    and the hash of its files when ``path_or_id`` names them (see the module docstring)."""
    fingerprint = loaded_fingerprint(model) if model is not None else {}
    name = str(path_or_id) if path_or_id is not None else fingerprint.get("name_or_path") or None
    if name:
        try:
            fingerprint.update(files_fingerprint(name))
        except OSError as exc:
            fingerprint["error"] = f"cannot hash {name}: {exc.strerror or exc}"
    return {"role": role, "path_or_id": name, "fingerprint": fingerprint}
