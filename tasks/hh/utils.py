"""Document processing for the HH preference tasks (the pair logic lives in dsteer_eval)."""

from __future__ import annotations

from pathlib import Path

from dsteer_eval.preference_data import split_pair


def process_docs(dataset):
    """Context = shared dialogue up to the final ``Assistant:``; choices = the two final replies."""

    def add_fields(doc):
        split = split_pair(doc.get("chosen"), doc.get("rejected"))
        prompt, good, bad = split if split is not None else ("", "", "")
        return {"prompt": prompt, "chosen_reply": good, "rejected_reply": bad, "same_prefix": split is not None}

    return dataset.map(add_fields).filter(lambda doc: doc["same_prefix"])


def load_mini(**_metadata):
    """The offline sample shipped beside this file, as a ``DatasetDict`` with a test split."""
    import datasets

    path = Path(__file__).with_name("hh_mini.jsonl")
    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(path))})
