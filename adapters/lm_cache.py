"""lm-eval's ``--use_cache`` keyed by the steering.

lm-eval's ``CachingLM`` keys an entry by the request alone (one SQLite table per cache file), so a steered
run would be served another α's answers from the same file. Each steered model (``steered``,
``steered-vllm``) re-points the cache's database at a table of its own, named by a digest of everything that
changes its numbers (:func:`steering_digest`), whenever its steering changes (a sweep re-points it at every
point); the same settings again hit their own entries.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from dsteer_eval.common.hashing import sha256_file
from dsteer_eval.models.defaults import model_name
from dsteer_eval.models.identity import content

log = logging.getLogger("dsteer_eval.lm_cache")


def model_identity(ident: dict) -> str:
    """``ident`` (model_args and the like) with the content hashes of the files its ``pretrained``, ``peft`` and
    ``steer_path`` entries name, as one string (hashing reads the files: call once per model)."""
    files = {"pretrained": content(model_name(ident["pretrained"]))["sha256"]}
    if ident.get("peft") is not None:
        files["peft"] = content(ident["peft"])["sha256"]
    if ident.get("steer_path") is not None:
        files["steer_path"] = sha256_file(Path(str(ident["steer_path"])).expanduser())
    return repr(sorted({**ident, "files": files}.items()))


def steering_digest(identity: str, settings: tuple, interventions) -> str:
    """A digest of ``identity`` (model files and arguments), ``settings`` (position, dtype, ...) and each
    intervention's site, mode, α and exact vector bytes."""
    digest = hashlib.sha256(identity.encode())
    digest.update(repr(settings).encode())
    for item in interventions:
        digest.update(repr((item.site, item.mode, float(item.alpha), tuple(item.vector.shape))).encode())
        digest.update(item.vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def rekey(cache_hook, key: str, owner: str) -> None:
    """Point ``cache_hook``'s database (if any: lm-eval's ``--use_cache``) at the table for ``key``."""
    db = getattr(cache_hook, "dbdict", None)
    if db is None:
        return  # no cache
    table = f"steered_{key}"
    if getattr(db, "tablename", None) == table:
        return
    from sqlitedict import SqliteDict  # deferred: only with --use_cache

    if not isinstance(db, SqliteDict):
        raise ValueError(f"--use_cache: this lm-eval's cache ({type(db).__name__}) cannot be keyed by the "
                         f"steering settings, so it would return other settings' answers; drop --use_cache")
    db.commit()
    db.conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (key TEXT PRIMARY KEY, value BLOB)')
    db.conn.commit()
    db.tablename = table
    log.info("%s: --use_cache entries keyed by the steering settings (table %s of %s)", owner, table, db.filename)
