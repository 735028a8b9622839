"""Where the files shipped inside the package live (found without importing the code around them)."""

from __future__ import annotations

from importlib.util import find_spec


def tasks_dir() -> str:
    """Folder of the YAML tasks and their data shipped in the package (``dsteer_eval.harness.tasks``).

    Found by import spec, not by importing: the lm-eval start-up hook and the metrics that resolve a
    task's relative ``sample`` path use it without loading the harness."""
    spec = find_spec("dsteer_eval.harness.tasks")
    return list(spec.submodule_search_locations)[0]
