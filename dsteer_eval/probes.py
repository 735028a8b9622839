"""The D-STEER probes on a base/DPO pair (see ``dsteer_eval.probe_report`` for the report).

Every function takes a :class:`~dsteer_eval.model_pair.ModelPair` (or the
states already computed from one) and returns plain numbers/tensors:

* :func:`projection_margins`   ⟨h, v̂⟩ for base and DPO per layer, and the shift
* :func:`logit_margins`        ⟨h_final, Δe⟩ at each pair's first divergent token
* :func:`directional_consistency`  cos(δ_i, v̄) per prompt
* :func:`gradient_coherence`   ∂L_DPO/∂(shared shift of the final hidden states), per pair
* :func:`layer_spectra`        spectra of ΔH, H_base, H_dpo per layer
* :func:`steering_identity`    next-token KL restoration / reproduction over α
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from dsteer_eval.extract import Divergence, PairStates, context_limit, divergences, pad_batch, unembedding
from dsteer_eval.model_parts import resolve_parts, unwrap
from dsteer_eval.preference_data import PreferencePair
from dsteer_eval.spectra import spectral_entropy, spectrum, singular_values
from dsteer_eval.steering import Intervention, steer


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
def _reply_batch(tokenizer, pairs: Sequence[PreferencePair], max_length: int, device):
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


def _sequence_logps(logits: torch.Tensor, ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * target_mask[:, 1:]).sum(-1)


def gradient_coherence(pair, pairs: Sequence[PreferencePair], *, beta: float = 0.1, policy: str = "dpo",
                       max_length: int = 256, batch_size: int = 4, limit: int | None = None) -> dict:
    """Per-pair gradients of the sequence-level DPO loss w.r.t. the final hidden states.

    The loss of pair i is L_i = −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])
    with π = the ``policy`` side ("dpo": the trained model; "base": the start of
    training, where π = π_ref) and π_ref = the base.  g_i = Σ_t ∂L_i/∂h_t over
    every position of both replies' sequences — the gradient w.r.t. one shift
    added to all final hidden states of the pair, i.e. the direction DPO pushes
    the final state.  Weights are frozen.  Returns g (N × d), cos(g_i, ḡ) and
    the losses.  Pairs whose prompt leaves no room for a reply within
    ``max_length`` tokens are skipped and counted (``skipped_prompt_too_long``);
    then the first ``limit`` pairs are used.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    fitting = [p for p in pairs if len(pair.tokenizer(p.prompt, add_special_tokens=True).input_ids) < max_length - 1]
    skipped = len(pairs) - len(fitting)
    pairs = fitting[:limit] if limit is not None else fitting
    if not pairs:
        raise ValueError(f"gradient coherence needs at least one preference pair whose prompt is shorter than "
                         f"max_length={max_length} tokens ({skipped} too long); raise --max-length")
    grads, losses = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc=f"grad ({policy})", leave=False):
        chunk = list(pairs[start : start + batch_size])
        with pair.side("base") as model:
            device = next(model.parameters()).device
            ids, attn, target = _reply_batch(pair.tokenizer, chunk, max_length, device)
            with torch.no_grad():
                ref = _sequence_logps(model(input_ids=ids, attention_mask=attn).logits, ids, target)
        with pair.side(policy) as model:
            parts = resolve_parts(model)
            shift = torch.zeros(len(chunk), parts.hidden_size, device=device, requires_grad=True)
            row_pair = torch.arange(len(chunk), device=device).repeat_interleave(2)

            def add_shift(module, args, output):
                return output + shift[row_pair][:, None, :].to(output.dtype)

            frozen = [(p, p.requires_grad) for p in model.parameters()]
            for p, _ in frozen:
                p.requires_grad_(False)
            handle = parts.final_norm.register_forward_hook(add_shift)
            try:
                with torch.enable_grad():
                    logits = model(input_ids=ids, attention_mask=attn).logits
                    pol = _sequence_logps(logits, ids, target)
                    ratio = (pol - ref).view(-1, 2)
                    loss = -torch.nn.functional.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1]))
                    loss.sum().backward()
            finally:
                handle.remove()
                for p, flag in frozen:
                    p.requires_grad_(flag)
        grads.append(shift.grad.detach().float().cpu())
        losses.append(loss.detach().float().cpu())
    g = torch.cat(grads)
    mean = g.mean(0)
    cos = cosines(g, mean) if mean.norm() > 0 else torch.zeros(len(g), dtype=torch.float64)
    return {"grads": g, "mean": mean, "cos": cos, "loss": torch.cat(losses), "skipped_prompt_too_long": skipped}


# ---------------------------------------------------------------- spectra
def layer_spectra(states: PairStates, vectors: dict[int, torch.Tensor] | None = None) -> list[dict]:
    """Per layer: the spectrum of ΔH (with |cos(u1, v̄)|) and the spectral entropy of H_base, H_dpo."""
    out = []
    delta = states.delta
    for site in range(delta.shape[1]):
        direction = None if vectors is None or site not in vectors else vectors[site]
        row = {"layer": site}
        d = delta[:, site]
        if float(d.abs().max()) == 0.0:
            row["delta_is_zero"] = True
        else:
            row.update(spectrum(d, direction=direction))
        for name, h in (("base", states.base[:, site]), ("dpo", states.dpo[:, site])):
            entropy = spectral_entropy(singular_values(h))
            row[f"spectral_entropy_{name}"] = entropy
            row[f"effective_rank_{name}"] = math.exp(entropy)
        out.append(row)
    return out


# -------------------------------------------------------- steering identity
def next_token_logprobs(model, tokenizer, prompts: Sequence[str], *, interventions=(), module_edits=(),
                        batch_size: int = 8) -> torch.Tensor:
    """log p(next token | prompt) at the last prompt token: ``(N, vocab)`` float32.

    ``module_edits`` functions receive ``(hidden, rows)`` where ``rows`` indexes
    the prompts of the batch.  For models whose logits are plain ``lm_head(h)``
    only the last position is projected; others run their full forward.
    """
    from dsteer_eval.dpo_head import supports_compact_head
    from dsteer_eval.extract import context_limit, sorted_batches

    parts = resolve_parts(model)
    plain_head = supports_compact_head(unwrap(model))
    device = next(model.parameters()).device
    out = [None] * len(prompts)
    batches = sorted_batches(tokenizer, prompts, batch_size, device, max_length=context_limit(model, tokenizer))
    for index, ids, mask, last in batches:
        rows = torch.tensor(index)
        edits = [(module, (lambda h, fn=fn: fn(h, rows))) for module, fn in module_edits]
        pick = torch.arange(len(index), device=device)
        with torch.no_grad(), steer(model, interventions, module_edits=edits):
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


def steering_identity(pair, prompts: Sequence[str], vector: torch.Tensor, site: int, alphas: Sequence[float],
                      *, batch_size: int = 8) -> dict:
    """Mean next-token KL over prompts: restoration KL(base ‖ dpo − αv̄), reproduction KL(dpo ‖ base + αv̄)."""
    if not prompts:
        raise ValueError("the steering identity needs at least one prompt")
    logp = {}
    for which in ("base", "dpo"):
        with pair.side(which) as model:
            logp[which] = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size)
    restoration, reproduction = [], []
    for alpha in tqdm(alphas, desc="steering identity (alpha grid)", leave=False):
        with pair.side("dpo") as model:
            steered = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size,
                                          interventions=[Intervention(site, vector, -float(alpha))])
        restoration.append(float(kl(logp["base"], steered).mean()))
        with pair.side("base") as model:
            steered = next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size,
                                          interventions=[Intervention(site, vector, float(alpha))])
        reproduction.append(float(kl(logp["dpo"], steered).mean()))
    return {
        "layer": site,
        "alphas": [float(a) for a in alphas],
        "kl_base_dpo": float(kl(logp["base"], logp["dpo"]).mean()),
        "kl_dpo_base": float(kl(logp["dpo"], logp["base"]).mean()),
        "restoration_kl": restoration,
        "reproduction_kl": reproduction,
    }


__all__ = [
    "summary", "projection_margins", "logit_margins", "directional_consistency", "gradient_coherence",
    "layer_spectra", "next_token_logprobs", "kl", "steering_identity", "divergences", "cosines",
]
