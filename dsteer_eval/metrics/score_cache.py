"""An on-disk cache of text scores (SQLite), so a rerun or a crash never pays twice.

Keys are the SHA-256 of the text within a namespace (the scorer and what it was
asked for); values are floats.  Failures are never cached.  Every batch is
committed as soon as it is scored; SQLite's locking makes it safe for several
processes (accelerate ranks) to share one file.

The cache is only a saving, so it never stops a run:

* a corrupt file (not a database, a malformed image) is renamed aside to
  ``<path>.corrupt-<timestamp>-<pid>[-n]`` (with its ``-journal``/``-wal``/``-shm``
  files) with a warning naming both paths, and a fresh cache takes its place;
* any other SQLite error (locked past the timeout, disk full, read-only) is
  logged as a warning naming the file, and that lookup is a miss / that write is
  skipped (the scores still reach the task; a rerun pays for them again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("dsteer_eval.toxicity")

_SIDE_FILES = ("-journal", "-wal", "-shm")


def default_cache_path() -> Path:
    root = os.environ.get("DSTEER_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "dsteer-eval"
    return base / "scores.sqlite"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_corruption(exc: sqlite3.Error) -> bool:
    """A damaged file (as opposed to a busy, full or read-only one)."""
    if isinstance(exc, sqlite3.OperationalError):
        return False
    if isinstance(exc, sqlite3.DatabaseError):
        return True
    return False


class ScoreCache:
    def __init__(self, path: str | os.PathLike | None = None, namespace: str = "default"):
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.hits = 0
        self.set_aside: list[Path] = []  # corrupt files moved away by this cache
        self._run(self._create, None)

    @contextmanager
    def _connect(self):
        """A connection that commits on success and is closed either way."""
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:  # commit / rollback
                yield db
        finally:
            db.close()

    def _create(self) -> None:
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS scores (namespace TEXT, key TEXT, value REAL, "
                "PRIMARY KEY (namespace, key))"
            )

    def _still_corrupt(self) -> bool:
        """Check the file at ``self.path`` again: another process may have replaced it already."""
        if not self.path.exists():
            return False
        try:
            with self._connect() as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return db.execute("PRAGMA quick_check").fetchone()[0] != "ok"
        except sqlite3.Error as exc:
            return _is_corruption(exc)

    def _set_aside(self, exc: sqlite3.Error) -> None:
        if not self._still_corrupt():
            return
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for n in range(2, 1000):  # never overwrite an earlier one
            if not target.exists():
                break
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            os.replace(self.path, target)
        except FileNotFoundError:  # another process moved it first
            return
        for suffix in _SIDE_FILES:
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                try:
                    os.replace(side, target.with_name(target.name + suffix))
                except OSError:
                    pass
        self.set_aside.append(target)
        log.warning("score cache %s is corrupt (%s); moved it to %s and started a fresh cache there",
                    self.path, exc, target)

    def _run(self, action, fallback):
        """``action()``; a corrupt file is set aside and ``action`` retried on a fresh one; any other
        SQLite error is a warning naming the file, and ``fallback`` is returned."""
        for attempt in range(2):
            try:
                return action()
            except sqlite3.Error as exc:
                if attempt == 0 and _is_corruption(exc):
                    self._set_aside(exc)
                    try:
                        self._create()
                    except sqlite3.Error:
                        pass  # reported by the retry below
                    continue
                log.warning("score cache %s unusable (%s: %s); going on without it for this call",
                            self.path, type(exc).__name__, exc)
                return fallback
        return fallback  # pragma: no cover

    def get_many(self, texts) -> dict[str, float]:
        """``{text: score}`` for the texts already scored in this namespace."""
        wanted = {text_key(t): t for t in texts}

        def lookup() -> dict[str, float]:
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
            return found

        found = self._run(lookup, {})
        self.hits += len(found)
        return found

    def put_many(self, scored: dict[str, float]) -> None:
        if not scored:
            return

        def write() -> None:
            with self._connect() as db:  # commits on exit
                db.executemany(
                    "INSERT OR REPLACE INTO scores (namespace, key, value) VALUES (?, ?, ?)",
                    [(self.namespace, text_key(t), float(v)) for t, v in scored.items()],
                )

        self._run(write, None)
