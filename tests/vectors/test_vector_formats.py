"""Vector files from the ecosystem: llama.cpp GGUF control vectors, lm-eval's .pt dict, the D-STEER
authors' {layer: tensor}, steering-vectors objects — read, written, converted, and refused."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from dsteer_eval.cli import main
from dsteer_eval.steering.hook import Intervention, steer
from dsteer_eval.vectors import VectorFileError, check_compatible, load_vectors, save_vectors
from dsteer_eval.vectors.formats import detect, from_steering_vectors, read_any

N_LAYERS, D = 4, 32  # the tiny Llama of conftest
PAIRS = [("Human: How do I bake bread? Assistant:", " Mix flour, water and yeast."),
         ("The quick brown fox", " jumps over the lazy dog.")]


def _requests():
    return [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(PAIRS)]


def _write_control_vector(path, directions: dict[int, np.ndarray], *, arch="controlvector", hint="llama",
                          extra_tensors=()):
    """A control vector the way repeng's export_gguf writes one (independent of our writer)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", hint)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for k, v in directions.items():
        writer.add_tensor(f"direction.{k}", v.astype(np.float32))
    for name, v in extra_tensors:
        writer.add_tensor(name, v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.fixture(scope="module")
def ours(tiny, tmp_path_factory):
    model, _ = tiny
    g = torch.Generator().manual_seed(5)
    path = tmp_path_factory.mktemp("fmt") / "v.safetensors"
    save_vectors(path, {s: torch.randn(D, generator=g) for s in (2, 3)}, model=model, model_id="tiny",
                 method="dpo-diff", extra={"default_layer": 2})
    return str(path)


def _logits(model, ids, interventions=()):
    with torch.no_grad(), steer(model, list(interventions)):
        return model(ids).logits


# ------------------------------------------------------------------ GGUF
def test_gguf_written_here_is_a_llama_cpp_control_vector(ours, tmp_path):
    out = tmp_path / "v.gguf"
    assert main(["convert", ours, str(out)]) == 0
    reader = gguf.GGUFReader(str(out))
    field = reader.get_field("general.architecture")
    assert bytes(field.parts[field.data[0]]).decode() == "controlvector"
    hint = reader.get_field("controlvector.model_hint")
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    count = reader.get_field("controlvector.layer_count")
    assert int(count.parts[count.data[0]][0]) == 2
    assert [(t.name, [int(x) for x in t.shape], t.tensor_type) for t in reader.tensors] == [
        ("direction.1", [D], gguf.GGMLQuantizationType.F32),
        ("direction.2", [D], gguf.GGMLQuantizationType.F32)]
    source = load_vectors(ours)
    assert np.array_equal(reader.tensors[0].data, source.vectors[2].numpy())  # block 1 = our site 2


def test_round_trips_are_exact(ours, tmp_path):
    source = load_vectors(ours)
    for fmt, suffix in (("gguf", "gguf"), ("lm-eval-pt", "pt")):
        middle, back = tmp_path / f"v.{suffix}", tmp_path / f"back_{suffix}.safetensors"
        assert main(["convert", ours, str(middle), "--to", fmt]) == 0
        assert main(["convert", str(middle), str(back)]) == 0
        again = load_vectors(back)
        assert sorted(again.vectors) == [2, 3]
        assert all(torch.equal(again.vectors[s], source.vectors[s]) for s in (2, 3))
        assert {k: v for k, v in again.metadata.items() if k != "conversion"} == source.metadata
        record = json.loads(again.metadata["conversion"])
        assert record["from_format"] == ("gguf-control-vector" if fmt == "gguf" else "lm-eval-pt")
        assert len(record["from_sha256"]) == 64 and record["command"].startswith("dsteer-eval convert ")


def test_gguf_direction_k_steers_the_output_of_block_k(tiny, tmp_path):
    """llama.cpp adds direction.k to the output of decoder block k: our site k+1."""
    model, tok = tiny
    v = torch.randn(D, generator=torch.Generator().manual_seed(3)) * 4
    path = _write_control_vector(tmp_path / "cv.gguf", {1: v.numpy()})
    vf = load_vectors(path)
    check_compatible(vf, model)
    assert sorted(vf.vectors) == [2] and vf.format == "gguf-control-vector"
    ids = tok(PAIRS[0][0], return_tensors="pt").input_ids

    def add_v(module, args, output):  # what llama.cpp's build_cvec does after block 1
        return (output[0] + v,) + tuple(output[1:]) if isinstance(output, tuple) else output + v

    handle = model.model.layers[1].register_forward_hook(add_v)
    try:
        with torch.no_grad():
            expected = model(ids).logits
    finally:
        handle.remove()
    got = _logits(model, ids, [Intervention(2, vf.vectors[2], 1.0)])
    assert torch.equal(got, expected)
    assert not torch.equal(got, _logits(model, ids))


def test_steered_takes_a_gguf_vector_and_matches_the_safetensors_one(tiny_dir, ours, tmp_path):
    gguf_path = tmp_path / "v.gguf"
    assert main(["convert", ours, str(gguf_path)]) == 0
    make = get_model("steered")
    a = [ll for ll, _ in make(pretrained=tiny_dir, vector=ours, layer=3, alpha=-2.0,
                              batch_size=2).loglikelihood(_requests())]
    b = [ll for ll, _ in make(pretrained=tiny_dir, vector=str(gguf_path), layer=3, alpha=-2.0,
                              batch_size=2).loglikelihood(_requests())]
    assert a == b


def test_gguf_last_block_and_foreign_files_are_refused(tiny, tmp_path):
    model, _ = tiny
    last = _write_control_vector(tmp_path / "last.gguf", {N_LAYERS - 1: np.ones(D)})
    with pytest.raises(VectorFileError, match=r"last.gguf numbers layers by block output.*before the final norm"):
        check_compatible(load_vectors(last), model)
    other = _write_control_vector(tmp_path / "mistral.gguf", {1: np.ones(D)}, hint="mistral")
    with pytest.raises(VectorFileError, match=r"mistral.gguf was extracted from a different model.*model_type"):
        check_compatible(load_vectors(other), model)
    wide = _write_control_vector(tmp_path / "wide.gguf", {1: np.ones(2 * D)})
    with pytest.raises(VectorFileError, match=r"wide.gguf has vectors of size 64"):
        check_compatible(load_vectors(wide), model)
    a_model = _write_control_vector(tmp_path / "model.gguf", {1: np.ones(D)}, arch="llama")
    with pytest.raises(VectorFileError, match=r"model.gguf is a GGUF of architecture 'llama'"):
        load_vectors(a_model)
    stray = _write_control_vector(tmp_path / "stray.gguf", {1: np.ones(D)},
                                  extra_tensors=[("token_embd.weight", np.ones((2, D), np.float32))])
    with pytest.raises(VectorFileError, match=r"stray.gguf: tensor 'token_embd.weight' is not"):
        load_vectors(stray)
    good = (tmp_path / "cv.gguf")
    _write_control_vector(good, {1: np.ones(D)})
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(VectorFileError, match=r"vector=.*cut.gguf"):
        load_vectors(cut)
    bad = _write_control_vector(tmp_path / "nan.gguf", {1: np.full(D, np.nan)})
    with pytest.raises(VectorFileError, match=r"nan.gguf.*direction.1"):
        load_vectors(bad)


def test_sites_a_control_vector_cannot_hold_are_refused(tiny, tmp_path):
    model, _ = tiny
    final = tmp_path / "final.safetensors"
    save_vectors(final, {N_LAYERS: torch.ones(D)}, model=model)
    assert main(["convert", str(final), str(tmp_path / "f.gguf")]) == 2
    first = tmp_path / "first.safetensors"
    save_vectors(first, {1: torch.ones(D)}, model=model)
    with pytest.raises(VectorFileError, match="direction.0, which llama.cpp refuses"):
        from dsteer_eval.vectors.gguf_control import write_gguf

        write_gguf(load_vectors(first), tmp_path / "b0.gguf")
    unsized = tmp_path / "unsized.safetensors"
    save_vectors(unsized, {2: torch.ones(D)})  # no model: no num_layers recorded
    assert main(["convert", str(unsized), str(tmp_path / "u.gguf")]) == 2
    assert main(["convert", str(unsized), str(tmp_path / "u.gguf"), "--num-layers", str(N_LAYERS)]) == 0
    assert [t.name for t in gguf.GGUFReader(str(tmp_path / "u.gguf")).tensors] == ["direction.1"]


# ------------------------------------------------------------------ lm-eval .pt
def test_lm_eval_pt_written_here_runs_in_lm_evals_builtin_steered(tiny_dir, tiny, ours, tmp_path):
    from lm_eval.models.hf_steered import SteeredModel

    pt = tmp_path / "v.pt"
    assert main(["convert", ours, str(pt), "--layers", "3", "--alpha", "1.5", "--model", tiny_dir]) == 0
    config = torch.load(pt, weights_only=True)
    assert list(config) == ["layers.2"]  # site 3 = output of block 2
    assert config["layers.2"]["steering_coefficient"] == 1.5 and config["layers.2"]["action"] == "add"
    theirs = [ll for ll, _ in SteeredModel(pretrained=tiny_dir, steer_path=str(pt), batch_size=2,
                                           device="cpu").loglikelihood(_requests())]
    ours_ll = [ll for ll, _ in get_model("steered")(pretrained=tiny_dir, vector=ours, layer=3, alpha=1.5,
                                                    batch_size=2).loglikelihood(_requests())]
    assert theirs == ours_ll
    back = read_any(pt)
    assert torch.equal(back.vectors[3], load_vectors(ours).vectors[3] * 1.5)


def test_lm_eval_pt_from_elsewhere_maps_hookpoints_to_sites(tiny, tmp_path):
    g = torch.Generator().manual_seed(1)
    v1, v3, vn = (torch.randn(D, generator=g) for _ in range(3))
    path = tmp_path / "builtin.pt"
    torch.save({"layers.1": {"steering_vector": v1, "steering_coefficient": 2.0, "action": "add"},
                "layers.2": {"steering_vector": v3.unsqueeze(0), "action": "add"},
                "norm": {"steering_vector": vn, "action": "add", "bias": None}}, path)
    assert detect(path) == "lm-eval-pt"
    with pytest.raises(VectorFileError, match=r"hookpoint 'norm'.*--num-layers"):
        read_any(path)
    vf = read_any(path, num_layers=N_LAYERS)
    assert sorted(vf.vectors) == [2, 3, N_LAYERS]
    assert torch.equal(vf.vectors[2], v1 * 2.0) and torch.equal(vf.vectors[3], v3)
    assert torch.equal(vf.vectors[N_LAYERS], vn)
    top = tmp_path / "top.pt"  # the last block's raw output: not the post-norm site
    torch.save({"layers.3": {"steering_vector": v3, "action": "add"}}, top)
    with pytest.raises(VectorFileError, match=r"top.pt hookpoint 'layers.3'.*before the final norm"):
        read_any(top, num_layers=N_LAYERS)
    unsized = read_any(top)  # layer count unknown: refused once checked against the model
    assert sorted(unsized.vectors) == [N_LAYERS] and unsized.metadata["source_layers"] == "block_output"
    with pytest.raises(VectorFileError, match=r"top.pt numbers layers by block output"):
        check_compatible(unsized, tiny[0])
    clamp = tmp_path / "clamp.pt"
    torch.save({"layers.1": {"steering_vector": v1, "steering_coefficient": 2.0, "action": "clamp"}}, clamp)
    with pytest.raises(VectorFileError, match=r"clamp.pt hookpoint 'layers.1': action 'clamp' is not a steering vector"):
        read_any(clamp)
    odd = tmp_path / "odd.pt"
    torch.save({"mlp_out.7": {"steering_vector": v1, "action": "add"}}, odd)
    with pytest.raises(VectorFileError, match=r"odd.pt hookpoint 'mlp_out.7'.*--model"):
        read_any(odd, num_layers=N_LAYERS)


class Gadget:  # an object weights_only=True must refuse
    pass


def test_pickles_are_never_unpickled(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"layers.1": {"steering_vector": torch.ones(D), "action": "add", "x": Gadget()}}, evil)
    assert main(["convert", str(evil), str(tmp_path / "e.safetensors")]) == 2
    with open(tmp_path / "raw.pt", "wb") as fh:
        pickle.dump({"a": Gadget()}, fh)
    with pytest.raises(ValueError, match=r"IN=.*raw.pt holds objects other than tensors"):
        read_any(tmp_path / "raw.pt", argument="IN")
    with pytest.raises(VectorFileError, match=r"vector=.*evil.pt is a pickle.*dsteer-eval convert"):
        load_vectors(evil)  # vector= takes safetensors and GGUF only


# ------------------------------------------------------------------ D-STEER authors, steering-vectors
def test_dsteer_authors_vectors_pt_uses_block_numbering(tiny, ours, tmp_path):
    model, _ = tiny
    g = torch.Generator().manual_seed(2)
    blob = {0: torch.randn(D, generator=g, dtype=torch.float64), 2: torch.randn(D, generator=g)}
    path = tmp_path / "vectors.pt"
    torch.save(blob, path)
    assert detect(path) == "dsteer-authors-pt"
    vf = read_any(path)
    assert sorted(vf.vectors) == [1, 3] and torch.equal(vf.vectors[3], blob[2])
    assert torch.equal(vf.vectors[1], blob[0].float())
    check_compatible(vf, model)
    torch.save({N_LAYERS - 1: torch.ones(D)}, tmp_path / "top.pt")
    with pytest.raises(VectorFileError, match="before the final norm"):
        check_compatible(read_any(tmp_path / "top.pt"), model)
    out = tmp_path / "theirs.pt"
    assert main(["convert", ours, str(out), "--to", "dsteer-authors-pt"]) == 0
    written = torch.load(out, weights_only=True)
    assert sorted(written) == [1, 2] and torch.equal(written[1], load_vectors(ours).vectors[2])


def test_steering_vectors_objects(tiny):
    model, _ = tiny
    v = torch.randn(D, generator=torch.Generator().manual_seed(4))
    vf = from_steering_vectors(SimpleNamespace(layer_type="decoder_block", layer_activations={1: v}))
    assert sorted(vf.vectors) == [2] and torch.equal(vf.vectors[2], v)
    check_compatible(vf, model)
    with pytest.raises(VectorFileError, match="layer_type='decoder_block'"):
        from_steering_vectors(SimpleNamespace(layer_type="mlp", layer_activations={1: v}))


# ------------------------------------------------------------------ the command
def test_convert_refuses_bad_requests_with_the_argument_named(ours, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    assert main(["convert", ours, str(out)]) == 0
    assert main(["convert", ours, str(out)]) == 2
    err = capsys.readouterr().err
    assert "OUT=" in err and "exists; pass --force" in err
    assert main(["convert", ours, str(out), "--force"]) == 0
    assert main(["convert", ours, str(tmp_path / "x.npy")]) == 2
    assert "cannot tell the format from the suffix '.npy'" in capsys.readouterr().err
    assert main(["convert", ours, str(tmp_path / "y.gguf"), "--alpha", "2"]) == 2
    assert "--alpha applies to lm-eval .pt files only" in capsys.readouterr().err
    assert main(["convert", ours, str(tmp_path / "z.gguf"), "--layers", "7"]) == 2
    assert "--layers 7" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.gguf"), str(tmp_path / "m.safetensors")]) == 2
    assert "IN=" in capsys.readouterr().err
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00" * 64)
    assert main(["convert", str(garbage), str(tmp_path / "g.gguf")]) == 2
    assert "garbage.bin is not a safetensors file" in capsys.readouterr().err


def test_info_describes_converted_files(ours, tmp_path, capsys):
    gguf_path, pt_path = tmp_path / "v.gguf", tmp_path / "v.pt"
    assert main(["convert", ours, str(gguf_path)]) == 0
    assert main(["convert", ours, str(pt_path)]) == 0
    capsys.readouterr()
    for path, fmt in ((gguf_path, "gguf-control-vector"), (pt_path, "lm-eval-pt")):
        assert main(["info", str(path), "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["facts"]["format"] == fmt and record["facts"]["sites"] == [2, 3]
        assert record["facts"]["converted_from"].startswith(f"{ours} (safetensors, sha256 ")
        assert record["facts"]["model_id"] == "tiny"
