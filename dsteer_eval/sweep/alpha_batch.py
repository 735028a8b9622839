"""All grid points of one (side, layer) in one ``generate`` call: rows = prompts x points.

A sweep evaluates its points one after another (lm-eval runs one model per unit).  For
generation tasks that repeats the whole decode loop per point, although decoding a few
rows costs about as much as decoding one (each step reads every weight once).  With a
*group* set (:meth:`SweepLM.set_group`: the points that share a side and a steered
layer), the first point's ``generate`` call for a batch of prompts runs every point of
the group at once: the prompts repeated once per point, each row steered by its own
``alpha * v`` (per-row shift at the site, see :func:`dsteer_eval.steering.row_edits.row_shift_edit`).  The other
points' outputs are kept, keyed by the exact prompt tokens, attention mask, length
limit, stop strings and generation settings, and returned when lm-eval asks for that
point; anything not found is generated as before.

Greedy outputs are those of separate runs (tested): each row's computation does not
depend on the other rows, and lm-eval cuts every row at its own stop string.  Sampling
(``do_sample``) is never batched (one random stream per row would differ), nor are
``mode=ablate``, ``norm_preserve`` or built-in ``steer_path`` edits.  Memory:
``--batch-size`` counts prompts; a batched call holds ``batch size x points`` rows
(``DSTEER_GEN_BATCH_ROWS`` caps the rows of one call; groups larger than that run in
several calls).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from dsteer_eval.common.env_numbers import env_number


def max_rows() -> int:
    return env_number("DSTEER_GEN_BATCH_ROWS", 256, "rows", minimum=1)


@dataclass(frozen=True)
class GroupPoint:
    """One point of a group: ``name`` (the sweep's folder name) and its shift ``alpha * v``
    (``None``: unsteered)."""

    name: str
    delta: torch.Tensor | None


def _digest(t: torch.Tensor | None) -> str:
    if t is None:
        return "-"
    return hashlib.blake2b(t.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest() + \
        str(tuple(t.shape))


def generation_key(context, max_length, stop, kwargs) -> tuple:
    mask = kwargs.get("attention_mask")
    rest = tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k != "attention_mask"))
    return _digest(context), _digest(mask), int(max_length), tuple(stop or ()), rest


def loglik_key(requests) -> str:
    """A digest of a list of log-likelihood requests (context and continuation tokens, in order)."""
    digest = hashlib.blake2b(digest_size=16)
    for _, context, continuation in requests:
        digest.update(repr((tuple(context), tuple(continuation))).encode())
    return digest.hexdigest()


def shift_dim(group: list[GroupPoint]) -> int:
    return next(p.delta for p in group if p.delta is not None).shape[0]


def group_shifts(points: list[GroupPoint], rows: int, d: int) -> torch.Tensor:
    """``(len(points) * rows, d)`` per-row shifts, point-major (zeros for an unsteered point)."""
    return torch.cat([(p.delta if p.delta is not None else torch.zeros(d)).float().expand(rows, d) for p in points])


class GenerationStore:
    """Outputs generated for the other points of a group, until lm-eval asks for them."""

    def __init__(self) -> None:
        self._store: dict[tuple, torch.Tensor] = {}
        self.stats = {"batched_calls": 0, "served": 0, "rows": 0}

    def __len__(self) -> int:
        return len(self._store)

    def take(self, point: str, key: tuple) -> torch.Tensor | None:
        out = self._store.pop((point, key), None)
        if out is not None:
            self.stats["served"] += 1
        return out

    def put(self, point: str, key: tuple, output: torch.Tensor) -> None:
        self._store[(point, key)] = output

    def clear(self) -> None:
        self._store.clear()


def batched_generate(generate, group: list[GroupPoint], current: str, context: torch.Tensor, kwargs: dict,
                     store: GenerationStore, key: tuple) -> torch.Tensor:
    """Run ``generate(rows_context, rows_kwargs, shifts)`` for every point of ``group`` (in calls of at most
    :func:`max_rows` rows); keep the others' outputs in ``store``; return ``current``'s."""
    n, d = context.shape[0], shift_dim(group)
    per_call = max(1, max_rows() // n)
    mine = None
    for start in range(0, len(group), per_call):
        chunk = group[start:start + per_call]
        rows = context.repeat(len(chunk), 1)
        rows_kwargs = dict(kwargs)
        if isinstance(kwargs.get("attention_mask"), torch.Tensor):
            rows_kwargs["attention_mask"] = kwargs["attention_mask"].repeat(len(chunk), 1)
        out = generate(rows, rows_kwargs, group_shifts(chunk, n, d))
        store.stats["batched_calls"] += 1
        store.stats["rows"] += rows.shape[0]
        for i, point in enumerate(chunk):
            part = out[i * n:(i + 1) * n]
            if point.name == current:
                mine = part
            else:
                store.put(point.name, key, part)
    if mine is None:
        raise RuntimeError(f"per-row generation: point {current} is not in its own group (internal error)")
    return mine
