"""Win-rate of one set of answers over another, judged pairwise in both orders.

For each prompt the judge sees (A, B) and (B, A); with p1 = P(first better) from
the first order and p2 from the second, P(A wins) = (p1 + (1 - p2)) / 2, which
cancels a judge's position bias.  The win-rate is the mean of P(A wins) over the
prompts both orders could be judged on (failures are counted, not scored).
Answers come from two lm-eval ``--log_samples`` files of the same generation task
(e.g. ``dsteer_geval_mini`` steered vs unsteered), matched by ``doc_id``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from dsteer_eval.metrics import degeneration  # degeneration.degenerate: looked up at call time (tests turn it off)
from dsteer_eval.metrics.judge import pair_prompt


@dataclass
class WinRate:
    criterion: str
    judge: str
    win_rate: float | None
    stderr: float | None
    n: int
    n_failed: int
    per_prompt: list
    n_degenerate: int = 0  # pairs with a degenerate answer on either side: never judged (metrics.degeneration)

    def to_dict(self) -> dict:
        return asdict(self)


def win_rate(judge, requests, answers_a, answers_b, criterion: str = "helpfulness") -> WinRate:
    if not (len(requests) == len(answers_a) == len(answers_b)):
        raise ValueError("win_rate: requests, answers_a and answers_b must have the same length")

    usable = [degeneration.degenerate(a) is None and degeneration.degenerate(b) is None for a, b in zip(answers_a, answers_b)]
    prompts = []
    for request, a, b, ok in zip(requests, answers_a, answers_b, usable):
        if ok:
            prompts += [pair_prompt(criterion, request, a, b), pair_prompt(criterion, request, b, a)]
    judged = iter(judge.prefer_first(prompts) if prompts else [])
    per_prompt = []
    for ok in usable:
        if not ok:
            per_prompt.append(None)
            continue
        ab, ba = next(judged), next(judged)
        if ab.score is None or ba.score is None:
            per_prompt.append(None)
        else:
            per_prompt.append((ab.score + (1.0 - ba.score)) / 2)
    values = [v for v in per_prompt if v is not None]
    n = len(values)
    n_degenerate = len(usable) - sum(usable)
    mean = sum(values) / n if n else None
    stderr = None
    if n > 1:
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        stderr = math.sqrt(var / n)
    return WinRate(criterion, judge.name, mean, stderr, n, len(per_prompt) - n - n_degenerate, per_prompt, n_degenerate)


def read_answers(samples_file) -> dict:
    """``{doc_id: (request, answer)}`` from an lm-eval samples JSONL of a generation task."""
    path = Path(samples_file)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} not found (write it with lm_eval --log_samples)")
    out = {}
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                doc, answer = row["doc"], row["resps"][0][0]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{path}:{line_no}: not an lm-eval sample of a generation task") from None
            request = doc.get("prompt") if isinstance(doc, dict) else None
            if not isinstance(request, str):
                raise ValueError(f"{path}:{line_no}: the doc has no 'prompt' field to judge against")
            out[row["doc_id"]] = (request, answer)
    if not out:
        raise ValueError(f"{path}: no samples")
    return out


def paired_answers(samples_a, samples_b) -> tuple[list, list, list]:
    """``(requests, answers_a, answers_b)`` over the doc_ids both sample files hold."""
    a, b = read_answers(samples_a), read_answers(samples_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"{samples_a} and {samples_b} share no doc_id")
    for doc_id in common:
        if a[doc_id][0] != b[doc_id][0]:
            raise ValueError(f"doc_id {doc_id} has different prompts in the two files: not the same task")
    return [a[d][0] for d in common], [a[d][1] for d in common], [b[d][1] for d in common]


def win_rate_from_samples(judge, samples_a, samples_b, criterion: str = "helpfulness") -> WinRate:
    return win_rate(judge, *paired_answers(samples_a, samples_b), criterion)
