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

from dsteer_eval.adapters.steered import SteeredLM
from dsteer_eval.metrics.degeneration import degenerate
from dsteer_eval.models.defaults import model_name, resolve_default_pair
from dsteer_eval.steering.args import SteerArgs
from dsteer_eval.steering.hook import Intervention, steer
from dsteer_eval.sweep.grid import parse_alpha_grid

FORMAT = "dsteer-eval/ceiling"
AUTO_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)


@dataclass
class Side:
    sign: int
    ceiling: float
    grid: list = field(default_factory=list)  # [{alpha, degenerate, perplexity, passed}]
    skipped: str | None = None  # why this side was not measured


def _generate(model, tokenizer, prompts, interventions, max_new_tokens: int, batch_size: int, *,
              position: str = "all", norm_preserve: bool = False) -> list[str]:
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            lengths = torch.full((enc.input_ids.shape[0],), enc.input_ids.shape[1], dtype=torch.long)  # left-padded
            with torch.no_grad(), steer(model, interventions, position=position, prompt_lengths=lengths,
                                        norm_preserve=norm_preserve):
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
                 max_perplexity_ratio: float = 3.0, batch_size: int = 8, mode: str = "add", position: str = "all",
                 norm_preserve: bool = False) -> dict:
    """The ceiling of ``vector`` (already scaled as ``unit=`` asks) at ``site``, steered with ``mode``,
    ``position`` and ``norm_preserve`` exactly as a run with those settings steers. An ablation has no
    negative side (``mode=ablate`` refuses α < 0): that side is recorded as skipped, with ceiling 0."""
    if not prompts:
        raise ValueError("ceiling: no prompts")
    if not (start > 0 and steps >= 1 and 0 <= max_degenerate < 1 and max_perplexity_ratio > 1):
        raise ValueError("ceiling: need start > 0, steps >= 1, 0 <= max_degenerate < 1, max_perplexity_ratio > 1")
    prompts = list(prompts)
    how = {"position": position, "norm_preserve": norm_preserve}
    plain = _generate(model, tokenizer, prompts, [], max_new_tokens, batch_size, **how)
    usable = [(p, t) for p, t in zip(prompts, plain) if degenerate(t) is None]
    reference = _perplexity(model, tokenizer, [p for p, _ in usable], [t for _, t in usable], batch_size)
    sides = []
    for sign in (-1, 1):
        side = Side(sign, 0.0)
        if mode == "ablate" and sign < 0:
            side.skipped = "mode=ablate has no negative alpha"
            sides.append(side)
            continue
        for k in range(steps):
            alpha = sign * start * 2 ** k
            texts = _generate(model, tokenizer, prompts, [Intervention(site, vector, alpha, mode=mode)], max_new_tokens,
                              batch_size, **how)
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

    return parse_alpha_grid(value[4:], flag="--alphas rel:")


STEERING_KEYS = ("unit", "mode", "position", "norm_preserve", "control", "control_seed", "dtype")


def steering_settings(kwargs: dict) -> dict:
    """What, besides the vector and the layer, decides what one unit of α does: ``unit=``, ``mode=``,
    ``position=``, ``norm_preserve=``, ``control=``/``control_seed=`` and ``dtype=``, parsed as ``steered``
    parses them.  Recorded in ``ceiling.json``; a sweep with other settings refuses the ceiling."""
    args = SteerArgs.parse(alpha=1.0, position=kwargs.get("position", "all"), unit=kwargs.get("unit", False),
                           mode=kwargs.get("mode", "add"), norm_preserve=kwargs.get("norm_preserve", False),
                           control=kwargs.get("control"), control_seed=kwargs.get("control_seed", 0))
    return {"unit": args.unit, "mode": args.mode, "position": args.position, "norm_preserve": args.norm_preserve,
            "control": args.control, "control_seed": args.control_seed,
            "dtype": str(kwargs.get("dtype") or "auto").strip().lower()}


def check_same_steering(ceiling: dict, kwargs: dict, where: str) -> None:
    """Refuse a ceiling measured with other steering settings than ``kwargs`` (a relative α would mean
    another strength), naming each setting that differs."""
    recorded = ceiling.get("steering")
    now = steering_settings(kwargs)
    if not isinstance(recorded, dict):
        default = steering_settings({})
        if now != default:
            raise ValueError(f"{where} records no steering settings (made before they were recorded, i.e. with the "
                             f"defaults {default}); this sweep steers with {now}: measure the ceiling again with "
                             f"`dsteer-eval ceiling` and the same --model-args")
        return
    differ = [f"{k}={recorded.get(k)!r} there, {now[k]!r} here" for k in STEERING_KEYS if recorded.get(k) != now[k]]
    if differ:
        raise ValueError(f"{where} was measured with other steering settings ({'; '.join(differ)}); a relative alpha "
                         f"would mean another strength. Measure it with the same --model-args")


def ceiling_for(kwargs: dict, layer, prompts: Sequence[str], *, device: str | None = None, **rule) -> dict:
    """Load the model that ``--model_args`` (as a dict, without alpha) names, exactly as ``steered`` loads it
    (the embedded default with its shipped adapter and v̄, ``peft=``, ``dtype=``), and find the ceiling of its
    vector at ``layer`` on ``prompts``, steered as those args say (``unit=``, ``mode=``, ``position=``,
    ``norm_preserve=``, ``control=``)."""

    settings = steering_settings(kwargs)
    args = {k: v for k, v in kwargs.items() if k not in ("layer", "alpha")}
    lm = SteeredLM(**args, layer=None if layer is None else str(layer), alpha=1.0,  # alpha=1: one unit of alpha
                   **({"device": device} if device else {}))
    (item,) = lm.interventions
    tokenizer = lm.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    result = find_ceiling(lm.model, tokenizer, prompts, item.vector, item.site, mode=settings["mode"],
                          position=settings["position"], norm_preserve=settings["norm_preserve"], **rule)
    chosen = resolve_default_pair(args.get("pretrained"), pair=args.get("pair"), vector_pair=args.get("vector_pair"),
                                  vector=args.get("vector"),
                                  peft=args.get("peft"))
    vector, peft = chosen.vector, chosen.peft
    result.update({"vector": str(vector), "peft": None if peft is None else str(peft), "layer": str(item.site if layer is None else layer),
                   "pretrained": model_name(args.get("pretrained")), "steering": settings,
                   "model_dtype": str(lm.model.dtype).removeprefix("torch.")})
    return result
