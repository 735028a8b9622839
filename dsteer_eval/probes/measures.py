"""The D-STEER probes on a base/DPO pair (see ``dsteer_eval.probes.report`` for the report).

Every function takes a :class:`~dsteer_eval.dpo.model_pair.ModelPair` (or the
states already computed from one) and returns plain numbers/tensors:

* :func:`projection_margins`   ⟨h, v̂⟩ for base and DPO per layer, and the shift
* :func:`logit_margins`        ⟨h_final, Δe⟩ at each pair's first divergent token
* :func:`content_divergences`    the pairs whose first divergent tokens are both content tokens
* :func:`directional_consistency`  cos(δ_i, v̄) per prompt
* :func:`shift_gradients`      ∂L_DPO/∂(zero shifts of the hidden states): per site, at every position
                               (sequence level) and at the first divergent position, per pair
* :func:`gradient_coherence`   the final-site, sequence-level case of :func:`shift_gradients`
* :func:`layer_spectra`        spectra of ΔH (uncentred and centred), H_base, H_dpo per layer
* :func:`steering_identity`    next-token KL restoration / reproduction over α (mean over prompts)
* :func:`identity_kl`          the same KLs per prompt at one α (for paired verdicts)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from dsteer_eval.dpo.extract import Divergence, PairStates, context_limit, divergences, pad_batch, unembedding
from dsteer_eval.steering.sites import resolve_parts, unwrap
from dsteer_eval.data.preference_pairs import PreferencePair
from dsteer_eval.probes.spectra import effective_rank, spectral_entropy, spectrum, singular_values
from dsteer_eval.steering.hook import Intervention, adding, steer


def summary(values: torch.Tensor) -> dict:
    """n, mean, stderr, median, std, 10th/90th percentiles, fraction > 0."""
    x = values.detach().double().flatten().cpu()
    n = x.numel()
    if n == 0:
        raise ValueError("no values to summarise")
    std = float(x.std(unbiased=True)) if n > 1 else 0.0
    return {
        "n": n,
        "mean": float(x.mean()),
        "stderr": std / math.sqrt(n) if n > 1 else None,
        "median": float(x.median()),
        "std": std,
        "q10": float(x.quantile(0.1)),
        "q90": float(x.quantile(0.9)),
        "frac_positive": float((x > 0).double().mean()),
    }


def _unit(v: torch.Tensor) -> torch.Tensor:
    norm = v.norm()
    if norm == 0:
        raise ValueError("the steering vector is zero: it has no direction to project on")
    return v / norm


# ----------------------------------------------------------- projections
def projection_margins(states: PairStates, vectors: dict[int, torch.Tensor]) -> list[dict]:
    """Per layer: ⟨h_base, v̂⟩, ⟨h_dpo, v̂⟩ and their difference (v̂ = v̄/|v̄|), summarised."""
    out = []
    for site, v in sorted(vectors.items()):
        if float(v.norm()) == 0.0:  # e.g. the embeddings, which a LoRA on linear layers never changes
            out.append({"layer": site, "vector_is_zero": True})
            continue
        u = _unit(v.float())
        base = states.base[:, site] @ u
        dpo = states.dpo[:, site] @ u
        shift = dpo - base
        out.append({
            "layer": site,
            "base": summary(base),
            "dpo": summary(dpo),
            "shift": summary(shift),
            "frac_rose": float((shift > 0).double().mean()),
        })
    return out


def _final_states_at(model, tokenizer, prefixes: Sequence[Sequence[int]], batch_size: int) -> torch.Tensor:
    """Final (post-norm) hidden state at the last token of each token prefix: ``(N, d)``."""
    parts = resolve_parts(model)
    device = next(model.parameters()).device
    limit = context_limit(model, tokenizer)  # a longer prefix keeps its last tokens (the one read is the last)
    rows = []
    for start in range(0, len(prefixes), batch_size):
        ids, mask, last = pad_batch(tokenizer, prefixes[start : start + batch_size], device, max_length=limit)
        with torch.no_grad():
            h = parts.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        rows.append(h[torch.arange(len(last), device=device), last].float().cpu())
    return torch.cat(rows)


def logit_margins(pair, found: Sequence[Divergence], *, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per pair: logit(y_w) − logit(y_l) = ⟨h, Δe⟩ at the first divergent token, base and DPO."""
    if not found:
        raise ValueError("no preference pair with a divergent token")
    prefixes = [d.prefix for d in found]
    out = {}
    for which in ("base", "dpo"):
        with pair.side(which) as model:
            h = _final_states_at(model, pair.tokenizer, prefixes, batch_size)
            w = unembedding(model).cpu()
            bias = getattr(resolve_parts(model).lm_head, "bias", None)
        delta_e = w[[d.chosen_token for d in found]] - w[[d.rejected_token for d in found]]
        margin = (h * delta_e).sum(-1)
        if bias is not None:
            b = bias.detach().float().cpu()
            margin = margin + b[[d.chosen_token for d in found]] - b[[d.rejected_token for d in found]]
        out[which] = margin
    out["shift"] = out["dpo"] - out["base"]
    return out


CONTENT_RULE = ("a pair counts when both of its first divergent tokens (chosen and rejected) decode to text with "
                "at least one letter or digit (str.isalnum on some character) and neither is a special token "
                "(EOS standing in for an ended reply is not content); other pairs (divergence at whitespace or "
                "punctuation such as the template's ':' or ' ') are left out and counted")


def is_content_token(tokenizer, token: int) -> bool:
    """A token whose decoded text holds a letter or digit and which is not a special token."""
    if token in set(getattr(tokenizer, "all_special_ids", []) or []):
        return False
    return any(ch.isalnum() for ch in tokenizer.decode([token]))


def content_divergences(tokenizer, found: Sequence[Divergence]) -> tuple[list[Divergence], list[int]]:
    """The divergences whose chosen and rejected tokens are both content tokens (:data:`CONTENT_RULE`),
    and the indices (into ``found``) of those kept."""
    kept = [i for i, d in enumerate(found)
            if is_content_token(tokenizer, d.chosen_token) and is_content_token(tokenizer, d.rejected_token)]
    return [found[i] for i in kept], kept


# ----------------------------------------------------------- consistency
def cosines(rows: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """cos(row_i, direction) for every row (rows of norm 0 give 0)."""
    u = _unit(direction.double())
    r = rows.double()
    norms = r.norm(dim=-1)
    return torch.where(norms > 0, (r @ u) / norms.clamp(min=1e-300), torch.zeros_like(norms))


def directional_consistency(delta: torch.Tensor, v: torch.Tensor, *, bins: int = 20) -> dict:
    """cos(δ_i, v̄): summary, fraction > 0.5 and a histogram on [-1, 1]."""
    cos = cosines(delta, v)
    counts = torch.histc(cos.float(), bins=bins, min=-1.0, max=1.0)
    return {
        "cos": summary(cos),
        "frac_above_0_5": float((cos > 0.5).double().mean()),
        "histogram": {"edges": torch.linspace(-1, 1, bins + 1).tolist(), "counts": [int(c) for c in counts]},
        "values": cos.tolist(),
    }


# -------------------------------------------------------------- gradients
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


# ---------------------------------------------------------------- spectra
def delta_spectrum(matrix: torch.Tensor, direction: torch.Tensor | None, centred: bool) -> dict | None:
    """:func:`~dsteer_eval.probes.spectra.spectrum`, or None for a zero matrix (e.g. one row, centred)."""
    if direction is not None and float(direction.norm()) == 0.0:
        direction = None
    try:
        return spectrum(matrix, direction=direction, centred=centred)
    except ValueError:
        return None


def state_spectrum(h: torch.Tensor) -> dict:
    """Spectral entropy (σ² shares) and Roy & Vetterli effective rank (σ shares) of states H, uncentred and
    centred (column means removed)."""
    out = {}
    for suffix, centred in (("", False), ("_centred", True)):
        m = h.double() - h.double().mean(0, keepdim=True) if centred else h.double()
        if float(m.abs().max()) == 0.0:
            out[f"spectral_entropy{suffix}"] = out[f"effective_rank{suffix}"] = None
            continue
        sv = singular_values(m)
        out[f"spectral_entropy{suffix}"] = spectral_entropy(sv)
        out[f"effective_rank{suffix}"] = effective_rank(sv)
    return out


def layer_spectra(states: PairStates, vectors: dict[int, torch.Tensor] | None = None) -> list[dict]:
    """Per layer: the spectrum of ΔH (with |cos(u1, v̄)|), uncentred at the top level and centred under
    ``centred``; the spectral entropy and effective rank of H_base and H_dpo (uncentred and centred)."""
    out = []
    delta = states.delta
    for site in range(delta.shape[1]):
        direction = None if vectors is None or site not in vectors else vectors[site]
        row = {"layer": site}
        d = delta[:, site]
        if float(d.abs().max()) == 0.0:
            row["delta_is_zero"] = True
        else:
            row.update(delta_spectrum(d, direction, False) or {})
            row["centred"] = delta_spectrum(d, direction, True)
        for name, h in (("base", states.base[:, site]), ("dpo", states.dpo[:, site])):
            for key, value in state_spectrum(h).items():
                row[f"{key.replace('_centred', '')}_{name}{'_centred' if key.endswith('_centred') else ''}"] = value
        out.append(row)
    return out


# -------------------------------------------------------- steering identity
def next_token_logprobs(model, tokenizer, prompts: Sequence[str], *, interventions=(), module_edits=(),
                        batch_size: int = 8, position: str = "all", norm_preserve: bool = False) -> torch.Tensor:
    """log p(next token | prompt) at the last prompt token: ``(N, vocab)`` float32.

    ``module_edits`` functions receive ``(hidden, rows)`` where ``rows`` indexes
    the prompts of the batch.  ``position`` is the steering position (``all`` or
    ``last`` = the last prompt token only; see :mod:`dsteer_eval.steering.hook`).  For
    models whose logits are plain ``lm_head(h)`` only the last position is
    projected; others run their full forward.
    """
    from dsteer_eval.dpo.cpu_head import supports_compact_head
    from dsteer_eval.dpo.extract import context_limit, sorted_batches

    parts = resolve_parts(model)
    plain_head = supports_compact_head(unwrap(model))
    device = next(model.parameters()).device
    out = [None] * len(prompts)
    batches = sorted_batches(tokenizer, prompts, batch_size, device, max_length=context_limit(model, tokenizer))
    for index, ids, mask, last in batches:
        rows = torch.tensor(index)
        edits = [(module, (lambda h, fn=fn: fn(h, rows))) for module, fn in module_edits]
        pick = torch.arange(len(index), device=device)
        lengths = (last + 1).cpu() if position != "all" else None
        with torch.no_grad(), steer(model, interventions, module_edits=edits, position=position,
                                    norm_preserve=norm_preserve,
                                    prompt_lengths=lengths):
            if plain_head:
                h = parts.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                logits = parts.lm_head(h[pick, last])
            else:
                logits = model(input_ids=ids, attention_mask=mask).logits[pick, last]
        for i, row in zip(index, logits.float().log_softmax(-1).cpu()):
            out[i] = row
    return torch.stack(out)


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1).clamp(min=0)


def side_logprobs(pair, prompts: Sequence[str], *, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Unsteered next-token log-probabilities of both sides: {"base": (N, V), "dpo": (N, V)}."""
    if not prompts:
        raise ValueError("the steering identity needs at least one prompt")
    logp = {}
    for which in ("base", "dpo"):
        with pair.side(which) as model:
            logp[which] = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size)
    return logp


def identity_kl(pair, prompts: Sequence[str], vector: torch.Tensor, site: int, alpha: float = 1.0, *,
                position: str = "all", logp: dict | None = None, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per prompt (N,): ``restoration`` KL(base ‖ dpo − αv), ``reproduction`` KL(dpo ‖ base + αv) with v
    added at ``site`` and ``position``, and the unsteered ``kl_base_dpo``, ``kl_dpo_base``.

    ``logp`` (from :func:`side_logprobs` on the same pair and prompts) saves the two unsteered passes.
    """
    logp = logp or side_logprobs(pair, prompts, batch_size=batch_size)
    with pair.side("dpo") as model:
        restored = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size, position=position,
                                       interventions=[Intervention(site, vector, -float(alpha))])
    with pair.side("base") as model:
        reproduced = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size, position=position,
                                         interventions=[Intervention(site, vector, float(alpha))])
    return {
        "restoration": kl(logp["base"], restored),
        "reproduction": kl(logp["dpo"], reproduced),
        "kl_base_dpo": kl(logp["base"], logp["dpo"]),
        "kl_dpo_base": kl(logp["dpo"], logp["base"]),
    }


def ablation_identity(pair, prompts: Sequence[str], vector: torch.Tensor, site: int, alphas: Sequence[float],
                      *, batch_size: int = 8, logp: dict | None = None) -> dict:
    """Restoration by *ablation*: mean next-token KL(base ‖ dpo with the v̂ component scaled by 1 − α) at
    ``site``, every position (``mode=ablate``: α = 1 removes it). Ablation has no sign to reverse and
    does not add v̄, so there is no reproduction counterpart."""
    logp = logp or side_logprobs(pair, prompts, batch_size=batch_size)
    out = []
    for alpha in alphas:
        with pair.side("dpo") as model:
            got = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size,
                                      interventions=[Intervention(site, vector, float(alpha), mode="ablate")])
        out.append(float(kl(logp["base"], got).mean()))
    return {"layer": site, "position": "all", "mode": "ablate", "alphas": [float(a) for a in alphas],
            "kl_base_dpo": float(kl(logp["base"], logp["dpo"]).mean()), "restoration_kl": out}


def norm_preserved_identity(pair, prompts: Sequence[str], vector: torch.Tensor, site: int, alphas: Sequence[float],
                            *, batch_size: int = 8, logp: dict | None = None) -> dict:
    """The steering identity with ``norm_preserve=True``: each steered state keeps its norm, so only its
    direction moves. Restoration KL(base ‖ dpo − αv̄) and reproduction KL(dpo ‖ base + αv̄), every position."""
    logp = logp or side_logprobs(pair, prompts, batch_size=batch_size)
    restoration, reproduction = [], []
    for alpha in alphas:
        with pair.side("dpo") as model:
            restored = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size, norm_preserve=True,
                                           interventions=[Intervention(site, vector, -float(alpha))])
        with pair.side("base") as model:
            reproduced = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size,
                                             norm_preserve=True, interventions=[Intervention(site, vector, float(alpha))])
        restoration.append(float(kl(logp["base"], restored).mean()))
        reproduction.append(float(kl(logp["dpo"], reproduced).mean()))
    return {"layer": site, "position": "all", "norm_preserve": True, "alphas": [float(a) for a in alphas],
            "kl_base_dpo": float(kl(logp["base"], logp["dpo"]).mean()),
            "kl_dpo_base": float(kl(logp["dpo"], logp["base"]).mean()),
            "restoration_kl": restoration, "reproduction_kl": reproduction}


def steering_identity(pair, prompts: Sequence[str], vector: torch.Tensor, site: int, alphas: Sequence[float],
                      *, batch_size: int = 8, position: str = "all", logp: dict | None = None) -> dict:
    """Mean next-token KL over prompts: restoration KL(base ‖ dpo − αv̄), reproduction KL(dpo ‖ base + αv̄),
    v̄ added at ``site`` and ``position`` (``all`` or ``last``)."""
    logp = logp or side_logprobs(pair, prompts, batch_size=batch_size)
    restoration, reproduction = [], []
    for alpha in tqdm(alphas, desc="steering identity (alpha grid)", leave=False):
        one = identity_kl(pair, prompts, vector, site, alpha, position=position, logp=logp, batch_size=batch_size)
        restoration.append(float(one["restoration"].mean()))
        reproduction.append(float(one["reproduction"].mean()))
    return {
        "layer": site,
        "position": position,
        "alphas": [float(a) for a in alphas],
        "kl_base_dpo": float(kl(logp["base"], logp["dpo"]).mean()),
        "kl_dpo_base": float(kl(logp["dpo"], logp["base"]).mean()),
        "restoration_kl": restoration,
        "reproduction_kl": reproduction,
    }


# ------------------------------------------------------ coherence summaries
def coherence_summary(out: dict, vectors: dict[int, torch.Tensor] | None = None, *,
                      by_layer: bool = True) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Summaries of a :func:`shift_gradients` result, and the per-pair leave-one-out cosines at the final
    site (sequence level; first divergence with NaN for pairs without a divergent token).

    Per statistic: the naive cos(gᵢ, ḡ) (ḡ includes gᵢ; i.i.d. floor ≈ 1/√N), the leave-one-out
    cos(gᵢ, ḡ₋ᵢ) (:func:`dsteer_eval.probes.coherence.loo_cosines`; i.i.d. floor 0) and cos(−ḡ, v̄) (DPO moves h
    against its loss gradient). ``by_layer`` adds the same per site (sequence level).
    """
    from dsteer_eval.probes.coherence import iid_expectation_naive, loo_cosines

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


__all__ = [
    "summary", "projection_margins", "logit_margins", "content_divergences", "is_content_token",
    "directional_consistency", "shift_gradients", "gradient_coherence", "fitting_pairs", "layer_spectra",
    "state_spectrum", "next_token_logprobs", "side_logprobs", "identity_kl", "kl", "steering_identity",
    "divergences", "cosines", "coherence_summary",
]
