"""The held-out refusal phrasings: written apart from the training templates, swapped into the same eval-part
documents by dsteer_refusal_ll_heldout and nothing else changed."""

from __future__ import annotations

import re

from dsteer_eval.data.refusal_set import HELDOUT_REFUSALS, REFUSALS, heldout_refusal_for


def _grams(text: str, n: int = 4) -> set:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_no_heldout_phrasing_shares_a_word_4gram_with_a_training_one():
    train = set().union(*(_grams(t) for t in REFUSALS))
    for phrase in HELDOUT_REFUSALS:
        assert not (_grams(phrase) & train), phrase
    assert len(set(HELDOUT_REFUSALS)) == len(HELDOUT_REFUSALS) == 8 and not set(HELDOUT_REFUSALS) & set(REFUSALS)


def test_the_heldout_task_swaps_only_the_refusal_replies():
    from lm_eval.tasks import get_task_dict

    from dsteer_eval.sweep.plan import task_manager_for  # one index per process (seconds each)

    manager = task_manager_for()
    tasks = get_task_dict(["dsteer_refusal_ll", "dsteer_refusal_ll_heldout"], manager)
    train, held = (list(tasks[name].test_docs()) for name in ("dsteer_refusal_ll", "dsteer_refusal_ll_heldout"))
    assert len(train) == len(held) == 321
    used = set()
    for a, b in zip(train, held):
        assert (a["key"], a["prompt"], a["kind"]) == (b["key"], b["prompt"], b["kind"])
        field, other = ("chosen", "rejected") if a["kind"] == "harmful" else ("rejected", "chosen")
        assert a[field] in REFUSALS and b[field] == heldout_refusal_for(a["prompt"]) and b[other] == a[other]
        used.add(b[field])
    assert used == set(HELDOUT_REFUSALS)  # every held-out phrasing is used


def test_the_balanced_and_selection_tasks_load_their_documents():
    from lm_eval.tasks import get_task_dict

    from dsteer_eval.sweep.plan import task_manager_for  # one index per process (seconds each)

    names = ["dsteer_refusal_ll", "dsteer_refusal_balanced", "dsteer_refusal_ll_balanced", "dsteer_refusal_ll_select"]
    tasks = get_task_dict(names, task_manager_for())
    docs = {name: list(tasks[name].test_docs()) for name in names}
    assert sorted(d["key"] for d in docs["dsteer_refusal_ll_balanced"]) == sorted(d["key"] for d in docs["dsteer_refusal_ll"])
    assert [d["key"] for d in docs["dsteer_refusal_balanced"]] == [d["key"] for d in docs["dsteer_refusal_ll_balanced"]]
    assert [d["kind"] for d in docs["dsteer_refusal_balanced"][:4]] == ["harmful", "harmless", "harmful", "harmless"]
    assert len(docs["dsteer_refusal_ll_select"]) == 82
    assert not {d["key"] for d in docs["dsteer_refusal_ll_select"]} & {d["key"] for d in docs["dsteer_refusal_ll"]}
