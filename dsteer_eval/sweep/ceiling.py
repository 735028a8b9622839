"""The strength ceiling of a steering vector: the largest |α| before generations degenerate.

A fixed α grid means different things for different vectors (‖v̄‖ differs by orders of magnitude between
layers and pairs); past some strength every output is garbage and every metric moves for that reason
alone. For one vector at one layer and each side (α < 0 and α > 0), the model generates greedily
(``max_new_tokens``) for each prompt at |α| = ``start``, 2·start, 4·start, … (at most ``steps`` values),
and a strength **passes** when

* at most ``max_degenerate`` (default 0.1) of the generations are degenerate by the judge-free rule of
  :mod:`dsteer_eval.metrics.degeneration` (empty, garbled, loops), and
* the mean per-token perplexity of the non-degenerate generations under the *unsteered* model is at most
  ``max_perplexity_ratio`` (default 3) times that of the unsteered model's own generations.

The ceiling of a side is the largest |α| of the grid that passes with every smaller one passing too (0 when
the first fails). No judge is involved. ``dsteer-eval ceiling`` writes ``ceiling.json``; ``dsteer-eval
sweep --alphas rel:-1,-0.5,0,0.5,1 --ceiling ceiling.json`` multiplies each relative α by its side's
ceiling, and ``--alphas auto`` does both (rel:-1,-0.5,0,0.5,1, with the ceiling measured first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from dsteer_eval.metrics.degeneration import degenerate
from dsteer_eval.steering.hook import Intervention, steer

FORMAT = "dsteer-eval/ceiling"
AUTO_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)


@dataclass
class Side:
    sign: int
    ceiling: float
    grid: list = field(default_factory=list)  # [{alpha, degenerate, perplexity, passed}]


def _generate(model, tokenizer, prompts, interventions, max_new_tokens: int, batch_size: int) -> list[str]:
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            with torch.no_grad(), steer(model, interventions):
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(ids[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return out


def _perplexity(model, tokenizer, prompts, texts, batch_size: int) -> float | None:
    """Mean over texts of exp(mean NLL per generated token) under ``model`` (unsteered), given the prompt."""
    device = next(model.parameters()).device
    values = []
    for prompt, text in zip(prompts, texts):
        p = tokenizer(prompt).input_ids
        full = tokenizer(prompt + text).input_ids
        if len(full) <= len(p):
            continue
        ids = torch.tensor([full], device=device)
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].float().log_softmax(-1)
        target = ids[0, 1:]
        nll = -logp.gather(-1, target[:, None]).squeeze(-1)[len(p) - 1:]
        values.append(math.exp(float(nll.mean())))
    return sum(values) / len(values) if values else None


def find_ceiling(model, tokenizer, prompts: Sequence[str], vector: torch.Tensor, site: int, *, start: float = 0.25,
                 steps: int = 8, max_new_tokens: int = 32, max_degenerate: float = 0.1,
                 max_perplexity_ratio: float = 3.0, batch_size: int = 8) -> dict:
    if not prompts:
        raise ValueError("ceiling: no prompts")
    if not (start > 0 and steps >= 1 and 0 <= max_degenerate < 1 and max_perplexity_ratio > 1):
        raise ValueError("ceiling: need start > 0, steps >= 1, 0 <= max_degenerate < 1, max_perplexity_ratio > 1")
    prompts = list(prompts)
    plain = _generate(model, tokenizer, prompts, [], max_new_tokens, batch_size)
    usable = [(p, t) for p, t in zip(prompts, plain) if degenerate(t) is None]
    reference = _perplexity(model, tokenizer, [p for p, _ in usable], [t for _, t in usable], batch_size)
    sides = []
    for sign in (-1, 1):
        side = Side(sign, 0.0)
        for k in range(steps):
            alpha = sign * start * 2 ** k
            texts = _generate(model, tokenizer, prompts, [Intervention(site, vector, alpha)], max_new_tokens, batch_size)
            bad = [degenerate(t) is not None for t in texts]
            frac = sum(bad) / len(bad)
            kept = [(p, t) for p, t, b in zip(prompts, texts, bad) if not b]
            ppl = _perplexity(model, tokenizer, [p for p, _ in kept], [t for _, t in kept], batch_size)
            passed = frac <= max_degenerate and (ppl is not None and reference is not None
                                                 and ppl <= max_perplexity_ratio * reference)
            side.grid.append({"alpha": alpha, "degenerate": frac, "perplexity": ppl, "passed": passed})
            if not passed:
                break
            side.ceiling = abs(alpha)
        sides.append(side)
    return {
        "format": FORMAT, "site": site, "vector_norm": float(vector.float().norm()), "prompts": len(prompts),
        "unsteered": {"degenerate": sum(degenerate(t) is not None for t in plain) / len(plain),
                      "perplexity": reference},
        "rule": {"start": start, "steps": steps, "max_new_tokens": max_new_tokens, "max_degenerate": max_degenerate,
                 "max_perplexity_ratio": max_perplexity_ratio},
        "negative": asdict(sides[0]), "positive": asdict(sides[1]),
    }


def relative_alphas(relative: Sequence[float], ceiling: dict) -> tuple[float, ...]:
    """Each relative α times its side's ceiling (α < 0: the negative side's); 0 stays 0. A side whose
    ceiling is 0 (its first strength already degenerates) is refused rather than collapsed to α=0."""
    out = []
    for r in relative:
        if r == 0:
            out.append(0.0)
            continue
        side = ceiling["negative" if r < 0 else "positive"]["ceiling"]
        if not side > 0:
            raise ValueError(f"--alphas rel: the {'negative' if r < 0 else 'positive'} side's ceiling is 0 (even the "
                             f"smallest strength degenerates); lower the ceiling's --start or drop that side")
        out.append(float(r) * float(side))
    if len(set(out)) != len(out):
        raise ValueError(f"--alphas rel: {list(relative)} gives repeated alphas {out}")
    return tuple(out)


def parse_relative(text: str) -> tuple[float, ...] | None:
    """``rel:-1,-0.5,0,0.5,1`` -> the relative grid; ``auto`` -> AUTO_GRID; anything else -> None."""
    value = str(text).strip().lower()
    if value == "auto":
        return AUTO_GRID
    if not value.startswith("rel:"):
        return None
    from dsteer_eval.sweep.grid import parse_alpha_grid

    return parse_alpha_grid(value[4:], flag="--alphas rel:")


def ceiling_for(kwargs: dict, layer, prompts: Sequence[str], *, device: str | None = None, **rule) -> dict:
    """Load the model that ``--model_args`` (as a dict, without alpha) names — the embedded default, its
    shipped adapter and v̄ included — and find the ceiling of its vector at ``layer`` on ``prompts``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsteer_eval.harness.steered import SteeredLM
    from dsteer_eval.models.embedded import resolve_pretrained
    from dsteer_eval.steering.sites import resolve_parts
    from dsteer_eval.steering.args import parse_layers, resolve_site
    from dsteer_eval.vectors import check_compatible, load_vectors

    vector_path = kwargs.get("vector") or SteeredLM._default_vector_for(kwargs.get("pretrained"), kwargs.get("pair"))
    peft = kwargs.get("peft")
    if peft is None and not kwargs.get("vector"):
        peft = SteeredLM._default_adapter_for(kwargs.get("pretrained"), kwargs.get("pair"))
    path = resolve_pretrained(kwargs.get("pretrained"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    if peft and str(peft).lower() != "none":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(peft)).eval()
    vf = load_vectors(vector_path, argument="vector")
    check_compatible(vf, model, argument="vector")
    if layer is None:
        layer = int(vf.metadata["default_layer"]) if "default_layer" in vf.metadata else next(iter(vf.vectors))
    (layer,) = parse_layers(layer) if isinstance(layer, str) else (layer,)
    site = resolve_site(layer, resolve_parts(model).num_layers)
    result = find_ceiling(model, tokenizer, prompts, vf.vector(site, argument="vector"), site, **rule)
    result.update({"vector": str(vector_path), "peft": None if peft is None else str(peft), "layer": str(layer),
                   "pretrained": str(kwargs.get("pretrained") or "smollm2")})
    return result
