"""The finite guard inside a serving engine's worker (steering/engine_hooks.py), on a stand-in for vLLM's
Llama-style model and model runner: per-slot counts of real tokens whose LM-head input (the final norm's output,
after steering there) is NaN/inf or all zero, padding excluded, read once and cleared. Needs no vLLM (the numbers
against ``--model steered`` are in test_steered_vllm.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dsteer_eval.steering import engine_hooks
from dsteer_eval.steering.engine_batch import SLOT
from dsteer_eval.steering.guard import NonFiniteStateError

D = 4


class _Layer(nn.Module):  # vLLM's decoder layers return (hidden, residual)
    def forward(self, hidden, residual):
        return hidden, residual


class _Norm(nn.Module):
    def forward(self, hidden, residual):
        return hidden + residual, hidden + residual


class _Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(8, D)
        self.layers = nn.ModuleList([_Layer(), _Layer()])
        self.norm = _Norm()


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _Inner()

    def forward(self, input_ids, positions, states):
        """``states``: the final norm's input per token, as (hidden, residual) = (states, 0)."""
        return self.model.norm(states, torch.zeros_like(states))[0]


def _runner(slots, scheduled):
    """One request per entry of ``slots`` (its steering slot), ``scheduled`` tokens each."""
    starts = np.concatenate([[0], np.cumsum(scheduled)]).astype(np.int32)
    ids = [f"r{i}" for i in range(len(slots))]
    batch = SimpleNamespace(req_ids=ids, num_reqs=len(ids), num_computed_tokens_cpu=np.zeros(len(ids), np.int32))
    requests = {rid: SimpleNamespace(num_prompt_tokens=n, sampling_params=SimpleNamespace(extra_args={SLOT: s}))
                for rid, s, n in zip(ids, slots, scheduled)}
    return SimpleNamespace(input_batch=batch, requests=requests, max_num_tokens=64,
                           query_start_loc=SimpleNamespace(np=np.concatenate([starts, [starts[-1]] * 2])),
                           get_model=lambda: None)


def _step(model, states):
    n = states.shape[0]
    model(torch.zeros(n, dtype=torch.long), torch.arange(n), states)


def _plan(*alphas, site=1):
    return {"position": "all", "slots": [[(site, "add", a, [1.0] * D)] if a else [] for a in alphas]}


def test_one_slot_counts_nonfinite_and_collapsed_real_tokens_and_ignores_padding():
    model = _Model()
    runner = _runner([0, 0], [2, 1])  # and two padding tokens
    engine_hooks.steer(model, _plan(1.0), runner)
    states = torch.ones(5, D)
    states[1, 2] = float("nan")  # request 0's second token
    states[2] = 0.0  # request 1's token: collapsed
    states[3:] = float("inf")  # padding: never read
    _step(model, states)
    _step(model, torch.ones(5, D))
    assert engine_hooks.read_guard(model) == [[1, 1]]
    assert engine_hooks.read_guard(model) == [[0, 0]]  # read once, then cleared


def test_several_slots_are_counted_apart():
    model = _Model()
    runner = _runner([0, 1, 2, 1], [1, 2, 1, 1])
    engine_hooks.steer(model, _plan(1.0, 2.0, 3.0), runner)
    states = torch.ones(5, D)
    states[1] = 0.0  # slot 1
    states[2, 0] = float("-inf")  # slot 1
    states[4] = 0.0  # slot 1 (request 3)
    _step(model, states)
    assert engine_hooks.read_guard(model) == [[0, 0], [1, 2], [0, 0]]


def test_the_guard_reads_the_state_after_steering_at_the_final_norm():
    """Steering at the final site (n = 2 here) shifts the LM head's input: the guard sees the shifted state."""
    model = _Model()
    engine_hooks.steer(model, _plan(-1.0, site=2), _runner([0], [3]))
    _step(model, torch.ones(3, D))  # 1 - 1 = 0: collapsed only after the shift
    assert engine_hooks.read_guard(model) == [[0, 3]]
    engine_hooks.steer(model, _plan(1.0, site=2), _runner([0], [3]))
    _step(model, torch.ones(3, D))
    assert engine_hooks.read_guard(model) == [[0, 0]]


def test_counts_combine_over_ranks_and_replicas_and_name_the_model_args():
    ranks = [[[0, 1], [2, 0]], [[0, 1], [2, 0]], [[0, 1], [1, 0]]]  # tensor-parallel ranks: the same tokens
    assert engine_hooks.guard_counts(ranks) == [[0, 1], [2, 0]]
    assert engine_hooks.sum_counts([[[0, 1], [2, 0]], [[0, 3], [0, 0]]]) == [[0, 4], [2, 0]]  # replicas
    assert engine_hooks.guard_error("alpha=1", [0, 0]) is None
    error = engine_hooks.guard_error("layer=20, alpha=-6.23e+28, dtype=float32", [0, 7])
    assert isinstance(error, NonFiniteStateError)
    assert str(error).startswith("steered model (layer=20, alpha=-6.23e+28, dtype=float32): a forward pass "
                                 "collapsed: the state feeding the LM head is all zero for 7 token(s)")
    error = engine_hooks.guard_error("alpha=2, dtype=float16", [3, 7])  # NaN/inf named first
    assert str(error).startswith("steered model (alpha=2, dtype=float16): a forward pass gave NaN/inf states at "
                                 "the LM head's input (3 token(s))")
    with pytest.raises(NonFiniteStateError, match="float16 overflows above 65504"):
        raise error


def test_the_worker_extension_is_called_by_name():
    """vLLM mixes ``worker_extension_cls`` into its worker class; collective_rpc names the methods (strings)."""
    model = _Model()
    runner = _runner([0], [2])
    runner.get_model = lambda: model
    worker = type("Worker", (engine_hooks.SteeringWorker,), {})()
    worker.model_runner = runner
    assert engine_hooks.EXTENSION == "dsteer_eval.steering.engine_hooks.SteeringWorker"
    assert worker.dsteer_install(_plan(1.0)) == {"slots": 1, "position": "all", "slot0": {1: [("add", 1.0)]}}
    _step(model, torch.zeros(2, D))
    assert worker.dsteer_guard() == [[0, 2]]
