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

from dsteer_eval.adapters.plugin import tasks_dir
from dsteer_eval.metrics.samples import sample_path


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


# ------------------------------------------------------------------ what defines a task (the resume fingerprint)
def _load_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.load(fh, Loader=_TagTolerantLoader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _local_files(value) -> list[Path]:
    """The local files (or folders) a ``data_files`` / ``dataset_path`` value names."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _local_files(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _local_files(v)]
    if isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
        if path.exists():
            return [path]
    return []


def task_definition_files(names: Iterable[str], task_manager) -> dict[str, dict[str, Path]]:
    """``{task or group: {role: path}}``: every local file that decides a task's documents or scoring: its
    YAML, the templates it ``include:``s (recursively), the ``utils.py`` beside it, and the local data it
    reads (``dataset_kwargs.sample``, ``dataset_kwargs.data_files``, a local ``dataset_path``).  Groups are
    followed to their members.  A hub data set has no local file: its name is in the task config instead."""

    index = task_manager.task_index
    found: dict[str, dict[str, Path]] = {}
    queue = list(names)
    while queue:
        name = queue.pop(0)
        entry = index.get(name) if isinstance(name, str) else None
        if entry is None or name in found:
            continue
        files: dict[str, Path] = {}
        yaml_path = Path(entry.yaml_path) if getattr(entry, "yaml_path", None) else None
        if yaml_path is not None and yaml_path.is_file():
            files["yaml"] = yaml_path
            pending, depth = [yaml_path], 0
            while pending and depth < 16:  # lm-eval's include: a path relative to the including file
                depth += 1
                include = _load_yaml(pending.pop()).get("include")
                for item in include if isinstance(include, list) else [include]:
                    if isinstance(item, str):
                        target = (yaml_path.parent / item) if not Path(item).is_absolute() else Path(item)
                        if target.is_file() and target not in files.values():
                            files[f"include:{item}"] = target
                            pending.append(target)
            utils = yaml_path.parent / "utils.py"
            if utils.is_file():
                files["utils.py"] = utils
        config = getattr(entry, "cfg", None) or {}
        members = config.get("task")
        if isinstance(members, list):  # a group
            queue.extend(m for m in members if isinstance(m, str))
        kwargs = config.get("dataset_kwargs") or {}
        sample = kwargs.get("sample") if isinstance(kwargs, dict) else None
        if isinstance(sample, str):
            try:
                files[f"data:{sample}"] = sample_path(sample)
            except FileNotFoundError:
                pass  # the run itself reports it, naming the task
        for i, path in enumerate(_local_files(kwargs.get("data_files") if isinstance(kwargs, dict) else None)):
            files[f"data_files:{i}:{path.name}"] = path
        for path in _local_files(config.get("dataset_path")):
            files[f"dataset_path:{path.name}"] = path
        found[name] = files
    return found
