"""Rolling perplexity of held-out plain text (the ``dsteer_perplexity_hh`` task): Lee et al. 2024 report each
intervention's perplexity on Wikitext-2 beside its toxicity; the offline stand-in is the shipped eval-part HH
dialogues (``tasks/hh/hh_eval.jsonl``, never trained on), scored whole by ``loglikelihood_rolling``.

Per document the task returns its own bits per byte (``doc_bits_per_byte``: a number per document, so paired
differences between two models have a bootstrap CI), and ``(log-likelihood, words)`` and ``(log-likelihood, bytes)``; lm-eval's
``weighted_perplexity`` and ``bits_per_byte`` aggregations pool them over the corpus (as its ``wikitext`` task).
A document whose log-likelihood is not finite is counted in ``n_nonfinite`` and left out of the pooled numbers,
never averaged in."""

from __future__ import annotations

import math
import re

_WORDS = re.compile(r"\S+")


def doc_text(doc: dict) -> str:
    """The text scored: the whole ``chosen`` dialogue of an HH row, or a ``text`` field."""
    text = doc.get("text") if "text" in doc else doc.get("chosen")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"document {doc.get('key', '?')}: no text to score (needs a 'text' or 'chosen' string)")
    return text


def process_results(doc: dict, results) -> dict:
    (loglikelihood,) = results
    loglikelihood = float(loglikelihood[0] if isinstance(loglikelihood, (tuple, list)) else loglikelihood)
    text = doc_text(doc)
    if not math.isfinite(loglikelihood):
        return {"word_perplexity": (0.0, 0), "byte_perplexity": (0.0, 0), "bits_per_byte": (0.0, 0),
                "doc_bits_per_byte": float("nan"), "n_nonfinite": 1}
    words = len(_WORDS.findall(text))
    nbytes = len(text.encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, nbytes),
            "bits_per_byte": (loglikelihood, nbytes),
            "doc_bits_per_byte": -loglikelihood / (nbytes * math.log(2)), "n_nonfinite": 0}
