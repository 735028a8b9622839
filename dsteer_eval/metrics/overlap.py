"""Word overlap of a text with one reference: sentence BLEU (sacrebleu) and ROUGE-L F1 (rouge-score), both
0–100. Used by the fidelity task (against the HH chosen reply) and by the report's behaviour grid (against
the unsteered reply)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer  # deferred: only when overlap is scored

    return rouge_scorer.RougeScorer(["rougeL"])


def bleu_rouge_l(text: str, reference: str) -> dict:
    """``{"bleu", "rougeL"}`` of ``text`` against ``reference`` (both already stripped and non-empty)."""
    import sacrebleu  # deferred: only when overlap is scored

    return {"bleu": float(sacrebleu.sentence_bleu(text, [reference]).score),
            "rougeL": float(_rouge().score(reference, text)["rougeL"].fmeasure * 100)}
