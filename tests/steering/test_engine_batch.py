"""Which request, position and steering slot each token of a vLLM step belongs to (steering/engine_batch.py),
on a stand-in for vLLM's model runner: the per-token layout steered-vllm's positions and per-request steering
rest on, checked without vLLM (tests/backend_vllm checks the numbers against --model steered)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dsteer_eval.steering.engine_batch import PROMPT_LEN, SLOT, position_weights, step_layout


def _runner(requests, computed, scheduled):
    """``requests``: (id, prompt length, extra_args) in the batch's order; ``computed``: tokens each had done
    before this step; ``scheduled``: tokens each runs in it."""
    starts = np.concatenate([[0], np.cumsum(scheduled)]).astype(np.int32)
    batch = SimpleNamespace(req_ids=[r[0] for r in requests] + [None], num_reqs=len(requests),
                            num_computed_tokens_cpu=np.array(computed + [0], dtype=np.int32))
    states = {rid: SimpleNamespace(num_prompt_tokens=n, sampling_params=SimpleNamespace(extra_args=extra))
              for rid, n, extra in requests}
    return SimpleNamespace(input_batch=batch, requests=states,
                           query_start_loc=SimpleNamespace(np=np.concatenate([starts, [starts[-1]] * 3])))


def test_positions_follow_the_hf_masks():
    pos = np.arange(6)
    assert position_weights("all", pos, 4).tolist() == [1] * 6
    assert position_weights("prompt", pos, 4).tolist() == [1, 1, 1, 1, 0, 0]
    assert position_weights("completion", pos, 4).tolist() == [0, 0, 0, 0, 1, 1]
    assert position_weights("last", pos, 4).tolist() == [0, 0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="position 'middle'"):
        position_weights("middle", pos, 4)


def test_a_mixed_step_maps_every_token_to_its_request_slot_and_position():
    # a: a log-likelihood request (context 3 of 5 prompt tokens) prefilling in full, slot 2;
    # b: a generation request (prompt 4) decoding its 3rd new token (position 6), slot 1;
    # c: a generation request, second prefill chunk (positions 4..6 of a 7-token prompt), default slot; then padding
    runner = _runner([("a", 5, {PROMPT_LEN: 3, SLOT: 2}), ("b", 4, {SLOT: 1}), ("c", 7, None)],
                     computed=[0, 6, 4], scheduled=[5, 1, 3])
    slots, weights = step_layout(runner, 11, "completion", n_slots=3)
    assert slots.tolist() == [2, 2, 2, 2, 2, 1, 0, 0, 0, 0, 0]
    assert weights.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]  # a: 3, 4; b: 6 >= 4; c: all prompt; padding never
    slots, weights = step_layout(runner, 11, "last", n_slots=3)
    assert weights.tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]  # a's position 2, c's position 6
    _, weights = step_layout(runner, 11, "prompt", n_slots=3)
    assert weights.tolist() == [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    _, weights = step_layout(runner, 11, "all", n_slots=3)
    assert weights.tolist() == [1] * 9 + [0, 0]


def test_a_slot_the_engine_does_not_hold_is_an_error():
    runner = _runner([("a", 2, {SLOT: 3})], computed=[0], scheduled=[2])
    with pytest.raises(RuntimeError, match="slot 3; the engine has 2"):
        step_layout(runner, 2, "all", n_slots=2)
