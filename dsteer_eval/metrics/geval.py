"""The G-Eval task: the evaluated model answers, the judge (:mod:`judge`) scores each answer.

Filter :func:`judge_answers` scores every answer of the task on every criterion in
one pass (one judge, built once per process, never the evaluated model);
:func:`process_results` reports ``geval_<criterion>`` (expected score, 1..5),
``score_mass`` (mean probability the judge put on score tokens), ``n_failed``
(judgements that failed: their criterion is left out, not scored) and ``judge``.
A degenerate answer (empty, garbled, a loop: :mod:`dsteer_eval.metrics.degeneration`) is never
sent to the judge: it is counted in ``n_degenerate`` and has no G-Eval score.
"""

from __future__ import annotations

import logging

from dsteer_eval.metrics.degeneration import degenerate
from dsteer_eval.metrics.judge import CRITERIA, geval_prompt, get_judge

log = logging.getLogger("dsteer_eval.geval")
CRITERIA_USED = tuple(CRITERIA)


def judge_answers(resps, docs):
    judge = get_judge()
    docs = list(docs)
    answers = [r[0] for r in resps]
    reasons = [degenerate(a) for a in answers]
    prompts, where = [], []
    for i, (doc, answer) in enumerate(zip(docs, answers)):
        if reasons[i] is not None:
            continue  # never judged: counted in n_degenerate
        for name in CRITERIA_USED:
            prompts.append(geval_prompt(name, doc["prompt"], answer))
            where.append((i, name))
    judgements = judge.score(prompts) if prompts else []
    out = [{"answer": a, "judge": judge.name, "scores": {}, "mass": {}, "errors": {}, "degenerate": why}
           for a, why in zip(answers, reasons)]
    for (i, name), j in zip(where, judgements):
        out[i]["scores"][name] = j.score
        out[i]["mass"][name] = j.mass
        if j.error:
            out[i]["errors"][name] = j.error
    failed = sum(j.score is None for j in judgements)
    if failed:
        log.warning("G-Eval: %d of %d judgements failed (%s)", failed, len(judgements), judge.name)
    return out


def process_results(doc, results) -> dict:
    item = results[0]
    if not isinstance(item, dict) or "scores" not in item:
        raise ValueError("G-Eval: answers were not judged; the task YAML needs the judge_answers filter")
    out = {"judge": item["judge"], "n_failed": sum(v is None for v in item["scores"].values()),
           "n_degenerate": int(bool(item.get("degenerate")))}
    if item.get("degenerate"):
        return out
    for name, value in item["scores"].items():
        if value is not None:
            out[f"geval_{name}"] = value
    masses = [m for m in item["mass"].values()]
    out["score_mass"] = sum(masses) / len(masses)
    return out


def first_human_turn(doc, index: int = 0) -> dict:
    """An HH dialogue's first ``Human:`` turn as the prompt to answer."""
    text = doc.get("chosen") if isinstance(doc, dict) else None
    if not isinstance(text, str) or "Human:" not in text:
        raise ValueError(f"G-Eval row {index}: needs an HH 'chosen' dialogue with a 'Human:' turn")
    turn = text.split("Human:", 1)[1].split("\n\nAssistant:", 1)[0].strip()
    if not turn:
        raise ValueError(f"G-Eval row {index}: the first Human turn is empty")
    return {"prompt": turn}


def hh_prompts(dataset):
    return dataset.map(first_human_turn, with_indices=True)


def check_prompts(dataset):
    if len(dataset) == 0:
        raise ValueError("the G-Eval prompt set is empty")
    for index, doc in enumerate(dataset):
        if not isinstance(doc.get("prompt"), str) or not doc["prompt"].strip():
            raise ValueError(f"G-Eval row {index}: needs a non-empty string field 'prompt'")
    return dataset
