"""The steering identity: next-token KL between the sides of a pair, steered and not.

* :func:`steering_identity`    KL restoration (base ‖ dpo − αv) / reproduction (dpo ‖ base + αv) over α
* :func:`identity_kl`          the same KLs per prompt at one α (for paired verdicts)
* :func:`ablation_identity`, :func:`norm_preserved_identity`   the same with v̂ ablated / norms preserved
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from dsteer_eval.dpo.cpu_head import supports_compact_head
from dsteer_eval.dpo.extract import context_limit, sorted_batches
from dsteer_eval.steering.hook import Intervention, steer
from dsteer_eval.steering.sites import resolve_parts, unwrap


def next_token_logprobs(model, tokenizer, prompts: Sequence[str], *, interventions=(), module_edits=(),
                        batch_size: int = 8, position: str = "all", norm_preserve: bool = False) -> torch.Tensor:
    """log p(next token | prompt) at the last prompt token: ``(N, vocab)`` float32.

    ``module_edits`` functions receive ``(hidden, rows)`` where ``rows`` indexes
    the prompts of the batch.  ``position`` is the steering position (``all`` or
    ``last`` = the last prompt token only; see :mod:`dsteer_eval.steering.hook`).  For
    models whose logits are plain ``lm_head(h)`` only the last position is
    projected; others run their full forward.
    """

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
