"""Load a shipped (or user) JSONL sample as the ``DatasetDict`` a mini task reads.

Task YAML: ``custom_dataset: !function dsteer_eval.metrics.samples.load_sample`` with
``dataset_kwargs: {sample: <file>, split: <split>}``.  A relative ``sample`` is
looked up in the package's ``tasks/`` folder, an absolute one is used as is.
"""

from __future__ import annotations

from pathlib import Path

from dsteer_eval.common.package_files import tasks_dir


def sample_path(sample: str) -> Path:
    path = Path(sample).expanduser()
    if not path.is_absolute():
        path = Path(tasks_dir()) / path
    if not path.is_file():
        raise FileNotFoundError(f"dataset_kwargs.sample={sample!r}: no such file ({path})")
    return path


def load_sample(sample: str | None = None, split: str = "test", **_metadata):
    import datasets  # deferred: datasets loads only for hub data

    if not sample:
        raise ValueError("custom_dataset load_sample needs dataset_kwargs: {sample: <file.jsonl>}")
    path = sample_path(sample)
    return datasets.DatasetDict({split: datasets.Dataset.from_json(str(path))})
