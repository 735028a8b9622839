"""Data parallel through `accelerate launch`, as lm-eval's HF models do it, on CPU processes (gloo).

The same `lm_eval --model steered` job in one process and in two `accelerate launch` processes
must give the same metrics; the two-process run must really split the documents between ranks.

How the two processes are launched on a CPU-only machine (accelerate 1.x):

* `accelerate launch --cpu --num_processes 2` starts ONE process (its "simple launcher"; several
  CPU processes need `mpirun` and `--mpirun_hostfile`), silently.
* `accelerate launch --multi_gpu --num_processes 2` starts two processes through torchrun; with
  `ACCELERATE_USE_CPU=1` their Accelerator is MULTI_CPU with the gloo backend.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate", reason="data parallel runs need `accelerate` (accelerate launch)")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("this torch has no torch.distributed gloo backend for CPU processes", allow_module_level=True)

from test_tasks import write_vector  # noqa: E402

TASKS = ["dsteer_hh_mini", "truthfulqa_gen_mini"]
LIMIT = 5  # odd on purpose: rank 0 gets docs 0,2,4 and rank 1 docs 1,3 (lm-eval pads rank 1)
TIMEOUT = 300
HH_METRICS = ["acc", "acc_norm", "logprob_margin"]
GEN_METRICS = [f"{m}_{k}" for m in ("bleu", "rouge1", "rouge2", "rougeL") for k in ("max", "acc", "diff")]
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "ACCELERATE_USE_CPU")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    # CPU only, also on a GPU machine: both runs must compute the same float32 numbers
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lm_eval_args(tiny_dir: str, vector: str, out: Path) -> list[str]:
    return ["-m", "lm_eval", "--model", "steered",
            "--model_args", f"pretrained={tiny_dir},vector={vector},layer=2,alpha=-1.0",
            "--tasks", ",".join(TASKS), "--limit", str(LIMIT), "--batch_size", "4", "--device", "cpu",
            "--gen_kwargs", "max_gen_toks=8", "--output_path", str(out), "--log_samples"]


class _Job:
    """A subprocess whose output goes to a file; its whole process group is killed on failure."""

    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.cmd, self.log = cmd, log
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                         start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def finish(self) -> str:
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"timed out after {TIMEOUT} s: {' '.join(self.cmd)}\n{self.log.read_text()[-4000:]}")
        text = self.log.read_text()
        assert self.proc.returncode == 0, f"{' '.join(self.cmd)}\n{text[-4000:]}"
        return text


def _read(out: Path):
    results = list(out.rglob("results_*.json"))
    assert len(results) == 1, results  # written once, by rank 0
    data = json.loads(results[0].read_text())
    samples = {}
    for task in TASKS:
        (path,) = out.rglob(f"samples_{task}_*.jsonl")
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return data, samples


@pytest.fixture(scope="module")
def runs(tiny, tiny_dir, tmp_path_factory):
    """The same job as plain `lm_eval` (1 process) and under `accelerate launch` (2 CPU processes)."""
    tmp = tmp_path_factory.mktemp("dp")
    vector = write_vector(tmp / "v.safetensors", tiny[0])
    # both at once: most of each run is process start-up (imports, task index), single-threaded
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port())]
    jobs = [_Job([sys.executable, *_lm_eval_args(tiny_dir, vector, tmp / "one")], _env(), tmp / "one.log"),
            _Job([*launch, *_lm_eval_args(tiny_dir, vector, tmp / "two")], _env(ACCELERATE_USE_CPU="1"),
                 tmp / "two.log")]
    try:
        one, two = (job.finish() for job in jobs)
    finally:
        for job in jobs:
            job.kill()
    return {"one": (one, *_read(tmp / "one")), "two": (two, *_read(tmp / "two"))}


def test_two_processes_really_split_the_documents(runs):
    log, _, samples = runs["two"]
    assert log.count("Initializing steered model") == 2, "accelerate launch did not start two processes"
    for task in TASKS:
        assert f"Building contexts for {task} on rank 1" in log, (
            f"{task}: both processes ran as rank 0 of 1, each evaluating every document. lm-eval 0.4.13's "
            f"HFLM only turns on data parallel when it counts more than one CUDA GPU (`elif gpus > 1`); "
            f"SteeredLM must take rank and world size from its Accelerator on CPU"
        )
        # rank 0's documents, then rank 1's, gathered onto rank 0
        assert [row["doc_id"] for row in samples[task]] == [0, 2, 4, 1, 3], task
    one_log = runs["one"][0]
    assert one_log.count("Initializing steered model") == 1 and "on rank 1" not in one_log


def test_two_processes_give_the_same_metrics_as_one(runs):
    _, one, _ = runs["one"]
    _, two, _ = runs["two"]
    assert one["n-samples"] == two["n-samples"]
    assert two["n-samples"]["dsteer_hh_mini"] == {"original": 24, "effective": LIMIT}
    hh1, hh2 = one["results"]["dsteer_hh_mini"], two["results"]["dsteer_hh_mini"]
    assert hh1["sample_len"] == hh2["sample_len"] == LIMIT
    assert hh1["skipped_pairs,none"] == hh2["skipped_pairs,none"] == 0
    for name in ("acc,none", "acc_norm,none"):
        assert hh1[name] == hh2[name], name
    for name in HH_METRICS:
        for key in (f"{name},none", f"{name}_stderr,none"):
            assert hh2[key] == pytest.approx(hh1[key], abs=1e-6), key
    g1, g2 = one["results"]["truthfulqa_gen_mini"], two["results"]["truthfulqa_gen_mini"]
    for name in GEN_METRICS:
        for key in (f"{name},none", f"{name}_stderr,none"):
            assert g2[key] == pytest.approx(g1[key], abs=1e-6), key


def test_two_processes_give_the_same_responses_per_document(runs):
    _, _, s1 = runs["one"]
    _, _, s2 = runs["two"]
    for task in TASKS:
        by_doc = {row["doc_id"]: row for row in s2[task]}
        assert sorted(by_doc) == [row["doc_id"] for row in s1[task]], task
        for row in s1[task]:
            other = by_doc[row["doc_id"]]
            # resps[i][0]: lm-eval's padding of the shorter rank repeats its last request
            if task == "truthfulqa_gen_mini":
                assert [r[0] for r in other["resps"]] == [r[0] for r in row["resps"]]
            else:
                ll1 = [float(r[0][0]) for r in row["resps"]]
                ll2 = [float(r[0][0]) for r in other["resps"]]
                assert ll2 == pytest.approx(ll1, abs=1e-5), row["doc_id"]
