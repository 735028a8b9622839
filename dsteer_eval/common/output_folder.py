"""Output folders that appear whole or not at all, and never lose finished work.

:func:`staged_folder` yields a temporary folder next to the target; when the
block finishes, the staged folder takes the target's place; when it raises, the
staged folder is deleted and the target is untouched.  A target that is a
symbolic link is followed: the new content goes where the link points and the
link itself survives.  An existing target is first renamed aside and deleted
only once the new content is in place; if the final move fails, the finished
staged folder is kept and the error says where it is.

:func:`check_free` refuses to overwrite a non-empty folder unless asked and, like
:func:`check_writable`, checks that the output can be written before any work
starts.  :func:`atomic_write_bytes` / :func:`atomic_write_text` write one file
whole or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from dsteer_eval.common.redaction import redact

log = logging.getLogger(__name__)


class OutputFolderError(ValueError):
    """The output cannot be written where asked; the message names the flag and the path."""


def resolve_target(target: str | os.PathLike) -> Path:
    """``target`` with every symbolic link followed (also a dangling one: where it points)."""
    return Path(os.path.realpath(Path(target).expanduser()))


def check_writable(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Raise :class:`OutputFolderError` unless ``out`` (a file or folder to be created or replaced)
    can be written: its nearest existing ancestor must be a folder we can create entries in."""
    given = Path(out).expanduser()
    real = resolve_target(given)
    ancestor = real.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputFolderError(f"cannot write {given}: {ancestor} is a file, not a folder ({flag} {out})")
    try:
        probe = tempfile.mkdtemp(prefix=f".{real.name}.writecheck", dir=ancestor)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputFolderError(f"cannot write {given}: {ancestor} is not writable ({reason}) ({flag} {out})") from None
    os.rmdir(probe)
    return given


def check_free(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    out = Path(out).expanduser()
    real = resolve_target(out)
    if real.exists() and not real.is_dir():
        raise OutputFolderError(f"{flag} {out} is a file, not a folder; choose a folder path")
    if real.exists() and any(real.iterdir()) and not overwrite:
        raise OutputFolderError(f"{flag} {out} exists and is not empty; choose a new folder or pass --overwrite")
    check_writable(out, flag)
    return out


@contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    given = Path(target).expanduser()
    real = resolve_target(given)
    real.parent.mkdir(parents=True, exist_ok=True)
    tmp = real.with_name(f".{real.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, real, given)


def _swap_in(tmp: Path, real: Path, given: Path) -> None:
    """Move the finished ``tmp`` to ``real``; the old ``real`` goes aside first and is deleted last."""
    aside = None
    if real.exists() or real.is_symlink():
        aside = real.with_name(f".{real.name}.old{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(real, aside)
        except OSError as exc:
            raise OutputFolderError(
                f"cannot replace {given}: moving the old content aside failed ({exc.strerror or exc}); "
                f"the finished output is kept in {tmp}"
            ) from None
    try:
        os.replace(tmp, real)
    except OSError as exc:
        restored = ""
        if aside is not None:
            try:
                os.replace(aside, real)
                restored = f"; the previous {given} is unchanged"
            except OSError:
                restored = f"; the previous content of {given} is in {aside}"
        raise OutputFolderError(
            f"cannot move the finished output into {given} ({exc.strerror or exc}): it is kept in {tmp}{restored}"
        ) from None
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
        if aside.exists():
            log.warning("could not delete the replaced output %s; delete it by hand", aside)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed onto ``path`` with ``os.replace`` when the block
    ends without an error, removed otherwise: the file is whole or not there at all.

    A ``path`` that is a symbolic link is followed: the file it points to is replaced, the link stays."""
    real = resolve_target(Path(path))
    real.parent.mkdir(parents=True, exist_ok=True)
    tmp = real.with_name(f".{real.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, real)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------ one run per output folder
LOCK_STALE_UNREADABLE_S = 30.0  # a lock file that never got its holder written (the writer died at once)


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of an output folder: a hidden sibling of the folder the target resolves to, so that it
    exists before the folder does and survives ``--overwrite`` emptying it."""
    real = resolve_target(target)
    return real.parent / f".{real.name}.lock"


def _holder(lock: Path) -> dict | None:
    try:
        found = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # someone else's live process, or a pid we cannot judge: never taken over
    return True


def _stale(lock: Path, holder: dict | None) -> str | None:
    """Why ``lock`` belongs to no live run (its reason), or None when a run may still hold it."""

    if holder is None:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        return f"it names no holder and is {age:.0f} s old" if age > LOCK_STALE_UNREADABLE_S else None
    if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
        return f"its process {holder.get('pid')} on this host has ended"
    return None


@contextmanager
def takeover_guard(lock: Path) -> Iterator[None]:
    """An exclusive ``flock`` (filelock: fcntl on POSIX, msvcrt on Windows) on ``<lock>.guard`` for the short
    check-and-create of :func:`folder_lock`; the guard file is never removed, so every process locks the same
    inode. Held for milliseconds, never for the run."""
    with FileLock(str(lock) + ".guard", timeout=60):
        yield


def lock_state(target: str | os.PathLike) -> dict | None:
    """The holder of ``target``'s lock when a run may still hold it (a live or unreadable-but-fresh lock), else
    None (no lock, or a stale one): what a reader uses to say "still running"."""
    lock = lock_path(target)
    if not lock.exists():
        return None
    holder = _holder(lock)
    return None if _stale(lock, holder) is not None else (holder or {})


@contextmanager
def folder_lock(target: str | os.PathLike, flag: str = "--output", command: str | None = None) -> Iterator[Path]:
    """Hold ``target`` for one run: a second run into the same folder is refused with the holder named.

    The lock is created with ``O_CREAT | O_EXCL`` (one winner, also across processes) and records the
    holder's pid, host, start time and command; a lock whose process has ended on this host (a killed
    run) is taken over with a warning. Deciding that a lock is stale, removing it and creating the new one
    happen under an exclusive ``flock`` on a guard file beside it (:func:`takeover_guard`), so two runs that
    both see the same stale lock cannot both take it over (the later one would delete the winner's fresh
    lock). It is removed when the block ends."""

    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "command": redact(command if command is not None else " ".join(sys.argv))}
    with takeover_guard(lock):
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(lock)
                why = _stale(lock, holder)
                if why is None:
                    who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
                           f"{holder.get('command')}") if holder else "a run that is still writing its lock"
                    raise OutputFolderError(
                        f"{flag} {target} is in use by another run ({who}); wait for it to finish or choose "
                        f"another {flag}. If that run is gone, delete {lock}") from None
                log.warning("%s %s: taking over the lock %s of a run that is gone (%s)", flag, target, lock, why)
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me))
            break
        else:
            raise OutputFolderError(f"{flag} {target}: could not take the lock {lock}; delete it if no run holds it")
    try:
        yield lock
    finally:
        if (_holder(lock) or {}).get("pid") == me["pid"]:
            lock.unlink(missing_ok=True)


def empty_folder(target: str | os.PathLike) -> Path:
    """Remove everything inside the folder ``target`` points at (a symbolic link is followed and kept)."""
    real = resolve_target(target)
    if real.is_dir():
        for entry in real.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return real
