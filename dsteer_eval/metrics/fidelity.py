"""Fidelity of generations: BLEU and ROUGE-L against reference replies (HH chosen),
and their perplexity under the unsteered model -- the paper's "oversteering" signal.

The reference model is, in order: the evaluated model itself with steering off
(when it is ``--model steered``), ``DSTEER_REFERENCE_MODEL`` (``hf:<path>``), or
the embedded SmolLM2 (labelled).  Per document: ``bleu`` (sacrebleu sentence BLEU,
0-100), ``rougeL`` (rouge-score F1 x 100), ``gen_nll`` (mean NLL per generated
token); corpus: ``perplexity`` = exp(total NLL / total tokens).  An empty
generation gets BLEU = ROUGE-L = 0 and is counted in ``n_empty``; it has no tokens
and so no perplexity.  A generation whose NLL under the reference model is NaN/inf
keeps its BLEU/ROUGE-L (they read only the text) but is counted in ``n_nonfinite``
and left out of ``gen_nll`` and ``perplexity``.
"""

from __future__ import annotations

import math
import os

import torch

from dsteer_eval.dpo.extract import pad_batch
from dsteer_eval.metrics.hh_preference import process_docs
from dsteer_eval.metrics.overlap import bleu_rouge_l
from dsteer_eval.metrics.reference_models import active_steered, load_scoring_model
from dsteer_eval.models.embedded import DEFAULT_MODEL

ENV_REFERENCE = "DSTEER_REFERENCE_MODEL"


def reference_model():
    """``(model, tokenizer, label)`` -- unsteered."""

    spec = os.environ.get(ENV_REFERENCE, "").strip()
    if not spec:
        lm = active_steered()
        if lm is not None:
            return lm.model, lm.tokenizer, f"unsteered:{getattr(lm, 'pretrained_label', 'steered model')}"
    loaded = load_scoring_model(spec or DEFAULT_MODEL)
    return loaded.model, loaded.tokenizer, loaded.label


def continuation_nll(model, tokenizer, contexts, continuations, batch_size: int = 4):
    """``[(nll_sum, n_tokens)]`` of each continuation given its context (context and
    continuation tokenized separately and joined, as lm-eval does; right padding)."""
    device = next(model.parameters()).device
    rows = []
    for ctx, cont in zip(contexts, continuations):
        c = tokenizer.encode(ctx, add_special_tokens=False)
        if not c:
            c = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        rows.append((c, tokenizer.encode(cont, add_special_tokens=False)))
    out = [(0.0, 0)] * len(rows)
    todo = [i for i, (_, t) in enumerate(rows) if t]
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        ids, mask, _last = pad_batch(tokenizer, [rows[i][0] + rows[i][1] for i in idx], device)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for r, i in enumerate(idx):
            n_ctx, cont = len(rows[i][0]), rows[i][1]
            positions = torch.arange(n_ctx - 1, n_ctx - 1 + len(cont), device=logp.device)
            picked = logp[r, positions, torch.tensor(cont, device=logp.device)]
            out[i] = (float(-picked.sum()), len(cont))
    return out


def score_generations(resps, docs):
    """lm-eval filter: adds the reference model's NLL to every generation."""
    model, tokenizer, label = reference_model()
    docs = list(docs)
    texts = [r[0] for r in resps]
    nll = continuation_nll(model, tokenizer, [d["prompt"] for d in docs], texts)
    return [{"text": t, "nll_sum": s, "n_tokens": n, "reference_model": label} for t, (s, n) in zip(texts, nll)]


def process_results(doc, results) -> dict:
    item = results[0]
    if not isinstance(item, dict) or "nll_sum" not in item:
        raise ValueError("fidelity: generations were not scored; the task YAML needs the score_generations filter")
    text, reference = item["text"].strip(), doc["chosen_reply"].strip()
    out = {"reference_model": item["reference_model"], "n_empty": int(not text), "n_nonfinite": 0}
    if not text:
        out.update(bleu=0.0, rougeL=0.0)
        return out
    out.update(bleu_rouge_l(text, reference))
    nll = float(item["nll_sum"])
    if not math.isfinite(nll):
        out["n_nonfinite"] = 1  # no gen_nll, no perplexity: a NaN would poison the corpus value
        return out
    out["gen_nll"] = nll / item["n_tokens"]
    out["perplexity"] = (nll, item["n_tokens"])
    return out


def corpus_perplexity(items) -> float:
    """exp(total NLL / total tokens) over ``(nll_sum, n_tokens)`` items (non-finite ones left out)."""
    items = [(s, n) for s, n in items if math.isfinite(float(s))]
    total = sum(n for _, n in items)
    return math.exp(sum(s for s, _ in items) / total) if total else float("nan")


def fidelity_docs(dataset):
    """HH pairs whose dialogues share the prompt; the chosen reply is the reference."""

    kept = process_docs(dataset).filter(lambda doc: doc["same_prefix"])
    if len(kept) == 0:
        raise ValueError("fidelity: no HH pair has a usable shared prompt")
    return kept
