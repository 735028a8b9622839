"""The D-STEER probes on a base/DPO pair (see ``dsteer_eval.probes.report`` for the report).

Every function takes a :class:`~dsteer_eval.dpo.model_pair.ModelPair` (or the
states already computed from one) and returns plain numbers/tensors:

* :func:`projection_margins`   ⟨h, v̂⟩ for base and DPO per layer, and the shift
* :func:`logit_margins`        ⟨h_final, Δe⟩ at each pair's first divergent token
* :func:`content_divergences`    the pairs whose first divergent tokens are both content tokens
* :func:`directional_consistency`  cos(δ_i, v̄) per prompt
* :func:`layer_spectra`        spectra of ΔH (uncentred and centred), H_base, H_dpo per layer

Gradients and their coherence live in :mod:`dsteer_eval.probes.gradients`, the steering identity (next-token
KLs, steered and not) in :mod:`dsteer_eval.probes.identity`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dsteer_eval.dpo.extract import Divergence, PairStates, context_limit, divergences, pad_batch, unembedding
from dsteer_eval.steering.sites import resolve_parts
from dsteer_eval.probes.spectra import effective_rank, spectral_entropy, spectrum, singular_values


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


__all__ = [
    "summary", "projection_margins", "logit_margins", "content_divergences", "is_content_token",
    "directional_consistency", "layer_spectra", "state_spectrum", "divergences", "cosines",
]
