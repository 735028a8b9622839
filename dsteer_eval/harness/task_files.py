"""The shipped data file behind each of our lm-eval tasks, so a run can record what it read.

Our task YAMLs (``tasks/``) name their rows with ``dataset_kwargs.sample: <family>/<file>.jsonl``
(read by :func:`dsteer_eval.metrics.samples.load_sample`); a group YAML lists its tasks under
``task:``. :func:`task_data_files` resolves task and group names to those files; tasks that are not
ours (lm-eval's own, read from a hub) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml


class _TagTolerantLoader(yaml.SafeLoader):
    """A safe loader that reads lm-eval's ``!function`` tags as plain strings (nothing is imported)."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: str(getattr(node, "value", "")))


def _configs(root: Path) -> list[dict]:
    found = []
    for path in sorted(root.rglob("*.yaml")):
        with open(path, encoding="utf-8") as fh:
            config = yaml.load(fh, Loader=_TagTolerantLoader)  # noqa: S506 - a SafeLoader subclass
        if isinstance(config, dict):
            found.append(config)
    return found


def task_data_files(names: Iterable[str], root: str | Path | None = None) -> dict[str, Path]:
    """``{task: data file}`` for the named tasks and the members of the named groups (ours only)."""
    from dsteer_eval.harness.plugin import tasks_dir

    root = Path(root or tasks_dir())
    configs = _configs(root)
    wanted, queue = set(), list(names)
    while queue:
        name = queue.pop()
        if name in wanted:
            continue
        wanted.add(name)
        for config in configs:
            members = config.get("task")
            if config.get("group") == name and isinstance(members, list):
                queue.extend(m for m in members if isinstance(m, str))
    files = {}
    for config in configs:
        task, sample = config.get("task"), (config.get("dataset_kwargs") or {}).get("sample")
        if isinstance(task, str) and task in wanted and isinstance(sample, str) and (root / sample).is_file():
            files[task] = root / sample
    return dict(sorted(files.items()))
