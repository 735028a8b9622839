"""Whether a sweep folder is still being written: its output folder's lock (``<parent>/.<name>.lock``, taken by
``dsteer-eval sweep`` for the life of the run) held by a run that may still be alive, as
:func:`dsteer_eval.common.output_folder.lock_state` decides it (a lock whose process has ended on this host is
stale).  A lock held by this very process is not a running sweep: ``sweep --report`` writes the report under
the lock it held over the finished sweep."""

from __future__ import annotations

import os
import socket

from dsteer_eval.common.output_folder import lock_state


def still_running(folder) -> str | None:
    """``"pid P on HOST, started T"`` of the run that holds ``folder``'s lock, or None."""
    holder = lock_state(folder)
    if holder is None:
        return None
    if not holder:
        return "a run that is still writing its lock"
    if holder.get("host") == socket.gethostname() and str(holder.get("pid")) == str(os.getpid()):
        return None
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
