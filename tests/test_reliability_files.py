"""Issue 23 (reliability, round 2): vector files, cards and what `convert` / `info` do with them.

1  `convert --alpha` where it has no effect (safetensors) is refused; a conversion chain keeps every record
2  cards and other result files are replaced whole (a full disk leaves the old card readable)
3  `convert` to GGUF takes every site the target can hold, names the rest at once; `--layers` ranges
4  (a) float8 vectors, (b) malformed provenance in `info`, (c) a GGUF claiming to be ours,
   (d) `layer.-1` keys, (e) a resume with one changed flag, (f) control characters in `info`
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dsteer_eval.cli import main
from dsteer_eval.vectors import VectorFileError, check_compatible, load_vectors, save_vectors
from dsteer_eval.vectors.formats import read_any

N_LAYERS, D = 4, 32  # the tiny Llama of conftest
SHIPPED = Path(__file__).resolve().parents[1] / "dsteer_eval" / "artifacts" / "smollm2" / "refusal" / "vector.safetensors"


def _vectors(path, sites=range(N_LAYERS + 1), **extra):
    """Our safetensors file for a 4-layer Llama (sites 0..4), without loading a model."""
    g = torch.Generator().manual_seed(11)
    meta = {"num_layers": str(N_LAYERS), "model_type": "llama", **extra}
    save_vectors(path, {s: torch.randn(D, generator=g) for s in sites}, model_id="tiny", extra=meta)
    return str(path)


def _gguf_tensors(path) -> list[str]:
    return [t.name for t in gguf.GGUFReader(str(path)).tensors]


# ------------------------------------------------------------------ 1: --alpha, conversion records
def test_convert_alpha_is_refused_where_it_has_no_effect(tmp_path, capsys):
    src = _vectors(tmp_path / "v.safetensors", sites=(2, 3))
    out = tmp_path / "scaled.safetensors"
    assert main(["convert", src, str(out), "--alpha", "2"]) == 2
    err = capsys.readouterr().err
    assert err == ("dsteer-eval convert: error: --alpha applies to lm-eval .pt files only (their "
                   "steering_coefficient); safetensors stores the vector itself: drop --alpha 2 and give "
                   "alpha= when steering, or convert to .pt\n")
    assert not out.exists()
    assert main(["convert", src, str(out)]) == 0  # the default alpha (1) is no request


def test_a_conversion_chain_keeps_every_conversion_record(tmp_path, capsys):
    src = _vectors(tmp_path / "v.safetensors", sites=(2, 3))
    pt, back, gg = tmp_path / "v.pt", tmp_path / "back.safetensors", tmp_path / "v.gguf"
    assert main(["convert", src, str(pt), "--alpha", "1.5"]) == 0
    first = json.loads(read_any(pt).metadata["conversion"])
    assert first["from"] == src and first["to_format"] == "lm-eval-pt" and first["steering_coefficient"] == 1.5
    assert "previous" not in first
    assert main(["convert", str(pt), str(back)]) == 0
    second = json.loads(load_vectors(back).metadata["conversion"])
    assert second["from"] == str(pt) and second["from_format"] == "lm-eval-pt"
    assert second["previous"] == [first]
    assert main(["convert", str(back), str(gg)]) == 0
    third = json.loads(load_vectors(gg).metadata["conversion"])
    assert third["from"] == str(back) and third["previous"] == [first, {k: v for k, v in second.items()
                                                                          if k != "previous"}]
    capsys.readouterr()
    assert main(["info", str(gg), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)["facts"]
    assert facts["converted_from"].startswith(f"{back} (safetensors, sha256 ")
    assert [c.split(" (")[0] for c in facts["earlier_conversions"]] == [src, str(pt)]
