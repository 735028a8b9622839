"""Steering inside a serving engine's model: vLLM's Llama-style decoders, in every worker.

vLLM's decoder layers return ``(hidden, residual)``: the residual stream that a transformers model returns
as ``hidden_states[i]`` is their sum (the next layer's fused add-and-norm forms it; the final norm too), so
adding α·v to ``hidden`` adds it to the stream exactly where :func:`dsteer_eval.steering.hook.steer` adds it
at the same site. Sites follow :mod:`dsteer_eval.steering.sites`: 0 = the token embeddings' output,
i = ``layers[i-1]``'s output, n = the final norm's output (its first element).

* ``add``: the stream gains Σ α·v (summed in float32, added in the model's dtype), as ``steer`` does;
* ``ablate``: the stream h = hidden + residual loses α·(h·v̂)·v̂ (float32), taken off ``hidden``; at one
  site ablation reads the incoming state and additions follow, as in ``steer``.

**Slots.** The engine holds one or more steering settings ("slots": slot 0 is the model's own, further
slots e.g. the other α points of a sweep); each request picks one (:mod:`dsteer_eval.steering.engine_batch`),
so one engine pass can serve a whole α grid. **Positions** (``prompt``/``completion``/``last``) are a
per-token weight from each request's prompt length. With one slot and ``position=all`` the hooks add slot 0's
shift to every token, with no per-token work.

Every site's hook reads persistent tables (``[slots, d]`` shifts, ablation α and v̂), and a pre-hook on the
model fills two per-token buffers (slot, weight) for each step. Re-pointing (:func:`install`) copies new
values into those tensors in place (``Tensor.copy_``) while the sites and the slot count fit, so a captured
CUDA graph, which replays fixed addresses, sees the new α without re-capture; a site in no setting keeps a
zero shift (x + 0 = x exactly). These functions run in the engine's worker processes, called by name through
``LLM.collective_rpc`` on :class:`SteeringWorker` (vLLM's ``worker_extension_cls``: nothing is pickled), so
they take plain data (lists), never tensors of the caller's process.

**The finite guard.** A hook on the final norm (after any steering there: the LM head's input) counts, per
steering slot, the real tokens of each step (padding excluded) whose state holds NaN/inf or is all zero (α·v
overflowing a norm's mean square: every logit equal, the shortest choice would win). Tensor ops only, on the
device: no sync per layer or step. :meth:`SteeringWorker.dsteer_guard` reads and clears the counts once per
engine call; the driver raises (:func:`guard_error`, :class:`~dsteer_eval.steering.guard.NonFiniteStateError`).
"""

from __future__ import annotations

import torch

from dsteer_eval.steering.engine_batch import step_layout
from dsteer_eval.steering.guard import NonFiniteStateError

ATTR = "_dsteer_engine_steering"
NONFINITE, COLLAPSED = 0, 1  # the guard's two counts per slot


def _inner(model):
    return getattr(model, "model", model)


def num_layers(model) -> int:
    return len(_inner(model).layers)


def _site_module(model, site: int):
    inner = _inner(model)
    n = len(inner.layers)
    if not 0 <= site <= n:
        raise ValueError(f"site {site} outside 0..{n}")
    return inner.embed_tokens if site == 0 else inner.norm if site == n else inner.layers[site - 1]


def _make_hook(state: dict, site: int, is_norm: bool):
    def hook(module, args, output):
        tables = state["sites"][site]
        hidden = output[0] if isinstance(output, tuple) else output
        per_token = state["per_token"]
        n = hidden.shape[0]
        if per_token and hidden.dim() != 2:
            raise RuntimeError(f"per-token steering expects (tokens, hidden) states, got {tuple(hidden.shape)}")
        if tables["ablates"]:
            residual = output[1] if isinstance(output, tuple) and len(output) > 1 and not is_norm else None
            stream = hidden.float() if residual is None else hidden.float() + residual.float()
            if per_token:
                slot = state["slot"][:n]
                u = tables["unit"][slot]
                alpha = tables["alpha"][slot] * state["weight"][:n].float()
                hidden = (hidden.float() - (alpha * (stream * u).sum(-1))[:, None] * u).to(hidden.dtype)
            else:
                u = tables["unit"][0]
                hidden = (hidden.float() - tables["alpha"][0] * (stream @ u)[..., None] * u).to(hidden.dtype)
        if tables["adds"]:
            if per_token:
                hidden = hidden + tables["shift"][state["slot"][:n]] * state["weight"][:n, None]
            else:
                hidden = hidden + tables["shift"][0]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
    return hook


def _make_guard(state: dict):
    def guard(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        flat = hidden.detach().reshape(-1, hidden.shape[-1])
        n = flat.shape[0] if state["n_real"] is None else min(state["n_real"], flat.shape[0])
        if n == 0:
            return None
        lo, hi = torch.aminmax(flat[:n], dim=-1)  # per token; NaN propagates to both
        flags = torch.stack((~(torch.isfinite(lo) & torch.isfinite(hi)), (lo == 0) & (hi == 0)), -1).long()
        if state["per_token"]:
            state["guard"].index_add_(0, state["slot"][:n], flags)
        else:
            state["guard"][0].add_(flags.sum(0))
        return None
    return guard


def _real_tokens(runner) -> int | None:
    """How many tokens of the runner's current step belong to requests (the rest is padding)."""
    if runner is None:
        return None
    return int(runner.query_start_loc.np[runner.input_batch.num_reqs])


def _make_pre_hook(state: dict):
    def pre_hook(module, args, kwargs):
        state["n_real"] = _real_tokens(state["runner"])
        if not state["per_token"]:
            return None
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        n = int(positions.shape[-1])
        if state["runner"] is None:
            raise RuntimeError("per-token steering needs the engine's model runner (install through collective_rpc)")
        slots, weights = step_layout(state["runner"], n, state["position"], state["n_slots"])
        if n > state["slot"].shape[0]:  # more tokens than ever seen: grow (eager mode only)
            state["slot"] = torch.zeros(n, dtype=torch.long, device=state["slot"].device)
            state["weight"] = torch.zeros(n, dtype=state["weight"].dtype, device=state["weight"].device)
        state["slot"][:n].copy_(torch.from_numpy(slots), non_blocking=True)
        state["weight"][:n].copy_(torch.from_numpy(weights), non_blocking=True)
        return None
    return pre_hook


def _tables(size: int, slots: int, dtype, device) -> dict:
    return {"shift": torch.zeros(slots, size, dtype=dtype, device=device),
            "alpha": torch.zeros(slots, dtype=torch.float32, device=device),
            "unit": torch.zeros(slots, size, dtype=torch.float32, device=device),
            "adds": False, "ablates": False}


def _state(model, runner) -> dict:
    state = getattr(model, ATTR, None)
    if state is None:
        param = next(model.parameters())
        capacity = int(getattr(runner, "max_num_tokens", 0) or 8192)
        state = {"sites": {}, "handles": [], "per_token": False, "position": "all", "n_slots": 1, "runner": runner,
                 "slot": torch.zeros(capacity, dtype=torch.long, device=param.device),
                 "weight": torch.zeros(capacity, dtype=param.dtype, device=param.device),
                 "guard": torch.zeros(1, 2, dtype=torch.long, device=param.device), "n_real": None}
        state["handles"].append(model.register_forward_pre_hook(_make_pre_hook(state), with_kwargs=True))
        # the LM head's input: the final norm's output, after a steering hook there (those are prepended)
        state["handles"].append(_inner(model).norm.register_forward_hook(_make_guard(state)))
        setattr(model, ATTR, state)
    if runner is not None:
        state["runner"] = runner
    return state


def steer(model, plan: dict, runner=None) -> dict:
    """Steer ``model`` with ``plan`` = ``{"position": all|prompt|completion|last, "slots": [settings]}``, each
    setting a list of ``(site, mode, alpha, vector as a list)``. Hooks are installed at new sites; every known
    site's tables are rewritten in place. Returns what is in place, ``{"slots": n, "position": p, "slot0":
    {site: [(mode, alpha), ...]}}``, for the caller to check."""
    settings = plan["slots"] or [[]]
    state = _state(model, runner)
    param = next(model.parameters())
    n_layers = num_layers(model)
    wanted: dict[int, list] = {}
    for k, setting in enumerate(settings):
        for site, mode, alpha, vector in setting:
            wanted.setdefault(int(site), [[] for _ in settings])[k].append((mode, float(alpha), vector))
    for site, per_slot in wanted.items():
        size = len(next(v for entries in per_slot for _, _, v in entries))
        if site not in state["sites"] or state["sites"][site]["shift"].shape[0] < len(settings):
            module = _site_module(model, site)
            old = state["sites"].get(site)
            state["sites"][site] = _tables(size, len(settings), param.dtype, param.device)
            if old is None:  # prepended: at the final norm the guard (registered first) reads the steered state
                state["handles"].append(module.register_forward_hook(_make_hook(state, site, site == n_layers),
                                                                     prepend=True))
        tables = state["sites"][site]
        shift = torch.zeros(tables["shift"].shape, dtype=torch.float32)
        alpha = torch.zeros(tables["alpha"].shape, dtype=torch.float32)
        unit = torch.zeros(tables["unit"].shape, dtype=torch.float32)
        for k, entries in enumerate(per_slot):
            ablations = [(a, v) for mode, a, v in entries if mode == "ablate"]
            if len(ablations) > 1:
                raise ValueError(f"site {site}: one ablation per site and setting (got {len(ablations)})")
            for a, v in ablations:
                v = torch.tensor(v, dtype=torch.float32)
                alpha[k], unit[k] = a, v / v.norm()
            for mode, a, v in entries:
                if mode == "add":
                    shift[k] += a * torch.tensor(v, dtype=torch.float32)
                elif mode != "ablate":
                    raise ValueError(f"mode {mode!r}: use add or ablate")
        tables["shift"].copy_(shift.to(tables["shift"].dtype))
        tables["alpha"].copy_(alpha)
        tables["unit"].copy_(unit)
        tables["adds"] = any(m == "add" for entries in per_slot for m, _, _ in entries)
        tables["ablates"] = any(m == "ablate" for entries in per_slot for m, _, _ in entries)
    for site, tables in state["sites"].items():
        if site not in wanted:  # steered before, not now: adds zero
            tables["shift"].zero_()
            tables["alpha"].zero_()
            tables["adds"] = tables["ablates"] = False
    state["position"], state["n_slots"] = plan["position"], len(settings)
    if state["guard"].shape[0] < len(settings):
        state["guard"] = torch.zeros(len(settings), 2, dtype=torch.long, device=param.device)
    state["guard"].zero_()  # counts belong to the settings held: none yet
    state["per_token"] = plan["position"] != "all" or len(settings) > 1
    if state["per_token"] and state["runner"] is None:
        raise ValueError(f"position={plan['position']} or several slots need the engine's model runner: "
                         "install with engine_hooks.install through LLM.collective_rpc")
    return {"slots": len(settings), "position": plan["position"],
            "slot0": {site: [(m, a) for m, a, _ in entries[0]] for site, entries in wanted.items() if entries[0]}}


def install(worker, plan: dict) -> dict:
    """:func:`steer` on a vLLM worker's model, with its model runner (for per-request positions and slots)."""
    runner = worker.model_runner
    return steer(runner.get_model(), plan, runner)


def read_guard(model) -> list:
    """``[[non-finite, collapsed], ...]`` real tokens per slot held since the last read (then cleared)."""
    state = getattr(model, ATTR, None)
    if state is None:
        return []
    counts = state["guard"][: state["n_slots"]].tolist()  # the one sync: once per engine call
    state["guard"].zero_()
    return counts


class SteeringWorker:
    """vLLM's ``worker_extension_cls`` (:data:`EXTENSION`): mixed into every worker, so the driver calls these by
    name, ``LLM.collective_rpc("dsteer_install", args=(plan,))``, and vLLM serialises plain data only."""

    def dsteer_install(self, plan: dict) -> dict:
        return install(self, plan)

    def dsteer_guard(self) -> list:
        return read_guard(self.model_runner.get_model())


EXTENSION = f"{SteeringWorker.__module__}.{SteeringWorker.__qualname__}"


def _combine(answers, how) -> list:
    total: list = []
    for answer in answers:
        for slot, counts in enumerate(answer):
            if slot == len(total):
                total.append([0, 0])
            total[slot] = [how(a, int(b)) for a, b in zip(total[slot], counts)]
    return total


def guard_counts(ranks) -> list:
    """One engine's counts from its workers' :func:`read_guard` answers: its tensor-parallel ranks all see the same
    tokens (the largest count per slot)."""
    return _combine(ranks, max)


def sum_counts(engines) -> list:
    """Several engines' :func:`guard_counts` (data-parallel replicas: each ran its own requests), summed."""
    return _combine(engines, lambda a, b: a + b)


def guard_error(label: str, counts) -> NonFiniteStateError | None:
    """The error for one slot's ``[non-finite, collapsed]`` token counts (None when both are 0); ``label``: the
    model args that steered it, as ``k=v, ...``."""
    if counts[NONFINITE]:
        return NonFiniteStateError(
            f"steered model ({label}): a forward pass gave NaN/inf states at the LM head's input "
            f"({counts[NONFINITE]} token(s)); log-likelihoods and generations from it would be meaningless, so "
            f"the run stops instead of scoring them. Use a smaller alpha, dtype=float32 (float16 overflows above "
            f"65504), or check the vector")
    if counts[COLLAPSED]:
        return NonFiniteStateError(
            f"steered model ({label}): a forward pass collapsed: the state feeding the LM head is all zero for "
            f"{counts[COLLAPSED]} token(s) (their logits are the same for every vocabulary entry), as when "
            f"alpha*v overflows the model's normalisation; every choice would score alike and the shortest would "
            f"win, so the run stops instead of scoring them. Use a much smaller alpha (|alpha*v| well below the "
            f"hidden-state norm), or check the vector")
    return None


def remove(model) -> int:
    """Take every steering hook off ``model``; returns how many site hooks there were."""
    state = getattr(model, ATTR, None) or {}
    for handle in state.get("handles", []):
        handle.remove()
    if hasattr(model, ATTR):
        delattr(model, ATTR)
    return len(state.get("sites", {}))
