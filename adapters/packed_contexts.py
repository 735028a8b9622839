"""Log-likelihoods with each context computed once for all of its continuations.

A multiple-choice document asks lm-eval for one log-likelihood per choice, all after the
same context; lm-eval's ``HFLM`` runs ``context + choice`` as a row per choice, so the
context -- most of the tokens -- is computed once per choice (its one-token logits cache
shares it only when every choice is a single token).  Here the requests with the same
context are *packed* into one row: the context once, then each continuation as a branch

    row       = context  + cont_1[:-1] + cont_2[:-1] + ...
    positions = 0 .. n-1 , n .. n+l_1-2 , n .. n+l_2-2 , ...

with a 4-D attention mask in which a branch sees the context and its own earlier tokens
only, never another branch.  Each token then has exactly the inputs, the position and the
visible keys it has in lm-eval's own row, so the numbers are lm-eval's up to float
rounding (tested: max |Δ loglik| <= 1e-4 in float32 on the tiny and the embedded model,
greedy flags identical).  On the refusal task this removes 40 % of the tokens.

Rows follow lm-eval's truncation: a request whose ``context + continuation`` exceeds
``max_length + 1`` tokens is left-truncated exactly as lm-eval does and packed with the
requests whose truncated context is the same (usually none); a packed row never exceeds
``max_length`` (a group that would is split into several rows).  ``--batch_size`` counts
packed rows.  The LM head runs on the continuation span only (:mod:`.continuation_loglik`).

The first packed batch of a run is also computed row by row, unpacked, and compared
(float32: |Δ| <= 1e-4 x max(1, |loglik|); lower precision 2e-2 x): an architecture whose
attention does not honour a custom 4-D mask (or whose positions are not ``position_ids``)
turns packing off for the rest of the run, with a warning, and nothing packed is scored; so does an exception
in the first packed batch (ALiBi models such as Bloom and Falcon build their own bias, not from the mask).

Not packed (lm-eval's row per request, :mod:`.continuation_loglik`): ``pack_contexts=false``;
``position`` other than ``all`` (steering by prompt/completion follows lm-eval's row layout);
``--batch_size auto``; attention implementations other than ``sdpa`` and ``eager`` (flash
attention takes no 4-D mask).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dsteer_eval.steering.hook import NonFiniteError

log = logging.getLogger(__name__)

PACKABLE_ATTENTION = ("sdpa", "eager")


class PassAbandoned(Exception):
    """Raised by a ``call`` that gives up a batched pass itself (the sweep's group check): it passes through the
    first-batch check here instead of counting as a packing failure."""


@dataclass
class PackedRow:
    """One model row: ``tokens`` and their ``positions``; ``branch`` per token (-1: the shared context,
    j: continuation j of the row); ``reads``: per request, ``(request index, row positions whose logits
    score its continuation tokens, the continuation tokens)``."""

    tokens: list[int]
    positions: list[int]
    branch: list[int]
    context_len: int
    reads: list[tuple[int, list[int], list[int]]] = field(default_factory=list)


def _new_row(context: tuple) -> PackedRow:
    return PackedRow(list(context), list(range(len(context))), [-1] * len(context), len(context))


def plan_rows(requests, max_length: int, *, share: bool = True) -> list[PackedRow]:
    """Rows for ``requests`` (lm-eval's ``(cache key, context tokens, continuation tokens)``), in lm-eval's
    truncation; ``share=False``: one row per request, exactly lm-eval's rows."""
    groups: dict[tuple, list[tuple[int, list[int]]]] = {}
    for index, (_, context, continuation) in enumerate(requests):
        if not (len(context) > 0 and 0 < len(continuation) <= max_length):
            raise ValueError(f"log-likelihood request {index}: {len(context)} context and {len(continuation)} "
                             f"continuation tokens (lm-eval needs a context and 1..max_length={max_length} "
                             f"continuation tokens)")
        full = (list(context) + list(continuation))[-(max_length + 1):]
        prefix = tuple(full[:len(full) - len(continuation)])
        key = prefix if share else (index,)
        groups.setdefault(key, []).append((index, list(continuation)))
    rows: list[PackedRow] = []
    for key, members in groups.items():
        prefix = key if share else None
        row = None
        for index, continuation in members:
            if not share:
                _, context, _ = requests[index]
                full = (list(context) + list(continuation))[-(max_length + 1):]
                prefix = tuple(full[:len(full) - len(continuation)])
            branch_len = len(continuation) - 1
            if row is None or (row.reads and len(row.tokens) + branch_len > max_length):
                row = _new_row(prefix)
                rows.append(row)
            n, j, start = row.context_len, len(row.reads), len(row.tokens)
            row.tokens += continuation[:-1]
            row.positions += range(n, n + branch_len)
            row.branch += [j] * branch_len
            row.reads.append((index, [n - 1] + list(range(start, start + branch_len)), continuation))
    return rows


def batch_inputs(rows: list[PackedRow], *, device, mask_kind: str, dtype=torch.float32):
    """Right-padded ``input_ids``, ``position_ids`` and the 4-D attention mask ``[rows, 1, T, T]`` (``bool``,
    True = attend, for sdpa; additive ``dtype`` for eager).  A padding position (never read) attends to the
    context and itself, so no row of the mask is empty."""
    width = max(len(r.tokens) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    branch = torch.empty(len(rows), width, dtype=torch.long)
    pad_ids = -2 - torch.arange(width)  # each padding position its own branch
    for i, row in enumerate(rows):
        n = len(row.tokens)
        ids[i, :n] = torch.tensor(row.tokens)
        positions[i, :n] = torch.tensor(row.positions)
        branch[i] = pad_ids
        branch[i, :n] = torch.tensor(row.branch)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = branch[:, :, None], branch[:, None, :]
    allowed = causal & ((key == -1) | (key == query))
    if mask_kind == "bool":
        mask = allowed[:, None]
    else:
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
    return ids.to(device), positions.to(device), mask.to(device)


def _tolerance(ll: float, dtype) -> float:
    return (1e-4 if dtype in (torch.float32, torch.float64) else 2e-2) * max(1.0, abs(ll))


def packed_loglikelihood_tokens(lm, requests, disable_tqdm: bool = False, *, call, variants: int = 1,
                                checked: dict):
    """The answers (``(sum of log-probs, is greedy)`` per request, in request order; one list per variant
    when ``variants > 1``) with contexts shared, or ``None`` when the first batch's check failed (the caller
    then runs lm-eval's rows).  ``call(ids, keep, prompt_lengths, model_kwargs)`` returns logits
    ``[variants x rows, len(keep), vocab]`` (variant-major); ``checked``: the run's check record (``done``,
    ``max_abs_diff``, ``ok``), filled by the first call."""
    batch = lm.batch_size
    if not isinstance(batch, int) or batch < 1:
        raise ValueError("packed contexts need a whole-number batch size (internal error: checked by the caller)")
    per_batch = max(1, batch // variants)
    mask_kind = "bool" if lm.model.config._attn_implementation == "sdpa" else "float"
    dtype = next(lm.model.parameters()).dtype
    rows = plan_rows(requests, lm.max_length)
    rows.sort(key=lambda r: (-len(r.tokens), r.tokens))
    res: list[list] = [[None] * len(requests) for _ in range(variants)]
    pbar = tqdm(total=len(requests), disable=(disable_tqdm or (lm.rank != 0)),
                desc="Running loglikelihood requests (packed contexts)")
    for start in range(0, len(rows), per_batch):
        chunk = rows[start:start + per_batch]
        if not checked.get("done"):
            checked["done"] = True
            try:
                answers = _run_rows(lm, chunk, call, variants, mask_kind, dtype, packed=True)
            except (NonFiniteError, PassAbandoned):
                raise  # a broken steered state, or the caller's own fallback: not about packing
            except Exception as error:  # noqa: BLE001 - e.g. ALiBi models (Bloom, Falcon) take no packed mask
                checked["max_abs_diff"], checked["ok"], checked["error"] = None, False, repr(error)
                log.warning("packed contexts: the first packed batch failed for this architecture (%s: %s); "
                            "computing one row per request from now on", type(error).__name__, error)
                pbar.close()
                return None
            plain_rows = plan_rows([requests[i] for r in chunk for i, _, _ in r.reads], lm.max_length, share=False)
            order = [i for r in chunk for i, _, _ in r.reads]
            plain = _run_rows(lm, plain_rows, call, variants, mask_kind, dtype, packed=False)
            worst, ok = 0.0, True
            for v in range(variants):
                for local, index in enumerate(order):
                    (a, _), (b, _) = answers[v][index], plain[v][local]
                    worst = max(worst, abs(a - b))
                    ok = ok and abs(a - b) <= _tolerance(b, dtype)
            checked["max_abs_diff"], checked["ok"] = worst, ok
            if not ok:
                log.warning("packed contexts: log-likelihoods differ from unpacked rows by up to %.3g for this "
                            "architecture; computing one row per request from now on", worst)
                pbar.close()
                return None
        else:
            answers = _run_rows(lm, chunk, call, variants, mask_kind, dtype, packed=True)
        for v in range(variants):
            for index, answer in answers[v].items():
                res[v][index] = answer
        for row in chunk:
            for index, _, _ in row.reads:
                if variants == 1 and requests[index][0] is not None:
                    lm.cache_hook.add_partial("loglikelihood", requests[index][0], res[0][index])
            pbar.update(len(row.reads))
    pbar.close()
    return res if variants > 1 else res[0]


def _run_rows(lm, rows, call, variants, mask_kind, dtype, *, packed: bool):
    """``answers[variant][request index]`` for ``rows`` (``packed=False``: lm-eval's plain rows, given to the model
    without a mask or positions)."""
    ids, positions, mask = batch_inputs(rows, device=lm.device, mask_kind=mask_kind, dtype=dtype)
    start = min(r.context_len for r in rows) - 1
    end = max(len(r.tokens) for r in rows)
    keep = torch.arange(start, end, device=ids.device)
    model_kwargs = {"attention_mask": mask, "position_ids": positions} if packed else {}
    logits = call(ids, keep, None, model_kwargs)
    if logits.shape[0] != variants * len(rows) or logits.shape[1] != end - start:
        raise RuntimeError(f"packed contexts: the model returned {tuple(logits.shape[:2])} rows x positions for "
                           f"{variants} x {len(rows)} rows and logits_to_keep of {end - start}")
    answers = [dict() for _ in range(variants)]
    for v in range(variants):
        logp_rows = F.log_softmax(logits[v * len(rows):(v + 1) * len(rows)], dim=-1, dtype=lm.softmax_dtype)
        for row, logp in zip(rows, logp_rows):
            for index, where, continuation in row.reads:
                at = torch.tensor(where, device=logp.device) - start
                picked = logp[at]  # [len(continuation), vocab]
                cont = torch.tensor(continuation, dtype=torch.long, device=logp.device)
                greedy = bool((picked.argmax(dim=-1) == cont).all())
                answer = (float(picked.gather(1, cont[:, None]).sum()), greedy)
                answers[v][index] = answer
    return answers
