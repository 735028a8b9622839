"""Gradients of the DPO loss with respect to shifts of the hidden states, and their coherence.

* :func:`shift_gradients`      ∂L_DPO/∂(zero shifts of the hidden states): per site, at every position
                               (sequence level) and at the first divergent position, per pair
* :func:`gradient_coherence`   the final-site, sequence-level case of :func:`shift_gradients`
* :func:`coherence_summary`    naive and leave-one-out coherence, cos(−ḡ, v̄), by layer
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from dsteer_eval.data.preference_pairs import PreferencePair
from dsteer_eval.dpo.extract import pad_batch
from dsteer_eval.probes.coherence import iid_expectation_naive, loo_cosines
from dsteer_eval.probes.measures import cosines, summary
from dsteer_eval.steering.hook import adding
from dsteer_eval.steering.sites import resolve_parts


def reply_batch(tokenizer, pairs: Sequence[PreferencePair], max_length: int, device):
    """Rows chosen_0, rejected_0, chosen_1, ...; completion mask marks reply tokens (to predict)."""
    seqs, starts = [], []
    for p in pairs:
        prompt_ids = tokenizer(p.prompt, add_special_tokens=True).input_ids
        for reply in (p.chosen, p.rejected):
            ids = tokenizer(p.prompt + reply, add_special_tokens=True).input_ids
            common = 0
            while common < min(len(ids), len(prompt_ids)) and ids[common] == prompt_ids[common]:
                common += 1
            ids = ids[:max_length]
            if common >= len(ids):
                raise ValueError(
                    f"a prompt fills max_length={max_length} tokens, leaving no reply to score; raise max_length"
                )
            seqs.append(ids)
            starts.append(common)
    ids, attn, last = pad_batch(tokenizer, seqs, device)
    pos = torch.arange(ids.shape[1], device=device)[None, :]
    start = torch.tensor(starts, device=device)[:, None]
    target_mask = (pos >= start) & (pos <= last[:, None])  # tokens that are predicted
    return ids, attn, target_mask


def sequence_logps(logits: torch.Tensor, ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * target_mask[:, 1:]).sum(-1)


FIRST_DIVERGENCE = ("position n − 1 of both sequences of a pair, n the first token index where prompt+chosen and "
                    "prompt+rejected (as tokenised, within max_length) differ: the last shared token, whose state "
                    "predicts the first divergent token")


def fitting_pairs(tokenizer, pairs: Sequence[PreferencePair], max_length: int) -> tuple[list, int]:
    """The pairs whose prompt leaves room for a reply within ``max_length`` tokens, and how many do not."""
    fitting = [p for p in pairs if len(tokenizer(p.prompt, add_special_tokens=True).input_ids) < max_length - 1]
    return fitting, len(pairs) - len(fitting)


def _divergent_positions(ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair (rows 2i, 2i+1): the position n − 1 before the first differing token, and whether one exists."""
    lengths = attn.sum(1).tolist()
    pos, ok = [], []
    for i in range(0, ids.shape[0], 2):
        la, lb = int(lengths[i]), int(lengths[i + 1])
        m = min(la, lb)
        differ = (ids[i, :m] != ids[i + 1, :m]).nonzero()
        n = int(differ[0]) if len(differ) else m
        valid = n >= 1 and not (n == la and n == lb)  # identical sequences: no divergent token
        pos.append(n - 1 if valid else 0)
        ok.append(valid)
    return torch.tensor(pos), torch.tensor(ok)


def shift_gradients(pair, pairs: Sequence[PreferencePair], *, beta: float = 0.1, policy: str = "dpo",
                    sites: Sequence[int] | None = None, max_length: int = 256, batch_size: int = 4,
                    limit: int | None = None, desc: str | None = None) -> dict:
    """Per-pair gradients of the sequence-level DPO loss w.r.t. zero shifts of the hidden states.

    L_i = −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]), π = the ``policy``
    side of ``pair`` ("dpo" or "base"; pass a null pair to take π = the null), π_ref = the base side,
    log π(y) summed over the reply tokens. At every site ℓ in ``sites`` (default: the final site) two
    zero shifts per pair are added to the output of the site's module — the forward pass is unchanged,
    one backward gives every gradient:

    * ``sequence[ℓ]``          s added at every position of the pair's two sequences:
                               g = Σ_t ∂L_i/∂h_{ℓ,t} (both sequences), the direction DPO pushes h_ℓ;
    * ``first_divergence[ℓ]``  s′ added only at the position of :data:`FIRST_DIVERGENCE` in both
                               sequences: g = ∂L_i/∂h_{ℓ,n−1}. At the final site this is exactly
                               −β·σ(−β·m_i)·(W_U[y_w,n] − W_U[y_l,n]) (the two rows share h there), m_i the
                               margin inside σ; when one reply ends at n only the other row contributes.

    Weights are frozen. Pairs whose prompt leaves no room for a reply within ``max_length`` tokens are
    skipped and counted; then the first ``limit`` pairs are used. ``has_divergence[i]`` is False for
    a pair whose two token sequences are identical (its first-divergence gradient is zero).
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    fitting, skipped = fitting_pairs(pair.tokenizer, pairs, max_length)
    pairs = fitting[:limit] if limit is not None else fitting
    if not pairs:
        raise ValueError(f"gradient coherence needs at least one preference pair whose prompt is shorter than "
                         f"max_length={max_length} tokens ({skipped} too long); raise --max-length")
    with pair.side(policy) as model:
        parts = resolve_parts(model)
        sites = [parts.num_layers] if sites is None else sorted(set(int(s) for s in sites))
    seq = {s: [] for s in sites}
    first = {s: [] for s in sites}
    losses, has_div = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc=desc or f"grad ({policy})", leave=False):
        chunk = list(pairs[start : start + batch_size])
        with pair.side("base") as model:
            device = next(model.parameters()).device
            ids, attn, target = reply_batch(pair.tokenizer, chunk, max_length, device)
            with torch.no_grad():
                ref = sequence_logps(model(input_ids=ids, attention_mask=attn).logits, ids, target)
        pos, ok = _divergent_positions(ids.cpu(), attn.cpu())
        row_pair = torch.arange(len(chunk), device=device).repeat_interleave(2)
        at_div = torch.zeros(ids.shape, device=device)
        at_div[torch.arange(ids.shape[0], device=device), pos.to(device).repeat_interleave(2)] = 1.0
        at_div = at_div * ok.to(device).repeat_interleave(2)[:, None]
        with pair.side(policy) as model:
            parts = resolve_parts(model)
            shift = {s: torch.zeros(len(chunk), parts.hidden_size, device=device, requires_grad=True) for s in sites}
            shift_div = {s: torch.zeros(len(chunk), parts.hidden_size, device=device, requires_grad=True)
                         for s in sites}

            frozen = [(p, p.requires_grad) for p in model.parameters()]
            for p, _ in frozen:
                p.requires_grad_(False)
            try:
                with torch.enable_grad(), adding({
                    parts.site_module(s): shift[s][row_pair][:, None, :]
                    + at_div[:, :, None] * shift_div[s][row_pair][:, None, :] for s in sites
                }):
                    logits = model(input_ids=ids, attention_mask=attn).logits
                    pol = sequence_logps(logits, ids, target)
                    ratio = (pol - ref).view(-1, 2)
                    loss = -torch.nn.functional.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1]))
                    loss.sum().backward()
            finally:
                for p, flag in frozen:
                    p.requires_grad_(flag)
        for s in sites:
            seq[s].append(shift[s].grad.detach().float().cpu())
            first[s].append(shift_div[s].grad.detach().float().cpu())
        losses.append(loss.detach().float().cpu())
        has_div.append(ok)
    return {
        "sites": sites,
        "sequence": {s: torch.cat(v) for s, v in seq.items()},
        "first_divergence": {s: torch.cat(v) for s, v in first.items()},
        "has_divergence": torch.cat(has_div),
        "loss": torch.cat(losses),
        "pairs": list(pairs),
        "skipped_prompt_too_long": skipped,
    }


def gradient_coherence(pair, pairs: Sequence[PreferencePair], *, beta: float = 0.1, policy: str = "dpo",
                       max_length: int = 256, batch_size: int = 4, limit: int | None = None) -> dict:
    """Per-pair gradients of the sequence-level DPO loss w.r.t. the final hidden states.

    The loss of pair i is L_i = −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])
    with π = the ``policy`` side ("dpo": the trained model; "base": the start of
    training, where π = π_ref) and π_ref = the base.  g_i = Σ_t ∂L_i/∂h_t over
    every position of both replies' sequences — the gradient w.r.t. one shift
    added to all final hidden states of the pair, i.e. the direction DPO pushes
    the final state.  Weights are frozen.  Returns g (N × d), the naive cos(g_i, ḡ)
    (ḡ includes g_i: see :mod:`dsteer_eval.probes.coherence` for the leave-one-out
    statistic) and the losses.  Pairs whose prompt leaves no room for a reply within
    ``max_length`` tokens are skipped and counted (``skipped_prompt_too_long``);
    then the first ``limit`` pairs are used.  (The final-site, sequence-level
    case of :func:`shift_gradients`.)
    """
    out = shift_gradients(pair, pairs, beta=beta, policy=policy, sites=None, max_length=max_length,
                          batch_size=batch_size, limit=limit)
    g = out["sequence"][out["sites"][0]]
    mean = g.mean(0)
    cos = cosines(g, mean) if mean.norm() > 0 else torch.zeros(len(g), dtype=torch.float64)
    return {"grads": g, "mean": mean, "cos": cos, "loss": out["loss"],
            "skipped_prompt_too_long": out["skipped_prompt_too_long"]}


def coherence_summary(out: dict, vectors: dict[int, torch.Tensor] | None = None, *,
                      by_layer: bool = True) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Summaries of a :func:`shift_gradients` result, and the per-pair leave-one-out cosines at the final
    site (sequence level; first divergence with NaN for pairs without a divergent token).

    Per statistic: the naive cos(gᵢ, ḡ) (ḡ includes gᵢ; i.i.d. floor ≈ 1/√N), the leave-one-out
    cos(gᵢ, ḡ₋ᵢ) (:func:`dsteer_eval.probes.coherence.loo_cosines`; i.i.d. floor 0) and cos(−ḡ, v̄) (DPO moves h
    against its loss gradient). ``by_layer`` adds the same per site (sequence level).
    """
    vectors = vectors or {}
    final = max(out["sites"])

    def stats(g: torch.Tensor, site: int) -> tuple[dict, torch.Tensor]:
        n = len(g)
        mean = g.mean(0)
        naive = cosines(g, mean) if mean.norm() > 0 else torch.zeros(n, dtype=torch.float64)
        loo = loo_cosines(g) if n >= 2 else torch.full((n,), math.nan, dtype=torch.float64)
        v = vectors.get(site)
        entry = {
            "pairs": n,
            "cos": summary(naive),
            "frac_above_0_5": float((naive > 0.5).double().mean()),
            "loo": summary(loo) if n >= 2 else None,
            "loo_frac_above_0_5": float((loo > 0.5).double().mean()) if n >= 2 else None,
            "iid_naive_expectation": iid_expectation_naive(n, g.shape[1]),
            "iid_loo_expectation": 0.0,
            "grad_norm_mean": float(g.double().norm(dim=1).mean()),
        }
        entry["cos_neg_mean_grad_with_v"] = (
            float(cosines(-mean[None], v)[0]) if v is not None and mean.norm() > 0 and v.norm() > 0 else None)
        return entry, loo

    seq, loo_seq = stats(out["sequence"][final], final)
    entry = {"position": "all", "skipped_prompt_too_long": out["skipped_prompt_too_long"],
             "loss_mean": float(out["loss"].mean()), **seq}
    entry["cos_neg_mean_grad_with_v_final"] = entry.pop("cos_neg_mean_grad_with_v")
    ok = out["has_divergence"]
    loo_fd = torch.full((len(ok),), math.nan, dtype=torch.float64)
    if int(ok.sum()) >= 1:
        fd, loo_valid = stats(out["first_divergence"][final][ok], final)
        loo_fd[ok] = loo_valid
        fd["cos_neg_mean_grad_with_v_final"] = fd.pop("cos_neg_mean_grad_with_v")
        entry["first_divergence"] = {"position": "first_divergence", "without_divergence": int((~ok).sum()), **fd}
    else:
        entry["first_divergence"] = {"position": "first_divergence", "pairs": 0, "without_divergence": len(ok)}
    if by_layer:
        rows = []
        for site in out["sites"]:
            s, _ = stats(out["sequence"][site], site)
            rows.append({"layer": site, "loo_mean": s["loo"]["mean"] if s["loo"] else None, "cos_mean": s["cos"]["mean"],
                         "cos_neg_mean_grad_with_v": s["cos_neg_mean_grad_with_v"], "grad_norm_mean": s["grad_norm_mean"]})
        entry["by_layer"] = rows
    return entry, loo_seq, loo_fd
