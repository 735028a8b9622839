"""An on-disk cache of text scores (SQLite), so a rerun or a crash never pays twice.

Keys are the SHA-256 of the text within a namespace (the scorer and what it was
asked for); values are floats.  Failures are never cached.  Every batch is
committed as soon as it is scored; SQLite's locking makes it safe for several
processes (accelerate ranks) to share one file.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path


def default_cache_path() -> Path:
    root = os.environ.get("DSTEER_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "dsteer-eval"
    return base / "scores.sqlite"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ScoreCache:
    def __init__(self, path: str | os.PathLike | None = None, namespace: str = "default"):
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.hits = 0
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS scores (namespace TEXT, key TEXT, value REAL, "
                "PRIMARY KEY (namespace, key))"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get_many(self, texts) -> dict[str, float]:
        """``{text: score}`` for the texts already scored in this namespace."""
        wanted = {text_key(t): t for t in texts}
        found: dict[str, float] = {}
        keys = list(wanted)
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = db.execute(
                    f"SELECT key, value FROM scores WHERE namespace = ? AND key IN ({','.join('?' * len(chunk))})",
                    [self.namespace, *chunk],
                ).fetchall()
                for key, value in rows:
                    found[wanted[key]] = float(value)
        self.hits += len(found)
        return found

    def put_many(self, scored: dict[str, float]) -> None:
        if not scored:
            return
        with self._connect() as db:  # commits on exit
            db.executemany(
                "INSERT OR REPLACE INTO scores (namespace, key, value) VALUES (?, ?, ?)",
                [(self.namespace, text_key(t), float(v)) for t, v in scored.items()],
            )
