"""Which request, position and steering slot each token of a serving engine's step belongs to.

A vLLM step is one flat batch of tokens from many requests (prefill chunks and decode tokens together), laid
out request by request in the model runner's order: request r owns tokens ``query_start_loc[r] ..
query_start_loc[r+1]``, at absolute positions ``num_computed_tokens[r] + 0, 1, ...``. Padding after the last
request (vLLM pads to captured batch sizes) belongs to none and is never steered.

Each request may carry, in ``SamplingParams.extra_args``:

* ``dsteer_prompt_len``: where its prompt ends (a log-likelihood request's context length: vLLM sees context
  and continuation as one prompt); default: the request's prompt length (generation);
* ``dsteer_slot``: which of the engine's steering slots it uses (default 0; slots hold one steering setting
  each, e.g. the α grid of a sweep, so one engine pass serves several settings).

Positions follow :func:`dsteer_eval.steering.hook.position_mask`: ``prompt`` = positions < p, ``completion`` =
positions ≥ p, ``last`` = position p − 1, ``all`` = every position. Duck-typed on vLLM's v1 GPU/CPU model
runner (``input_batch.req_ids``, ``input_batch.num_computed_tokens_cpu``, ``query_start_loc.np``,
``requests[id].sampling_params`` / ``num_prompt_tokens``); nothing here imports vLLM.
"""

from __future__ import annotations

import numpy as np

PROMPT_LEN = "dsteer_prompt_len"
SLOT = "dsteer_slot"


def position_weights(position: str, positions: np.ndarray, prompt_len: int) -> np.ndarray:
    """1.0 where ``position`` steers a token at absolute ``positions`` of a request whose prompt has
    ``prompt_len`` tokens, else 0.0."""
    if position == "all":
        return np.ones(len(positions), dtype=np.float32)
    if position == "prompt":
        keep = positions < prompt_len
    elif position == "completion":
        keep = positions >= prompt_len
    elif position == "last":
        keep = positions == prompt_len - 1
    else:
        raise ValueError(f"position {position!r}: use all, prompt, completion or last")
    return keep.astype(np.float32)


def step_layout(runner, n_tokens: int, position: str, n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """``(slots, weights)`` for the ``n_tokens`` tokens of the runner's current step: each token's steering slot
    (int64) and whether its position is steered (float32; 0 for padding)."""
    batch = runner.input_batch
    ids = list(batch.req_ids[: batch.num_reqs])
    starts = runner.query_start_loc.np[: len(ids) + 1]
    computed = batch.num_computed_tokens_cpu[: len(ids)]
    slots = np.zeros(n_tokens, dtype=np.int64)
    weights = np.zeros(n_tokens, dtype=np.float32)
    for r, req_id in enumerate(ids):
        start, end = int(starts[r]), int(starts[r + 1])
        if end <= start:
            continue
        request = runner.requests[req_id]
        extra = getattr(request.sampling_params, "extra_args", None) or {}
        slot = int(extra.get(SLOT, 0))
        if not 0 <= slot < n_slots:
            raise RuntimeError(f"request {req_id} asks for steering slot {slot}; the engine has {n_slots}")
        prompt_len = int(extra.get(PROMPT_LEN, request.num_prompt_tokens))
        positions = int(computed[r]) + np.arange(end - start)
        slots[start:end] = slot
        weights[start:end] = position_weights(position, positions, prompt_len)
    return slots, weights
