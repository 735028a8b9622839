"""Fit one steering vector at one site through two frozen models (issue 36): how much of DPO one vector can do.

Two estimators beside D-STEER's mean difference v̄ (:func:`dsteer_eval.dpo.extract.dpo_diff`):

* **distilled** (:func:`fit_distilled`): ``install`` finds v* minimising the mean next-token
  KL(π_DPO ‖ π_base + v) over the completion tokens of prompt+chosen and prompt+rejected texts;
  ``undo`` finds u* minimising KL(π_base ‖ π_DPO + u). The teacher runs without gradients; only the
  d-vector is trained (Adam), every model weight frozen.
* **DPO-trained** (:func:`fit_dpo_vector`, as in bi-directional preference optimisation, Cao et al.
  2024): v_DPO at the site trained with the DPO loss −log σ(β[(log π_v(c) − log π_ref(c)) −
  (log π_v(r) − log π_ref(r))]), π_v = the base + v, π_ref = the base, on the pairs given (the
  adapter's train part).

The vector is added at hidden-state site ``site`` (:mod:`dsteer_eval.steering.sites`) at ``position``
(``all``, ``prompt``, ``completion`` or ``last``, as :func:`dsteer_eval.steering.steer` reads them) with
:func:`dsteer_eval.steering.adding`, the hook that carries gradients; ``steered`` adds it back the same
way (``vector=FILE,layer=site,alpha=1,position=...``). It is parametrised as ``scale · w`` with ``scale``
= the mean state norm at the site over the fitting texts / √d, so Adam's step size means the same at
every layer.

:func:`measure` reads, per pair, what a vector does on held-out rows: the KL to the target model before
and after, and the implicit reward margin relative to the base, m(π) = [log π(c) − log π_base(c)] −
[log π(r) − log π_base(r)] (summed over completion tokens), for the base, the DPO model and the
steered model — the numbers behind "gap installed / taken back".

Both models come from one :class:`dsteer_eval.dpo.model_pair.ModelPair` (or anything with
``side(which)`` and ``tokenizer``): the adapter is toggled, so memory stays at one model.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dsteer_eval.dpo.extract import keep_end
from dsteer_eval.steering.capture import record
from dsteer_eval.steering.hook import POSITIONS, adding, position_mask
from dsteer_eval.steering.resume_forward import run_from_site, run_to_site
from dsteer_eval.steering.sites import resolve_parts

DIRECTIONS = ("install", "undo")


@dataclass(frozen=True)
class Encoded:
    """One text: its token ids and how many of them are the prompt."""

    ids: tuple[int, ...]
    prompt_len: int


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    prompt_lengths: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, T) bool: positions t whose next token t+1 is a completion token
    labels: torch.Tensor  # (B, T) the next token (0 where not a target)


def encode(tokenizer, prompt: str, completion: str, *, max_prompt: int = 128, max_completion: int = 64) -> Encoded:
    """``prompt`` (its last ``max_prompt`` tokens, a leading BOS kept) followed by ``completion`` (its first
    ``max_completion`` tokens, no special tokens)."""
    p = list(tokenizer(prompt, add_special_tokens=True).input_ids)
    c = list(tokenizer(completion, add_special_tokens=False).input_ids)[:max_completion]
    if not p or not c:
        raise ValueError(f"a text needs a prompt and a completion token; got {len(p)} and {len(c)} "
                         f"(prompt {prompt[:40]!r}, completion {completion[:40]!r})")
    p = keep_end(p, max_prompt, getattr(tokenizer, "bos_token_id", None))
    return Encoded(tuple(p + c), len(p))


def encode_pairs(tokenizer, pairs: Sequence, **limits) -> list[tuple[Encoded, Encoded]]:
    """``(prompt + chosen, prompt + rejected)`` for each pair (objects with prompt/chosen/rejected)."""
    return [(encode(tokenizer, p.prompt, p.chosen, **limits), encode(tokenizer, p.prompt, p.rejected, **limits))
            for p in pairs]


def collate(texts: Sequence[Encoded], pad_id: int, device=None) -> Batch:
    width = max(len(t.ids) for t in texts)
    ids = torch.full((len(texts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    target = torch.zeros((len(texts), width), dtype=torch.bool)
    labels = torch.zeros((len(texts), width), dtype=torch.long)
    for row, t in enumerate(texts):
        n = len(t.ids)
        ids[row, :n] = torch.tensor(t.ids)
        mask[row, :n] = 1
        target[row, t.prompt_len - 1:n - 1] = True
        labels[row, :n - 1] = torch.tensor(t.ids[1:])
    labels[~target] = 0
    lengths = torch.tensor([t.prompt_len for t in texts])
    dev = device or "cpu"
    return Batch(ids.to(dev), mask.to(dev), lengths.to(dev), target.to(dev), labels.to(dev))


def shift_at(batch: Batch, vector: torch.Tensor, position: str) -> torch.Tensor:
    """``vector`` broadcast to where :func:`dsteer_eval.steering.steer` would add it at ``position``: the vector
    itself for ``all``, else ``(B, T, d)`` with zeros elsewhere (the hook's own position mask)."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}; got {position!r}")
    keep = position_mask(position, batch.input_ids.shape[1], 0, batch.prompt_lengths, batch.input_ids.device)
    return vector if keep is None else keep[..., None].to(vector.dtype) * vector


def target_logprobs(model, batch: Batch, *, site: int | None = None, vector: torch.Tensor | None = None,
                    position: str = "all") -> torch.Tensor:
    """Log-softmax (float32) of the next-token distribution at the batch's target positions, ``(N, vocab)``
    in row-major order; ``vector`` (may require grad) added at ``site`` and ``position`` when given."""
    parts = resolve_parts(model)
    shifts = {}
    if vector is not None:
        shifts[parts.site_module(site)] = shift_at(batch, vector, position)
    with adding(shifts):
        hidden = parts.decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[0]
    return F.log_softmax(parts.lm_head(hidden[batch.target]).float(), dim=-1)


class Steerer:
    """Log-probs at a batch's target positions with a vector added at ``site``: the layers below the site run once
    per (model side, batch) and are kept (:mod:`dsteer_eval.steering.resume_forward`), so each further vector costs
    only the layers above it. Sites 0 and ``num_layers`` fall back to a full pass (:func:`target_logprobs`)."""

    def __init__(self, site: int, position: str = "all"):
        self.site, self.position, self.kept = site, position, {}

    def __call__(self, model, batch: Batch, vector: torch.Tensor, key) -> torch.Tensor:
        parts = resolve_parts(model)
        if not 1 <= self.site < parts.num_layers:
            return target_logprobs(model, batch, site=self.site, vector=vector, position=self.position)
        if key not in self.kept:
            self.kept[key] = run_to_site(model, batch.input_ids, batch.attention_mask, self.site, parts=parts)
        hidden = run_from_site(model, self.kept[key], shift_at(batch, vector, self.position), parts=parts)
        return F.log_softmax(parts.lm_head(hidden[batch.target]).float(), dim=-1)


def _per_text_sum(values: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B,) sums of per-target-position ``values`` (row-major, as :func:`target_logprobs` orders them) by text."""
    rows = torch.arange(batch.input_ids.shape[0], device=values.device)[:, None].expand_as(batch.target)[batch.target]
    return torch.zeros(batch.input_ids.shape[0], device=values.device, dtype=values.dtype).index_add(0, rows, values)


def sequence_logps(logp: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B,) summed log-probability of each text's completion tokens, from :func:`target_logprobs`."""
    return _per_text_sum(logp.gather(1, batch.labels[batch.target][:, None])[:, 0], batch)


def kl_per_text(teacher: torch.Tensor, student: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B,) mean over each text's target positions of KL(teacher ‖ student) (log-prob inputs, nats)."""
    per_pos = (teacher.exp() * (teacher - student)).sum(-1)
    return _per_text_sum(per_pos, batch) / batch.target.sum(1).clamp(min=1)


@contextmanager
def frozen(model):
    """Every parameter's requires_grad off inside the block (restored after): only the vector trains."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def state_scale(pair, texts: Sequence[Encoded], site: int, side: str, pad_id: int, device=None) -> float:
    """Mean ‖h‖ at ``site`` over the texts' non-padding positions, / √d: the unit of the fitted w."""
    total, count = 0.0, 0
    with pair.side(side) as model:
        parts = resolve_parts(model)
        with record(model, [site], parts=parts) as seen:
            for start in range(0, len(texts), 16):
                batch = collate(texts[start:start + 16], pad_id, device)
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
                norms = seen[site].float().norm(dim=-1)[batch.attention_mask.bool()]
                total, count = total + float(norms.sum()), count + norms.numel()
    return total / count / math.sqrt(parts.hidden_size)


@dataclass
class Fit:
    """A fitted vector and how it was fitted (saved as the vector file's provenance)."""

    vector: torch.Tensor
    method: str
    site: int
    position: str
    steps: int
    losses: list[float] = field(default_factory=list)
    scale: float = 1.0
    seconds: float = 0.0
    rows: int = 0
    settings: dict = field(default_factory=dict)

    def record(self) -> dict:
        every = max(1, len(self.losses) // 20)
        return {"method": self.method, "site": self.site, "position": self.position, "steps": self.steps,
                "rows": self.rows, "final_loss": self.losses[-1] if self.losses else None,
                "first_loss": self.losses[0] if self.losses else None, "loss_every": every,
                "loss_history": self.losses[::every], "scale": self.scale, "seconds": round(self.seconds, 1),
                "norm": float(self.vector.norm()), **self.settings}


def _check(site, pair, position, steps, lr, batch_size) -> int:
    with pair.side("base") as model:
        parts = resolve_parts(model)
    if isinstance(site, bool) or not isinstance(site, int) or not 0 <= site <= parts.num_layers:
        raise ValueError(f"site must be an int in 0 … {parts.num_layers}, got {site!r}")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}; got {position!r}")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"steps ({steps}) and batch_size ({batch_size}) must be >= 1 and lr ({lr}) > 0")
    return parts.hidden_size


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def check_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Pair indices cut once, seeded: (the pairs the gradient sees, the check pairs that pick the iterate).
    ``round(n · fraction)`` check pairs, at least one when ``fraction`` > 0 and n ≥ 2, and never all of them."""
    if not 0 <= fraction < 1:
        raise ValueError(f"check_fraction must be in [0, 1), got {fraction}")
    order = list(range(n))
    random.Random(f"dsteer-eval/check/{seed}").shuffle(order)
    k = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
    return sorted(order[k:]), sorted(order[:k])


@dataclass
class Descent:
    """What :func:`descend` did: the train loss per step and the check loss at each check (step 0 = the zero
    vector), the step whose iterate was kept, and how often the step size was halved."""

    losses: list[float] = field(default_factory=list)
    checks: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    halvings: int = 0


def descend(d: int, steps: int, lr: float, n_batches: int, seed: int, step_loss, check_loss=None, *,
            warmup: int | None = None, check_every: int | None = None, on_step=None) -> tuple[torch.Tensor, Descent]:
    """Adam on one d-vector w (from 0) with the step size warmed up linearly over ``warmup`` steps and decayed
    linearly to a tenth by the last, ``step_loss(w, batch_index)`` each step.

    With ``check_loss(w)`` (the loss on check pairs the gradient never sees) the descent guards against overshoot:
    the check loss is read at w = 0 and every ``check_every`` steps; an iterate that beats the best so far is kept,
    one that does not is thrown away — w goes back to the best, the step size halves, Adam's moments restart and the
    warm-up runs again. The best iterate is returned, so the fit is never worse on the check pairs than no vector
    (it returns exactly 0 when nothing beats it). Without ``check_loss``: the last iterate."""
    warmup = max(1, steps // 10) if warmup is None else max(1, warmup)
    check_every = max(1, steps // 10) if check_every is None else max(1, check_every)
    w = torch.zeros(d, requires_grad=True)
    info, rate, since = Descent(), lr, 0
    best_w = w.detach().clone()
    if check_loss is not None:
        with torch.no_grad():
            best = float(check_loss(w))
        info.checks.append((0, best))
        info.best_step = 0
    opt = torch.optim.Adam([w], lr=rate)
    for step, which in enumerate(_schedule(n_batches, steps, seed)):
        since += 1
        for group in opt.param_groups:
            group["lr"] = rate * min(1.0, since / warmup) * (1.0 - 0.9 * step / steps)
        loss = step_loss(w, which)
        opt.zero_grad()
        loss.backward()
        opt.step()
        info.losses.append(float(loss.detach()))
        if on_step:
            on_step(step, info.losses[-1])
        if check_loss is None or ((step + 1) % check_every and step != steps - 1):
            continue
        with torch.no_grad():
            got = float(check_loss(w))
        info.checks.append((step + 1, got))
        if got < best:
            best, best_w, info.best_step = got, w.detach().clone(), step + 1
        elif step != steps - 1:  # overshot (or stalled): back to the best, half the step, fresh moments and warm-up
            with torch.no_grad():
                w.copy_(best_w)
            rate, since, info.halvings = rate / 2, 0, info.halvings + 1
            opt = torch.optim.Adam([w], lr=rate)
    return (best_w if check_loss is not None else w.detach().clone()), info


def _fixed_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Items cut once into batches after a seeded shuffle (so each batch's lower layers run once and are kept)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _schedule(n_batches: int, steps: int, seed: int):
    """Batch indices for ``steps`` steps: every batch once per epoch, epochs in a seeded order."""
    rng, order = random.Random(seed + 1), []
    for _ in range(steps):
        if not order:
            order = list(range(n_batches))
            rng.shuffle(order)
        yield order.pop()


def _guard_record(info: Descent, n_check: int, check_every: int | None, warmup: int | None, steps: int) -> dict:
    return {"check_pairs": n_check, "check_every": max(1, steps // 10) if check_every is None else check_every,
            "warmup": max(1, steps // 10) if warmup is None else warmup, "check_losses": info.checks,
            "best_step": info.best_step, "halvings": info.halvings,
            "rule": ("the iterate with the lowest loss on the check pairs (w = 0 included); an iterate that does not "
                     "improve it is undone and the step size halved") if n_check else "the last iterate (no check pairs)"}


def fit_distilled(pair, pairs: Sequence, site: int, *, direction: str = "install", position: str = "all",
                  steps: int = 150, lr: float = 0.05, batch_size: int = 8, seed: int = 0, limits: dict | None = None,
                  check_fraction: float = 0.25, check_every: int | None = None, warmup: int | None = None,
                  on_step: Callable[[int, float], None] | None = None) -> Fit:
    """v* (``install``: student = base + v, teacher = DPO) or u* (``undo``: student = DPO + u, teacher = base):
    :func:`descend` on the mean next-token KL(teacher ‖ student) over the completion tokens of both texts of each
    pair. A seeded ``check_fraction`` of the pairs (:func:`check_split`) is kept out of the gradient and picks the
    iterate, so a small target is not overshot."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'install' or 'undo', got {direction!r}")
    d = _check(site, pair, position, steps, lr, batch_size)
    if not pairs:
        raise ValueError("pairs: no rows to fit on")
    tok = pair.tokenizer
    encoded = encode_pairs(tok, pairs, **(limits or {}))
    train_idx, check_idx = check_split(len(encoded), check_fraction, seed)
    texts = [t for i in train_idx for t in encoded[i]]
    check_texts = [t for i in check_idx for t in encoded[i]]
    teacher, student = ("dpo", "base") if direction == "install" else ("base", "dpo")
    pad = _pad_id(tok)
    scale = state_scale(pair, texts, site, student, pad)
    started = time.perf_counter()
    batches = [collate([texts[i] for i in index], pad) for index in _fixed_batches(len(texts), batch_size, seed)]
    checks = [collate(check_texts[i:i + 16], pad) for i in range(0, len(check_texts), 16)]
    with torch.no_grad(), pair.side(teacher) as model:  # the teacher's post-norm states, kept: log-probs per step
        parts = resolve_parts(model)
        kept = [parts.decoder(input_ids=b.input_ids, attention_mask=b.attention_mask)[0][b.target]
                for b in batches + checks]
    steer_at = Steerer(site, position)

    def kl_on(w, which):
        batch = (batches + checks)[which]
        with torch.no_grad():
            target = F.log_softmax(parts.lm_head(kept[which]).float(), dim=-1)
        with pair.side(student) as model, frozen(model):
            got = steer_at(model, batch, scale * w, which)
        return kl_per_text(target, got, batch)

    def check_loss(w):  # the mean over the check texts (batches of up to 16)
        return sum(kl_on(w, len(batches) + j).sum() for j in range(len(checks))) / len(check_texts)

    w, info = descend(d, steps, lr, len(batches), seed, lambda w, which: kl_on(w, which).mean(),
                      check_loss if checks else None, warmup=warmup, check_every=check_every, on_step=on_step)
    return Fit((scale * w).detach().clone(), f"distill-{direction}", site, position, steps, info.losses, scale,
               time.perf_counter() - started, len(pairs),
               {"lr": lr, "batch_size": batch_size, "seed": seed, "teacher": teacher, "student": student,
                "objective": f"mean next-token KL({teacher} || {student} + v) over completion tokens",
                **_guard_record(info, len(check_idx), check_every, warmup, steps)})


@torch.no_grad()
def _reference_logps(pair, texts, pad, batch_size: int = 16) -> torch.Tensor:
    out = []
    with pair.side("base") as model:
        for start in range(0, len(texts), batch_size):
            batch = collate(texts[start:start + batch_size], pad)
            out.append(sequence_logps(target_logprobs(model, batch), batch))
    return torch.cat(out)


def fit_dpo_vector(pair, pairs: Sequence, site: int, *, beta: float = 0.1, position: str = "all", steps: int = 150,
                   lr: float = 0.05, batch_size: int = 8, seed: int = 0, limits: dict | None = None,
                   check_fraction: float = 0.25, check_every: int | None = None, warmup: int | None = None,
                   on_step: Callable[[int, float], None] | None = None) -> Fit:
    """v_DPO: the DPO loss on ``pairs`` with the policy = the base + v at ``site``, the reference = the base
    (frozen), by :func:`descend`; a seeded ``check_fraction`` of the pairs picks the iterate (the DPO loss on them,
    log 2 at v = 0). Only v trains; the DPO side of ``pair`` is not used."""
    d = _check(site, pair, position, steps, lr, batch_size)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not pairs:
        raise ValueError("pairs: no rows to fit on")
    tok = pair.tokenizer
    pad = _pad_id(tok)
    encoded = encode_pairs(tok, pairs, **(limits or {}))
    train_idx, check_idx = check_split(len(encoded), check_fraction, seed)
    flat = [t for two in encoded for t in two]
    ref = _reference_logps(pair, flat, pad).view(-1, 2)
    scale = state_scale(pair, [t for i in train_idx for t in encoded[i]], site, "base", pad)
    started = time.perf_counter()
    groups = [[train_idx[i] for i in g] for g in _fixed_batches(len(train_idx), max(1, batch_size // 2), seed)]
    checks = [check_idx[i:i + 8] for i in range(0, len(check_idx), 8)]
    batches = [collate([t for i in index for t in encoded[i]], pad) for index in groups + checks]
    steer_at = Steerer(site, position)

    def losses_on(w, which):
        with pair.side("base") as model, frozen(model):
            logps = sequence_logps(steer_at(model, batches[which], scale * w, which), batches[which]).view(-1, 2)
        ratio = logps - ref[(groups + checks)[which]]
        return -F.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1]))

    def check_loss(w):
        return sum(losses_on(w, len(groups) + j).sum() for j in range(len(checks))) / len(check_idx)

    w, info = descend(d, steps, lr, len(groups), seed, lambda w, which: losses_on(w, which).mean(),
                      check_loss if checks else None, warmup=warmup, check_every=check_every, on_step=on_step)
    return Fit((scale * w).detach().clone(), "dpo-vector", site, position, steps, info.losses, scale,
               time.perf_counter() - started, len(pairs),
               {"lr": lr, "batch_size": batch_size, "seed": seed, "beta": beta,
                "objective": "DPO loss, policy = base + v, reference = base",
                **_guard_record(info, len(check_idx), check_every, warmup, steps)})


@dataclass
class Measured:
    """Per-pair numbers on held-out rows (numpy-ready lists, one entry per pair)."""

    margin_base: torch.Tensor  # 0 by definition (kept for shape checks)
    margin_dpo: torch.Tensor
    kl_dpo_base: torch.Tensor  # mean over the pair's two texts of KL(π_DPO ‖ π_base): install's "before"
    kl_base_dpo: torch.Tensor  # KL(π_base ‖ π_DPO): undo's "before"
    steered: dict = field(default_factory=dict)  # name -> {"side", "margin", "kl_to_target"}


@torch.no_grad()
def measure(pair, pairs: Sequence, site: int, vectors: dict[str, tuple[str, torch.Tensor]], *,
            position: str = "all", batch_size: int = 16, limits: dict | None = None) -> Measured:
    """For each named ``(side, vector)`` (side: the model the vector is added to, ``base`` or ``dpo``), per pair:
    the implicit reward margin relative to the base and the KL to the *other* model (the target: DPO for a vector
    on the base, the base for one on DPO), each text's mean over its completion tokens, averaged over the two."""
    tok = pair.tokenizer
    pad = _pad_id(tok)
    encoded = encode_pairs(tok, pairs, **(limits or {}))
    out_margin = {k: [] for k in vectors}
    out_kl = {k: [] for k in vectors}
    margin_dpo, kl_db, kl_bd = [], [], []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        batch = collate([t for two in chunk for t in two], pad)
        steer_at = Steerer(site, position)
        with pair.side("base") as model:
            lp_base = target_logprobs(model, batch)
        with pair.side("dpo") as model:
            lp_dpo = target_logprobs(model, batch)
        seq_base = sequence_logps(lp_base, batch).view(-1, 2)

        def margin(lp):
            r = sequence_logps(lp, batch).view(-1, 2) - seq_base
            return r[:, 0] - r[:, 1]

        margin_dpo.append(margin(lp_dpo))
        kl_db.append(kl_per_text(lp_dpo, lp_base, batch).view(-1, 2).mean(1))
        kl_bd.append(kl_per_text(lp_base, lp_dpo, batch).view(-1, 2).mean(1))
        for side in ("base", "dpo"):  # each arm's log-probs are reduced at once: (positions × vocab) each is large
            with pair.side(side) as model:
                for k, (arm_side, v) in vectors.items():
                    if arm_side != side:
                        continue
                    lp = steer_at(model, batch, v, side)
                    out_margin[k].append(margin(lp))
                    out_kl[k].append(kl_per_text(lp_dpo if side == "base" else lp_base, lp, batch).view(-1, 2).mean(1))
                    del lp
    m_dpo = torch.cat(margin_dpo)
    return Measured(torch.zeros_like(m_dpo), m_dpo, torch.cat(kl_db), torch.cat(kl_bd),
                    {k: {"side": vectors[k][0], "margin": torch.cat(out_margin[k]), "kl_to_target": torch.cat(out_kl[k])}
                     for k in vectors})
