"""The conditioned subset: the documents where the base and the DPO model actually differ.

Fixed by the two unsteered models alone (never by a steered point), from their lm-eval per-sample
outputs (``--log_samples`` records, matched by ``doc_id``):

* generation tasks (a response is text): the two generations differ (after lm-eval's filters);
* log-likelihood tasks (a response is ``[loglik, is_greedy]`` per choice): the argmax choice differs,
  or some margin between two choices, ll_i − ll_j, moved by more than ``EPSILON`` nats
  (max Δll − min Δll > ε, Δll the per-choice change: a shift of every choice by the same amount is
  not a preference; for two choices this is |Δ margin| > ε); with a single continuation, its
  log-likelihood itself moved by more than ε.

A DPO effect can only be restored or reproduced where there is one, so the leaderboard reports every
paired statistic on the full set and on this subset side by side.
"""

from __future__ import annotations

EPSILON = 0.1  # nats


def _loglikelihoods(resps) -> list[float] | None:
    """[loglik per choice] from a sample's filtered_resps, or None when they are not log-likelihoods."""
    try:
        values = [r[0] if isinstance(r, (list, tuple)) else r for r in resps]
        return [float(v) for v in values] if values and all(isinstance(v, (int, float)) for v in values) else None
    except (TypeError, IndexError):
        return None


def differs(base_resps, dpo_resps, epsilon: float = EPSILON) -> bool:
    """Whether one document's base and DPO responses differ by the rule above."""
    a, b = _loglikelihoods(base_resps), _loglikelihoods(dpo_resps)
    if a is None or b is None or len(a) != len(b):
        return [str(r) for r in base_resps] != [str(r) for r in dpo_resps]
    if len(a) > 1 and max(range(len(a)), key=a.__getitem__) != max(range(len(b)), key=b.__getitem__):
        return True
    change = [y - x for x, y in zip(a, b)]
    if len(change) == 1:  # one continuation: its log-likelihood itself is the margin
        return abs(change[0]) > epsilon
    return max(change) - min(change) > epsilon


def conditioned_docs(base: dict, dpo: dict, epsilon: float = EPSILON) -> set:
    """doc_ids where base and DPO differ; ``base``/``dpo`` map doc_id -> filtered_resps."""
    return {doc for doc in set(base) & set(dpo) if differs(base[doc], dpo[doc], epsilon)}
