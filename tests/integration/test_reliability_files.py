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
SHIPPED = Path(__file__).resolve().parents[2] / "dsteer_eval" / "artifacts" / "smollm2" / "refusal" / "vector.safetensors"


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


# ------------------------------------------------------------------ 2: cards on a full disk
@pytest.fixture
def full_disk(monkeypatch):
    """``fill()``: from then on every file write finds the disk full after open() truncated the file, as a
    real ENOSPC does; ``monkeypatch.undo()`` frees it again."""
    real_open = pathlib.Path.open

    def no_space(self, data, *args, **kwargs):
        with real_open(self, "wb"):
            pass
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    def fill():
        monkeypatch.setattr(pathlib.Path, "write_text", no_space)
        monkeypatch.setattr(pathlib.Path, "write_bytes", no_space)

    monkeypatch.fill = fill
    return monkeypatch


def _card(folder: Path) -> dict:
    from dsteer_eval.dpo.training import CARD_FORMAT, CARD_NAME, DPOSettings
    from dataclasses import asdict

    folder.mkdir()
    summary = {"pairs": 20, "reward_accuracy": 0.8, "reward_margin_mean": 1.0, "reward_margin_stderr": 0.1}
    card = {"format": CARD_FORMAT, "kind": "lora", "hyperparameters": asdict(DPOSettings(beta=0.3)),
            "metrics": {"eval": summary}, "gate": {"passed": True}, "steps_done": 7}
    (folder / CARD_NAME).write_text(json.dumps(card, indent=1) + "\n")
    return card


def test_dpo_gate_write_card_on_a_full_disk_keeps_the_old_card(tmp_path, full_disk):
    from dsteer_eval.dpo.gate import write_heldout

    folder = tmp_path / "pair"
    before = _card(folder)
    measured = {"part": "eval", "pairs": 20, "summary": before["metrics"]["eval"], "by_kind": {}}
    full_disk.fill()
    with pytest.raises(OSError) as err:
        write_heldout(folder, measured, "dsteer-eval dpo-gate pair --write-card")
    assert err.value.errno == errno.ENOSPC
    full_disk.undo()
    assert json.loads((folder / "dpo_card.json").read_text()) == before  # parses, training record intact
    assert sorted(p.name for p in folder.iterdir()) == ["dpo_card.json"]  # no temporary file left
    written = write_heldout(folder, measured, "dsteer-eval dpo-gate pair --write-card")
    assert json.loads((folder / "dpo_card.json").read_text()) == written and written["steps_done"] == 7


def test_hparam_choice_record_on_a_full_disk_keeps_the_old_card(tmp_path, full_disk):
    from dsteer_eval.dpo.hparam_choice import record

    folder = tmp_path / "pair"
    before = _card(folder)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"format": "dsteer-eval/dpo-hparam-sweep", "chosen": {
        "beta": 0.3, "learning_rate": before["hyperparameters"]["learning_rate"]}, "points": []}))
    full_disk.fill()
    with pytest.raises(OSError, match="No space left on device"):
        record(folder, sweep)
    full_disk.undo()
    assert json.loads((folder / "dpo_card.json").read_text()) == before
    assert sorted(p.name for p in folder.iterdir()) == ["dpo_card.json"]
    assert record(folder, sweep)["hparam_choice"]["chosen"]["beta"] == 0.3


# ------------------------------------------------------------------ 3: convert to GGUF by default
def test_convert_the_shipped_vector_to_gguf_by_default(tmp_path, capsys):
    out = tmp_path / "refusal.gguf"
    assert main(["convert", str(SHIPPED), str(out)]) == 0
    assert _gguf_tensors(out) == [f"direction.{k}" for k in range(1, 29)]  # sites 2..29
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"{SHIPPED} (safetensors) -> {out} (gguf): sites "
                          + ", ".join(map(str, range(2, 30))))
    assert printed[1:] == [
        "left out 3 site(s) that gguf cannot hold:",
        "  site 0: site 0 (the embeddings) has no block-output number in a llama.cpp control vector",
        "  site 1: site 1 (the output of decoder block 0) would be direction.0, which llama.cpp refuses (its "
        "control vectors start at block 1); extract the vector at a later site",
        "  site 30: site 30 is the final post-norm state; a llama.cpp control vector numbers block outputs, and "
        "its last one (direction.29) is the raw output before the final norm, a different state. Extract the "
        "vector at a site below 30 to export it",
    ]
    again = tmp_path / "range.gguf"
    assert main(["convert", str(SHIPPED), str(again), "--layers", "2-29"]) == 0
    assert "left out" not in capsys.readouterr().out
    assert again.read_bytes().count(b"direction.") == out.read_bytes().count(b"direction.")
    assert all(torch.equal(load_vectors(again).vectors[s], load_vectors(out).vectors[s]) for s in range(2, 30))


def test_convert_layers_takes_ranges_and_names_every_site_it_cannot_hold(tmp_path, capsys):
    src = _vectors(tmp_path / "v.safetensors")
    assert main(["convert", src, str(tmp_path / "d.gguf")]) == 0
    assert _gguf_tensors(tmp_path / "d.gguf") == ["direction.1", "direction.2"]
    assert "left out 3 site(s) that gguf cannot hold:" in capsys.readouterr().out
    mixed = tmp_path / "mixed.safetensors"
    assert main(["convert", src, str(mixed), "--layers", "1-2;4;-2"]) == 0  # -2: site 3 of 0..4
    assert sorted(load_vectors(mixed).vectors) == [1, 2, 3, 4]
    assert main(["convert", src, str(tmp_path / "all.gguf"), "--layers", "0-4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsteer-eval convert: error: --layers 0-4: gguf cannot hold site(s) 0, 1, 4 (site 0: ")
    assert err.endswith("; leave them out of --layers (without --layers every site it can hold is converted)\n")
    for bad, why in (("3-1", "3-1 is an empty range"), ("2-", "'2-' is not a site"), ("2;2-3", "site 2 twice"),
                     ("7", "has no site(s) [7]")):
        assert main(["convert", src, str(tmp_path / "x.safetensors"), "--layers", bad]) == 2
        assert why in capsys.readouterr().err, bad
    only_final = _vectors(tmp_path / "final.safetensors", sites=(0, N_LAYERS))
    assert main(["convert", only_final, str(tmp_path / "f.gguf")]) == 2
    assert "gguf cannot hold any site of" in capsys.readouterr().err


# ------------------------------------------------------------------ 4a: float8
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_vectors_are_checked_in_float32(tmp_path, dtype):
    path = tmp_path / "f8.safetensors"
    values = torch.tensor([0.5, -1.0, 2.0, 0.25])
    save_file({"layer.2": values.to(dtype)}, str(path))
    vf = load_vectors(path)
    assert vf.vectors[2].dtype == torch.float32 and torch.equal(vf.vectors[2], values)
    save_file({"layer.2": torch.tensor([1.0, float("nan"), 0.0, 0.0]).to(dtype)}, str(path))
    with pytest.raises(VectorFileError, match=r"vector=.*f8.safetensors: vector for layer 2 contains NaN or inf "
                                              r"\(1 NaN, 0 inf of 4 values\)"):
        load_vectors(path)


# ------------------------------------------------------------------ 4b: malformed provenance
@pytest.mark.parametrize("provenance, why", [
    (["a", "list"], "the provenance record is not a dsteer-eval/provenance record"),
    ("just a string", "the provenance record is not valid JSON"),
    ({"git": "abc"}, "the provenance record's 'git' is a string, not an object or null"),
    ({"git": {"commit": 5, "dirty": False}}, "the provenance record's 'git.commit' is a number, not a string"),
    ({"data": "x.jsonl"}, "the provenance record's 'data' is a string, not a list of objects"),
    ({"models": [1]}, "the provenance record's 'models' is a list holding a number, not a list of objects"),
    ({"versions": ["torch"]}, "the provenance record's 'versions' is a list, not an object"),
    ({"seeds": 3}, "the provenance record's 'seeds' is a number, not an object"),
])
def test_info_names_malformed_provenance_instead_of_crashing(tmp_path, capsys, provenance, why):
    from dsteer_eval.common.provenance import SCHEMA

    if isinstance(provenance, dict):
        provenance = {"schema": SCHEMA, "schema_version": "1", "command": "x", **provenance}
    path = tmp_path / "dpo_card.json"
    path.write_text(json.dumps({"format": "dsteer-eval/dpo-card", "provenance": provenance}))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"provenance: unreadable ({why}" in out


def test_info_reads_cards_and_sweeps_with_fields_of_the_wrong_type(tmp_path, capsys):
    card = tmp_path / "dpo_card.json"
    card.write_text(json.dumps({"format": "dsteer-eval/dpo-card", "heldout": ["not", "an", "object"],
                                "data": "x", "hyperparameters": [1]}))
    assert main(["info", str(card)]) == 0
    assert "DPO card" in capsys.readouterr().out
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"format": "dsteer-eval/sweep", "points": 3, "earlier_provenance": 1}))
    assert main(["info", str(sweep)]) == 0
    assert "sweep record" in capsys.readouterr().out


# ------------------------------------------------------------------ 4c: a GGUF that claims to be ours
def _hostile_gguf(path, *, num_layers=None):
    """direction.3 (the last block's raw output of a 4-layer model) with dsteer.* keys copied from one of ours."""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 1)
    writer.add_string("dsteer.format", "dsteer-eval/vectors")
    if num_layers is not None:
        writer.add_string("dsteer.num_layers", str(num_layers))
    writer.add_tensor(f"direction.{N_LAYERS - 1}", np.ones(D, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_a_gguf_claiming_to_be_ours_gets_the_last_block_refusal(tiny, tmp_path, capsys):
    model, _ = tiny
    recorded = _hostile_gguf(tmp_path / "recorded.gguf", num_layers=N_LAYERS)
    with pytest.raises(VectorFileError) as err:
        load_vectors(recorded)
    assert str(err.value) == (
        f"vector={recorded}: direction.3 is the raw output of the last decoder block of a 4-layer model, before "
        f"the final norm, which no dsteer-eval site is (dsteer-eval never writes it); drop it from the file")
    unrecorded = _hostile_gguf(tmp_path / "unrecorded.gguf")
    with pytest.raises(VectorFileError, match=r"unrecorded.gguf numbers layers by block output"):
        check_compatible(load_vectors(unrecorded), model)
    laundered = tmp_path / "laundered.safetensors"  # a conversion must not wash the numbering away
    assert main(["convert", unrecorded, str(laundered), "--num-layers", str(N_LAYERS)]) == 2
    assert "unrecorded.gguf numbers layers by block output" in capsys.readouterr().err
    assert main(["convert", unrecorded, str(laundered)]) == 0
    with pytest.raises(VectorFileError, match=r"laundered.safetensors numbers layers by block output"):
        check_compatible(load_vectors(laundered), model)


# ------------------------------------------------------------------ 4d: negative or out-of-range keys
def test_negative_and_out_of_range_sites_are_refused_when_read(tmp_path, capsys):
    neg = tmp_path / "neg.safetensors"
    save_file({"layer.-1": torch.ones(D), "layer.2": torch.ones(D)}, str(neg))
    message = (f"vector={neg} holds a vector for site -1; sites count from 0 (0 = embeddings, n = post-norm): "
               f"rename its key or entry to the site it steers")
    with pytest.raises(VectorFileError) as err:
        load_vectors(neg)
    assert str(err.value) == message
    with pytest.raises(VectorFileError) as err:
        read_any(neg, argument="IN")
    assert str(err.value) == message.replace("vector=", "IN=")
    assert main(["info", str(neg)]) == 2
    assert "holds a vector for site -1; sites count from 0" in capsys.readouterr().err
    assert main(["convert", str(neg), str(tmp_path / "n.gguf"), "--num-layers", "4"]) == 2
    assert f"IN={neg} holds a vector for site -1" in capsys.readouterr().err
    high = tmp_path / "high.safetensors"
    save_file({"layer.9": torch.ones(D)}, str(high), metadata={"num_layers": "4"})
    with pytest.raises(VectorFileError, match=r"high.safetensors holds a vector for site 9, beyond the last site 4 "
                                              r"of a 4-layer model \(num_layers in its metadata\)"):
        load_vectors(high)
    pt = tmp_path / "neg.pt"
    torch.save({"layers.1": {"steering_vector": torch.ones(D), "action": "add", "dsteer_site": -1}}, pt)
    with pytest.raises(VectorFileError, match=r"IN=.*neg.pt holds a vector for site -1"):
        read_any(pt, argument="IN")


# ------------------------------------------------------------------ 4e: resume with a changed flag
def test_resume_names_the_changed_settings_only(tmp_path):
    from dataclasses import asdict

    from dsteer_eval.dpo.training import RUN_NAME, DPOSettings, _check_resumable

    folder = tmp_path / "ckpt"
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    run = {"settings": asdict(DPOSettings()), "data": "d.jsonl", "data_sha256": None, "save_steps": 2}
    (folder / RUN_NAME).write_text(json.dumps(run))
    assert _check_resumable(folder, run, True, False) == folder / "checkpoint-2"
    changed = {**run, "settings": {**run["settings"], "beta": 0.5, "seed": 3}, "data": "other.jsonl"}
    with pytest.raises(ValueError) as err:
        _check_resumable(folder, changed, True, False)
    assert str(err.value) == (f"cannot resume from {folder}: the run differs (data: 'd.jsonl' then, 'other.jsonl' "
                              f"now; settings.beta: 0.1 then, 0.5 now; settings.seed: 0 then, 3 now); use the same "
                              f"settings and data, or another --checkpoint-dir")


# ------------------------------------------------------------------ 4f: control characters in info
def test_info_escapes_control_characters_and_keeps_printable_unicode(tmp_path, capsys):
    from dsteer_eval.common import provenance

    record = provenance.collect(command="dsteer-eval extract \x1b]0;owned\x07 --out v")
    path = tmp_path / "v.safetensors"
    save_vectors(path, {2: torch.ones(D)}, model_id="Zürich ✓ \x1b[31mred\x1b[0m\u202e", method="dpo\rdiff",
                 provenance=record, extra={"data": "a\x9bb"})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\x9b\u202e")
    assert "  model_id         Zürich ✓ \\x1b[31mred\\x1b[0m\\u202e" in out.splitlines()
    assert "  method           dpo\\rdiff" in out.splitlines()
    assert "  data             a\\x9bb" in out.splitlines()
    assert "  command          dsteer-eval extract \\x1b]0;owned\\x07 --out v" in out.splitlines()
