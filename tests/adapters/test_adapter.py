"""The lm-eval adapter `steered` on a tiny random Llama, through lm-eval's own API."""

from __future__ import annotations

import pickle

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM

from dsteer_eval.steering.sites import resolve_parts
from dsteer_eval.steering.hook import Intervention, steer
from dsteer_eval.vectors import save_vectors

PAIRS = [
    ("Human: How do I bake bread? Assistant:", " Mix flour, water and yeast."),
    ("Human: How do I bake bread? Assistant:", " I would rather not."),
    ("What is the capital of France?", " Paris"),
    ("The quick brown fox", " jumps over the lazy dog."),
    ("The quick brown fox jumps over the lazy", " dog"),
]


def requests(pairs=PAIRS):
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
        for i, (c, x) in enumerate(pairs)
    ]


@pytest.fixture(scope="module")
def vectors_path(tiny, tmp_path_factory):
    model, _ = tiny
    g = torch.Generator().manual_seed(11)
    n = resolve_parts(model).num_layers
    path = tmp_path_factory.mktemp("vec") / "v.safetensors"
    save_vectors(path, {s: torch.randn(32, generator=g) for s in range(n + 1)}, model=model, model_id="tiny", method="test")
    return str(path)


@pytest.fixture(scope="module")
def hf_ll(tiny_dir):
    return [ll for ll, _ in HFLM(pretrained=tiny_dir, batch_size=2, device="cpu").loglikelihood(requests())]


def make(tiny_dir, **kw):
    kw.setdefault("batch_size", 2)
    return get_model("steered")(pretrained=tiny_dir, **kw)


def test_registry_resolves_to_our_adapter():
    from dsteer_eval.adapters.steered import SteeredLM

    assert get_model("steered") is SteeredLM
    from lm_eval.models.hf_steered import SteeredModel

    assert get_model("steered-builtin") is SteeredModel
    assert get_model("steered") is SteeredLM  # importing the built-in did not take the name back


def test_alpha_zero_and_zero_vector_match_hf_exactly(tiny_dir, vectors_path, hf_ll, tmp_path, tiny):
    lm = make(tiny_dir, vector=vectors_path, layer=2, alpha=0.0)
    assert [ll for ll, _ in lm.loglikelihood(requests())] == hf_ll
    zero = tmp_path / "zero.safetensors"
    save_vectors(zero, {2: torch.zeros(32)}, model=tiny[0])
    lm = make(tiny_dir, vector=str(zero), layer=2, alpha=5.0)
    assert [ll for ll, _ in lm.loglikelihood(requests())] == hf_ll


def _manual_ll(model, tok, site, v, alpha, position):
    """Per request, unbatched, with the steering hook and the prompt length spelled out."""
    out = []
    for ctx, cont in PAIRS:
        c, x = tok(ctx).input_ids, tok(cont).input_ids
        inp = torch.tensor([c + x[:-1]])
        with torch.no_grad(), steer(model, [Intervention(site, v, alpha)], position=position, prompt_lengths=[len(c)]):
            logp = torch.log_softmax(model(inp).logits[0], -1)
        targets = torch.tensor(x)
        out.append(float(logp[len(c) - 1 :].gather(1, targets[:, None]).sum()))
    return out


@pytest.mark.parametrize("position", ["all", "prompt", "completion", "last"])
@pytest.mark.parametrize("layer", ["final", 2])
def test_loglikelihood_matches_manual_steering(tiny_dir, tiny, vectors_path, layer, position):
    model, tok = tiny
    n = resolve_parts(model).num_layers
    site = n if layer == "final" else layer
    from dsteer_eval.vectors import load_vectors

    v = load_vectors(vectors_path).vectors[site]
    lm = make(tiny_dir, vector=vectors_path, layer=layer, alpha=-1.5, position=position, batch_size=3)
    got = [ll for ll, _ in lm.loglikelihood(requests())]
    want = _manual_ll(model, tok, site, v, -1.5, position)
    assert got == pytest.approx(want, abs=1e-4)


def test_final_layer_shift_in_loglikelihood_is_alpha_wu_v(tiny_dir, tiny, vectors_path):
    """One-token continuation: log p(y) = log_softmax(z + alpha W_U v)[y], computed by hand."""
    model, tok = tiny
    parts = resolve_parts(model)
    from dsteer_eval.vectors import load_vectors

    v = load_vectors(vectors_path).vectors[parts.num_layers]
    ctx, cont = "What is the capital of France?", " Paris"
    c, x = tok(ctx).input_ids, tok(cont).input_ids[:1]
    with torch.no_grad():
        z = model(torch.tensor([c])).logits[0, -1]
    expected = torch.log_softmax(z + 0.8 * (parts.lm_head.weight @ v), -1)[x[0]].detach()
    lm = make(tiny_dir, vector=vectors_path, layer="final", alpha=0.8)
    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, (ctx, tok.decode(x)), 0)])
    assert ll == pytest.approx(float(expected), abs=1e-4)


def test_several_layers_one_alpha_each(tiny_dir, tiny, vectors_path):
    model, tok = tiny
    from dsteer_eval.vectors import load_vectors

    vf = load_vectors(vectors_path)
    lm = make(tiny_dir, vector=vectors_path, layer="1;-1", alpha="0.5;-2")
    assert [(i.site, i.alpha) for i in lm.interventions] == [(1, 0.5), (4, -2.0)]
    got = [ll for ll, _ in lm.loglikelihood(requests())]
    out = []
    for ctx, cont in PAIRS:
        c, x = tok(ctx).input_ids, tok(cont).input_ids
        with torch.no_grad(), steer(model, [Intervention(1, vf.vectors[1], 0.5), Intervention(4, vf.vectors[4], -2.0)]):
            logp = torch.log_softmax(model(torch.tensor([c + x[:-1]])).logits[0], -1)
        out.append(float(logp[len(c) - 1 :].gather(1, torch.tensor(x)[:, None]).sum()))
    assert got == pytest.approx(out, abs=1e-4)


def test_unit_normalises_the_vector(tiny_dir, vectors_path):
    lm = make(tiny_dir, vector=vectors_path, layer=3, unit=True)
    assert float(lm.interventions[0].vector.norm()) == pytest.approx(1.0, abs=1e-6)


def test_generation_is_steered_and_completion_keeps_first_token(tiny_dir, vectors_path):
    req = [Instance("generate_until", {}, ("Human: How do I bake", {"until": ["\n\n"], "max_gen_toks": 8}), 0)]
    plain = HFLM(pretrained=tiny_dir, device="cpu").generate_until(req)
    steered = make(tiny_dir, vector=vectors_path, layer="final", alpha=4.0).generate_until(req)
    assert steered != plain
    completion = make(tiny_dir, vector=vectors_path, layer="final", alpha=4.0, position="completion").generate_until(req)
    assert completion != plain and completion[0][:1] == plain[0][:1]


# ---------------------------------------------------------------- built-in format
@pytest.fixture(scope="module")
def builtin_pt(tmp_path_factory):
    g = torch.Generator().manual_seed(12)
    config = {
        "layers.1": {"steering_vector": torch.randn(32, generator=g), "steering_coefficient": 2.5,
                     "action": "add", "bias": None, "head_index": None},
        "layers.3": {"steering_vector": torch.randn(32, generator=g), "steering_coefficient": 0.7,
                     "action": "clamp", "bias": None, "head_index": None},
    }
    path = tmp_path_factory.mktemp("pt") / "steer.pt"
    torch.save(config, path)
    return str(path)


def test_builtin_pt_parity_with_lm_eval_steered_model(tiny_dir, builtin_pt, hf_ll):
    from lm_eval.models.hf_steered import SteeredModel

    theirs = [ll for ll, _ in SteeredModel(pretrained=tiny_dir, steer_path=builtin_pt, batch_size=2, device="cpu").loglikelihood(requests())]
    ours = [ll for ll, _ in make(tiny_dir, steer_path=builtin_pt).loglikelihood(requests())]
    assert ours == theirs
    assert ours != hf_ll


class Gadget:  # a pickled object that weights_only=True must refuse
    pass


def test_builtin_pt_is_loaded_weights_only(tiny_dir, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"layers.1": {"steering_vector": torch.ones(32), "action": "add", "extra": Gadget()}}, path)
    with pytest.raises(ValueError, match="steer_path=.*weights_only=True"):
        make(tiny_dir, steer_path=str(path))


# ---------------------------------------------------------------- bad input
def test_bad_arguments_fail_clearly(tiny_dir, tiny, vectors_path, tmp_path):
    model, _ = tiny
    cases = [
        (dict(vector=vectors_path, layer=2, alpha=float("nan")), "alpha=.*finite"),
        (dict(vector=vectors_path, layer=2, alpha="inf"), "alpha=.*finite"),
        (dict(vector=vectors_path, layer=2, alpha="one"), "alpha=.*not a number"),
        (dict(vector=vectors_path, layer=2, position="middle"), "position='middle' is not one of"),
        (dict(vector=vectors_path, layer=9), r"layer=9 is out of range .* 4 decoder layers"),
        (dict(vector=vectors_path, layer=-6), r"layer=-6 is out of range"),
        (dict(vector=vectors_path, layer="2;x"), "layer=.*neither an integer nor 'final'"),
        (dict(vector=vectors_path, layer="1;2", alpha="1;2;3"), "alpha=.*3 values for 2 layers"),
        (dict(vector=vectors_path), "layer= is required"),
        (dict(vector=str(tmp_path / "nope.safetensors"), layer=1), "vector=.*no such file"),
        (dict(vector=vectors_path, steer_path="x.pt"), "either vector="),
        (dict(steer_path=str(tmp_path / "x.txt")), "steer_path=.*expected"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=pattern):
            make(tiny_dir, **kwargs)


def test_bad_vector_files(tiny_dir, tiny, tmp_path):
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"layer.2": torch.ones(31)}, str(wrong))
    with pytest.raises(ValueError, match="vector=.*size 31 but the model's hidden size is 32"):
        make(tiny_dir, vector=str(wrong), layer=2)

    pickled = tmp_path / "v.safetensors"
    torch.save({"layer.2": torch.ones(32)}, pickled)
    with pytest.raises(ValueError, match="vector=.*pickle"):
        make(tiny_dir, vector=str(pickled), layer=2)
    raw_pickle = tmp_path / "v2.safetensors"
    raw_pickle.write_bytes(pickle.dumps({"layer.2": [1.0] * 32}))
    with pytest.raises(ValueError, match="vector=.*pickle"):
        make(tiny_dir, vector=str(raw_pickle), layer=2)

    nan = tmp_path / "nan.safetensors"
    save_file({"layer.2": torch.full((32,), float("nan"))}, str(nan))
    with pytest.raises(ValueError, match="vector=.*NaN"):
        make(tiny_dir, vector=str(nan), layer=2)

    other_model = tmp_path / "other.safetensors"
    save_vectors(other_model, {2: torch.ones(32)}, model_id="x",
                 extra={"model_type": "llama", "num_layers": "30", "vocab_size": "49152"})
    with pytest.raises(ValueError, match="different model .* num_layers: file 30 vs model 4"):
        make(tiny_dir, vector=str(other_model), layer=2)

    only_two = tmp_path / "two.safetensors"
    save_vectors(only_two, {2: torch.ones(32)}, model=tiny[0])
    with pytest.raises(ValueError, match="no vector for layer 3"):
        make(tiny_dir, vector=str(only_two), layer=3)
    assert [i.site for i in make(tiny_dir, vector=str(only_two)).interventions] == [2]


def test_embedded_without_shipped_vector_says_so(monkeypatch):
    """If an install lacks the shipped artefacts, the error says what to pass instead."""
    from dsteer_eval.adapters.steered import NoDefaultVectorError
    from dsteer_eval.models import defaults

    monkeypatch.setattr(defaults, "default_vector", lambda name, pair=None: None)
    for pretrained in (None, "smollm2"):
        with pytest.raises(NoDefaultVectorError, match="does not ship the steering vector of pair 'refusal' .* 'smollm2'"):
            get_model("steered")(pretrained=pretrained)


def test_non_embedded_without_vector_requires_one(tiny_dir):
    with pytest.raises(ValueError, match="vector= is required"):
        make(tiny_dir)


def test_builtin_csv_is_delegated_to_lm_eval(tiny_dir, tmp_path, monkeypatch, builtin_pt):
    """A .csv steer_path goes through lm-eval's own derive_steer_config (stubbed: it needs SAE hubs)."""
    from lm_eval.models.hf_steered import SteeredModel

    config = torch.load(builtin_pt, weights_only=True)
    seen = []

    def fake_derive(cls, path):
        seen.append(path)
        return config

    monkeypatch.setattr(SteeredModel, "derive_steer_config", classmethod(fake_derive))
    csv = tmp_path / "features.csv"
    csv.write_text("loader,action,sparse_model,hookpoint,feature_index,steering_coefficient\n")
    from_csv = [ll for ll, _ in make(tiny_dir, steer_path=str(csv)).loglikelihood(requests())]
    from_pt = [ll for ll, _ in make(tiny_dir, steer_path=builtin_pt).loglikelihood(requests())]
    assert seen == [str(csv)] and from_csv == from_pt
