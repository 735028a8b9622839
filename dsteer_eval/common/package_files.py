"""Where the files shipped inside the package live (found without importing the code around them)."""

from __future__ import annotations

from importlib.util import find_spec


def tasks_dir() -> str:
    """Folder of the YAML tasks and their data (``dsteer_eval.tasks``: the repository's top-level ``tasks/``,
    installed inside the package).

    Found by import spec, not by importing: the lm-eval start-up hook and the metrics that resolve a
    task's relative ``sample`` path use it without loading the adapters."""
    spec = find_spec("dsteer_eval.tasks")
    return list(spec.submodule_search_locations)[0]
