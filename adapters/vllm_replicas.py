"""Data-parallel replicas of a steered vLLM engine: Ray actors, each one engine with the steering installed.

lm-eval's ``--model vllm`` with ``data_parallel_size=N`` starts N Ray *tasks* per request batch, each building
a fresh ``LLM`` that no steering hook reaches. Here each replica is a long-lived Ray *actor* holding one engine
(``tensor_parallel_size`` GPUs each): it is started once, steered through ``collective_rpc`` on every one of its
workers (methods called by name on the engine's ``worker_extension_cls``: nothing pickled), re-pointed in place
between sweep points, its finite guard read after each call, and given an interleaved share of each request batch
(lm-eval's own ``distribute`` / ``undistribute``, so the answers come back in request order).

Multi-node: start a Ray cluster (``ray start --head`` on one node, ``ray start --address=HEAD:6379`` on the
others) and set ``RAY_ADDRESS``; the actors are placed across it (docs/scaling.md). Without a cluster
``ray.init()`` starts a local one. On a machine without GPUs (vLLM's CPU build) each actor asks Ray for one
CPU instead of ``tensor_parallel_size`` GPUs, and the replicas start one after another (each sizes its KV
cache from the memory free while it starts; two starting at once can both count the same memory).
"""

from __future__ import annotations

import os

from lm_eval.models.utils import undistribute
from more_itertools import distribute

from dsteer_eval.steering.engine_hooks import guard_counts, sum_counts

_DP_ENV = ("VLLM_DP_RANK", "VLLM_DP_RANK_LOCAL", "VLLM_DP_SIZE", "VLLM_DP_MASTER_IP", "VLLM_DP_MASTER_PORT")


class EngineReplica:
    """One engine (in a Ray actor), built with ``model_args``; :meth:`steer` installs or re-points its steering."""

    def __init__(self, model_args: dict) -> None:
        from vllm import LLM  # deferred: runs inside the actor's process

        for key in _DP_ENV:  # as lm-eval's replicas do: driver-side DP settings must not leak into a DP=1 engine
            os.environ.pop(key, None)
        args = {k: v for k, v in model_args.items() if k != "distributed_executor_backend"}
        self.llm = LLM(**args)

    def ready(self) -> bool:
        return True

    def steer(self, plan: dict) -> list:
        return self.llm.collective_rpc("dsteer_install", args=(plan,))

    def guard(self) -> list:
        return self.llm.collective_rpc("dsteer_guard")

    def generate(self, prompts: list, params: list, lora_request=None) -> list:
        return self.llm.generate(prompts, sampling_params=params, use_tqdm=False, lora_request=lora_request)


class ReplicaPool:
    """``size`` :class:`EngineReplica` actors; :meth:`steer` reaches every worker of every replica."""

    def __init__(self, size: int, model_args: dict, tensor_parallel_size: int = 1) -> None:
        import ray  # deferred: data parallelism only

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, ignore_reinit_error=True)
        gpus = ray.cluster_resources().get("GPU", 0)
        resources = {"num_gpus": tensor_parallel_size} if gpus else {"num_cpus": 1}
        actor = ray.remote(**resources)(EngineReplica)
        self._ray = ray
        self.replicas = []
        for _ in range(size):
            self.replicas.append(actor.remote(model_args))
            if not gpus:  # one machine's memory: vLLM's CPU build sizes its KV cache from what is free while it
                ray.get(self.replicas[-1].ready.remote())  # starts, so replicas start one after another
        ray.get([r.ready.remote() for r in self.replicas])  # every replica has started (steer() steers them)

    def __len__(self) -> int:
        return len(self.replicas)

    def steer(self, plan: dict) -> list:
        """Each worker's answer, replica after replica."""
        answers = self._ray.get([r.steer.remote(plan) for r in self.replicas])
        return [worker for replica in answers for worker in replica]

    def guard(self) -> list:
        """The finite guard's counts per slot since the last read, over every replica
        (:func:`dsteer_eval.steering.engine_hooks.read_guard`)."""
        return sum_counts(guard_counts(ranks) for ranks in self._ray.get([r.guard.remote() for r in self.replicas]))

    def generate(self, prompts: list, params: list, lora_request=None) -> list:
        shards = [list(x) for x in distribute(len(self.replicas), prompts)]
        param_shards = [list(x) for x in distribute(len(self.replicas), params)]
        refs = [r.generate.remote(p, s, lora_request)
                for r, p, s in zip(self.replicas, shards, param_shards, strict=True) if p]
        return undistribute(self._ray.get(refs) + [[] for _ in range(len(self.replicas) - len(refs))])

    def close(self) -> None:
        for replica in self.replicas:
            self._ray.kill(replica)
        self.replicas = []
