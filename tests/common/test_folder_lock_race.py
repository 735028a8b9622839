"""Two runs that find the same stale lock: exactly one takes it over (issue 33 item 9).

Each child process waits at a barrier, then calls ``folder_lock`` on one output folder whose lock names a
process that has ended. ``_stale`` is slowed down (as on a slow file system) so that every child has judged
the old lock stale before any of them removes it: without an atomic takeover, the later remover deletes the
winner's fresh lock and both runs proceed."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from dsteer_eval.common import output_folder
from dsteer_eval.common.output_folder import OutputFolderError, folder_lock, lock_path, lock_state

CHILDREN = 4


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def child(target, barrier, inside, results):
    slow = output_folder._stale

    def slow_stale(lock, holder):
        why = slow(lock, holder)
        time.sleep(0.3)
        return why

    output_folder._stale = slow_stale
    barrier.wait()
    try:
        with folder_lock(target, "--output", command="test"):
            with inside.get_lock():
                inside.value += 1
                results.append(("in", os.getpid(), inside.value))
            time.sleep(1.0)
            with inside.get_lock():
                inside.value -= 1
    except OutputFolderError as exc:
        results.append(("refused", os.getpid(), str(exc)))


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_two_runs_cannot_both_take_over_one_stale_lock(tmp_path):
    target = tmp_path / "out"
    lock = lock_path(target)
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": "x", "command": "old"}))
    ctx = multiprocessing.get_context("fork")
    barrier, inside = ctx.Barrier(CHILDREN), ctx.Value("i", 0)
    with ctx.Manager() as manager:
        results = manager.list()
        procs = [ctx.Process(target=child, args=(target, barrier, inside, results)) for _ in range(CHILDREN)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        results = list(results)
    entered = [r for r in results if r[0] == "in"]
    assert len(results) == CHILDREN, results
    assert len(entered) == 1, f"{len(entered)} runs took over the same stale lock: {results}"
    assert max(r[2] for r in entered) == 1  # never two inside at once
    assert all("in use by another run" in r[2] for r in results if r[0] == "refused")
    assert not lock.exists()  # the winner removed its lock when done


def test_lock_state_tells_a_live_lock_from_a_stale_one(tmp_path):
    target = tmp_path / "out"
    assert lock_state(target) is None
    with folder_lock(target, "--output", command="sweep x"):
        held = lock_state(target)
        assert held["pid"] == os.getpid() and held["command"] == "sweep x"
    assert lock_state(target) is None
    lock_path(target).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert lock_state(target) is None  # a killed run's lock: not running
