"""SHA-256 of files and folders: the one place dsteer-eval hashes file contents.

Two strengths, for two jobs:

* :func:`sha256_file` / :func:`sha256_tree`: every byte.  For what a record must pin exactly
  (input data, an adapter's weights, a vector file): ``sha256_file`` equals ``sha256sum``.
* :func:`file_digest` / :func:`path_digest`: cheap, per file its size and the SHA-256 of its first
  and last MiB (all of a file up to 2 MiB), so that a sweep resume does not read a 500 MB checkpoint
  (:mod:`dsteer_eval.sweep.fingerprint`, which also still exports them).

A folder's digest covers every non-hidden file under it (links followed), by its relative name
(``/``-separated, sorted) and its file digest: a rename is a change, a copy or a ``touch`` is not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

MIB = 1 << 20


def sha256_file(path) -> str:
    """SHA-256 of every byte of the file (as ``sha256sum`` prints it), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path) -> str:
    """SHA-256 over the file's size, its first MiB and its last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}\n".encode())
    with path.open("rb") as fh:
        h.update(fh.read(MIB))
        if size > MIB:
            fh.seek(max(MIB, size - MIB))
            h.update(fh.read(MIB))
    return h.hexdigest()


def tree_files(folder) -> Iterator[tuple[str, Path]]:
    """``(relative name, path)`` of every non-hidden file under ``folder``, sorted, links followed."""
    folder = Path(folder)
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            full = Path(root) / name
            if full.is_file():
                yield full.relative_to(folder).as_posix(), full


def _tree_digest(folder, per_file: Callable[[Path], str]) -> str:
    h = hashlib.sha256(b"folder\n")
    for relative, full in tree_files(folder):
        h.update(f"{relative}\0{per_file(full)}\n".encode())
    return h.hexdigest()


def path_digest(path) -> str:
    """:func:`file_digest` of a file; of a folder, over every non-hidden file under it (sorted names)."""
    return file_digest(path) if Path(path).is_file() else _tree_digest(path, file_digest)


def sha256_tree(path) -> str:
    """:func:`sha256_file` of a file; of a folder, over every non-hidden file's relative name and full SHA-256."""
    return sha256_file(path) if Path(path).is_file() else _tree_digest(path, sha256_file)
