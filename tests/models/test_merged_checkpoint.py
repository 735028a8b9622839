"""The merged-weights cache under concurrent first use (issue 33 item 10).

Two processes merge the same base + LoRA adapter at nearly the same time into one empty cache. Saving is
slowed down so the second arrives while the first is still writing: both must return the same whole folder
(its record written, its weights loadable), and nothing half-written may be left beside it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = r"""
import sys, time
import transformers
save = transformers.PreTrainedModel.save_pretrained
def slow_save(self, *args, **kwargs):
    out = save(self, *args, **kwargs)
    time.sleep(1.0)  # a slow disk: the other process arrives while this one is still writing
    return out
transformers.PreTrainedModel.save_pretrained = slow_save
from dsteer_eval.models.merged_checkpoint import merged_checkpoint
print(merged_checkpoint(sys.argv[1], sys.argv[2]))
"""


def test_two_first_uses_at_once_share_one_whole_merge(tiny_dir, tiny_adapter_dir, tmp_path):
    env = {**os.environ, "DSTEER_EVAL_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-c", SCRIPT, tiny_dir, tiny_adapter_dir], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    second = subprocess.Popen([sys.executable, "-c", SCRIPT, tiny_dir, tiny_adapter_dir], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [err[-2000:] for _, err in outs]
    folders = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert (folder / "dsteer-merged.json").is_file()
    weights = load_file(str(folder / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    leftovers = sorted(p.name for p in folder.parent.iterdir() if p != folder and not p.name.endswith(".lock"))
    assert leftovers == []  # no staging folder left behind
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)  # readable by other users of a shared cache


def test_the_merge_equals_peft_merge_and_unload(tiny_dir, tiny_adapter_dir, tmp_path, monkeypatch):
    """What is cached is W + B·A (peft's merge): the merged model's logits equal the adapter model's."""
    from transformers import AutoModelForCausalLM

    from dsteer_eval.models.loading import load_model
    from dsteer_eval.models.merged_checkpoint import merged_checkpoint

    monkeypatch.setenv("DSTEER_EVAL_CACHE", str(tmp_path / "cache"))
    folder = merged_checkpoint(tiny_dir, tiny_adapter_dir)
    assert merged_checkpoint(tiny_dir, tiny_adapter_dir) == folder  # the second use reads the cache
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    peft_model, _, _ = load_model(tiny_dir, peft=tiny_adapter_dir, device="cpu")
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-5, rtol=1e-5)
