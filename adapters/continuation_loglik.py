"""Log-likelihoods with the LM head applied only where lm-eval reads it.

lm-eval's ``HFLM._loglikelihood_tokens`` projects *every* position of a batch through
the LM head and takes a full-vocabulary log-softmax over all of them, then keeps the
continuation positions of each row.  :func:`loglikelihood_tokens` is the same loop --
the same :class:`~lm_eval.models.utils.Collator` (request order, ``logits_cache``
one-token-continuation groups, ``--batch_size`` and ``auto`` batch scheduling), the same
left truncation and right padding, the same ``(sum of log-probs, is greedy)`` answers and
partial-cache writes -- but the model is called with ``logits_to_keep`` set to the span
of positions that hold some row's continuation (the smallest continuation start to the
largest end over the batch), so the head and the log-softmax run on that span only.

The numbers equal lm-eval's up to float rounding of the smaller head matmul (tested:
max |Δ loglik| <= 1e-5 in float32 against ``--model hf``, greedy flags identical).

Falls back to lm-eval's own loop (``head_positions=all`` does so on purpose):

* a seq2seq backend;
* a model whose ``forward`` takes no ``logits_to_keep`` (most transformers causal LMs
  take it; custom ``trust_remote_code`` models may not).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

from dsteer_eval.steering.sites import unwrap


def takes_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` (through a PEFT wrapper) accepts ``logits_to_keep``."""

    try:
        params = inspect.signature(unwrap(model).forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params


def kept_span(inplens, contlens) -> tuple[int, int]:
    """``(start, end)``: the positions (of the right-padded batch) whose logits some row reads."""
    return min(i - c for i, c in zip(inplens, contlens)), max(inplens)


def loglikelihood_tokens(lm, requests, disable_tqdm: bool = False, override_bs=None, *, call, variants: int = 1):
    """lm-eval's causal ``_loglikelihood_tokens`` with the head on the continuation span only.

    ``call(batched_inps, keep, prompt_lengths)`` returns logits ``[batch, len(keep), vocab]`` for the
    positions ``keep`` (a 1-D tensor); ``prompt_lengths`` are the rows' prompt lengths (tokens before
    the first continuation token's input position), for steering at ``position=prompt|completion``.

    ``variants=K > 1``: ``call`` returns ``K x batch`` rows, variant-major (the same inputs under K
    steering settings, :mod:`dsteer_eval.sweep.alpha_batch`); the result is one answer list per
    variant.  Then ``--batch_size`` counts rows (``batch_size // K`` requests a chunk; ``auto`` is not
    supported) and lm-eval's one-token logits cache is not used (every request is its own row: the
    same numbers, computed rather than copied).
    """

    def _collate(req):
        toks = req[1] + req[2]
        return -len(toks), tuple(toks)

    def _lookup_one_token_cont(req):
        return req[-2] + req[-1][:-1]

    multi = variants > 1
    res = [[] for _ in range(variants)]
    re_ord = Collator(requests, sort_fn=_collate,
                      group_by="contexts" if lm.logits_cache and not multi else None, group_fn=_lookup_one_token_cont)
    n_reordered = len(re_ord)
    batch_size = lm.batch_size if lm.batch_size != "auto" else override_bs if override_bs is not None else 0
    batch_fn = lm._batch_scheduler if lm.batch_size == "auto" and n_reordered > 0 and not override_bs else None
    if multi:
        if batch_fn is not None or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("several steering variants in one batch need a whole-number batch size (not auto)")
        batch_size = max(1, batch_size // variants)
    if batch_fn is not None:
        lm.batch_sizes = {}  # as lm-eval: re-detect for this set of requests
    pbar = tqdm(total=len(requests), disable=(disable_tqdm or (lm.rank != 0)), desc="Running loglikelihood requests")
    for chunk in re_ord.get_batched(n=batch_size, batch_fn=batch_fn):
        inps, cont_toks_list, inplens = [], [], []
        for _, context_enc, continuation_enc in chunk:
            assert len(context_enc) > 0 and 0 < len(continuation_enc) <= lm.max_length
            inp = torch.tensor((context_enc + continuation_enc)[-(lm.max_length + 1):][:-1], dtype=torch.long,
                               device=lm.device)
            inps.append(inp)
            cont_toks_list.append(continuation_enc)
            inplens.append(inp.shape[0])
        padding_len = max(inplens)
        batched = pad_and_concat(padding_len, inps, padding_side="right")
        contlens = [len(c) for c in cont_toks_list]
        start, end = kept_span(inplens, contlens)
        keep = torch.arange(start, end, device=batched.device)
        prompt_lengths = torch.tensor([i - (c - 1) for i, c in zip(inplens, contlens)], dtype=torch.long)
        logits = call(batched, keep, prompt_lengths)
        if logits.shape[1] != end - start or logits.shape[0] != variants * len(chunk):
            raise RuntimeError(f"continuation head: the model returned {tuple(logits.shape[:2])} rows x positions "
                               f"for {variants} x {len(chunk)} rows and logits_to_keep of {end - start} "
                               f"(use head_positions=all)")
        for variant in range(variants):
            rows = logits[variant * len(chunk):(variant + 1) * len(chunk)]
            multi_logp = F.log_softmax(rows, dim=-1, dtype=lm.softmax_dtype)
            for (request_str, ctx_tokens, _), logp, inplen, cont_toks in zip(chunk, multi_logp, inplens,
                                                                             cont_toks_list, strict=True):
                contlen = len(cont_toks)
                logp = logp[inplen - contlen - start: inplen - start].unsqueeze(0)  # [1, contlen, vocab]
                greedy_tokens = logp.argmax(dim=-1)
                for request_str, cont_toks, logp in re_ord.get_cache(req_str=request_str, cxt_toks=ctx_tokens,
                                                                     cont_toks=cont_toks, logits=logp):
                    cont = torch.tensor(cont_toks, dtype=torch.long, device=lm.device).unsqueeze(0)
                    max_equal = (greedy_tokens[:, -cont.shape[1]:] == cont).all()
                    picked = torch.gather(logp, 2, cont.unsqueeze(-1)).squeeze(-1)
                    answer = (float(picked.sum()), bool(max_equal))
                    res[variant].append(answer)
                    if request_str is not None and not multi:
                        lm.cache_hook.add_partial("loglikelihood", request_str, answer)
                    if variant == 0:
                        pbar.update(1)
    pbar.close()
    if multi:
        return [re_ord.get_original(r) for r in res]
    return re_ord.get_original(res[0])
