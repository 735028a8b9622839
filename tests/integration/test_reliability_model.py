"""Model reliability (issue 23, round 2): --use_cache keyed by the steering, collapsed forward passes,
ALiBi architectures, the non-finite-state message."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from dsteer_eval.vectors import save_vectors


@pytest.fixture(scope="module")
def vec(tiny, tmp_path_factory):
    g = torch.Generator().manual_seed(5)
    path = tmp_path_factory.mktemp("relmodel") / "v.safetensors"
    save_vectors(path, {s: torch.randn(32, generator=g) for s in range(5)}, model=tiny[0], model_id="tiny")
    return str(path)


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    from dsteer_eval.adapters.plugin import tasks_dir

    return TaskManager(include_path=[tasks_dir()], include_defaults=False)


def make(tiny_dir, **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("device", "cpu")
    return get_model("steered")(pretrained=tiny_dir, **kw)


REQS = [Instance("loglikelihood", {}, ("Human: hi Assistant:", " Hello"), 0),
        Instance("loglikelihood", {}, ("Human: hi Assistant:", " Go away"), 1)]


# ------------------------------------------------------------------ 1: --use_cache keyed by the steering
def _per_doc(tiny_dir, vec, task_manager, alpha, cache=None, **extra):
    import lm_eval

    args = f"pretrained={tiny_dir},vector={vec},layer=2,alpha={alpha},device=cpu" + \
        "".join(f",{k}={v}" for k, v in extra.items())
    out = lm_eval.simple_evaluate(model="steered", model_args=args, tasks=["dsteer_hh_mini"], limit=3,
                                  batch_size=2, log_samples=True, use_cache=cache, task_manager=task_manager)
    return [float(r[0][0]) for row in out["samples"]["dsteer_hh_mini"] for r in row["resps"]]


@pytest.fixture
def model_calls(monkeypatch):
    """How many times a steered model computed log-likelihoods (a cache hit computes none)."""
    from dsteer_eval.adapters.steered import SteeredLM

    calls = []
    real = SteeredLM._loglikelihood_tokens

    def counted(self, requests, *args, **kwargs):
        calls.append(len(requests))
        return real(self, requests, *args, **kwargs)

    monkeypatch.setattr(SteeredLM, "_loglikelihood_tokens", counted)
    return calls


def test_use_cache_keys_entries_by_the_steering_and_still_hits(tiny_dir, vec, task_manager, tmp_path, model_calls):
    cache = str(tmp_path / "cache")
    plain0 = _per_doc(tiny_dir, vec, task_manager, 0.0)
    plain4 = _per_doc(tiny_dir, vec, task_manager, -4.0)
    assert len(plain0) == 6 and all(abs(a - b) > 1e-3 for a, b in zip(plain0, plain4))
    model_calls.clear()
    assert _per_doc(tiny_dir, vec, task_manager, 0.0, cache) == plain0
    assert model_calls == [6]
    assert _per_doc(tiny_dir, vec, task_manager, -4.0, cache) == plain4  # not alpha=0's answers
    assert model_calls == [6, 6]
    # the same setting again: every answer from the cache, the model never runs
    assert _per_doc(tiny_dir, vec, task_manager, -4.0, cache) == plain4
    assert _per_doc(tiny_dir, vec, task_manager, 0.0, cache) == plain0
    assert model_calls == [6, 6]
    # anything else that changes the numbers keys its own entries too
    ablated = _per_doc(tiny_dir, vec, task_manager, 4.0, cache, mode="ablate")
    assert model_calls == [6, 6, 6]
    assert ablated == _per_doc(tiny_dir, vec, task_manager, 4.0, None, mode="ablate")
    _per_doc(tiny_dir, vec, task_manager, -4.0, cache, unit="true")
    _per_doc(tiny_dir, vec, task_manager, -4.0, cache, control="random:0")
    assert model_calls == [6, 6, 6, 6, 6, 6]


def test_cache_key_covers_every_setting_that_changes_the_numbers(tiny_dir, vec, tiny, tmp_path):
    other = tmp_path / "w.safetensors"
    g = torch.Generator().manual_seed(9)
    save_vectors(other, {2: torch.randn(32, generator=g)}, model=tiny[0], model_id="tiny")
    base = dict(vector=vec, layer=2, alpha=-1.0)
    variants = [dict(), dict(alpha=-1.5), dict(layer=3), dict(mode="ablate", alpha=1.0), dict(unit="true"),
                dict(position="completion"), dict(norm_preserve="true"), dict(control="random:0"),
                dict(control="random:0", control_seed=1), dict(vector=str(other)), dict(dtype="bfloat16")]
    keys = [make(tiny_dir, **(base | v)).cache_key() for v in variants]
    assert len(set(keys)) == len(keys)
    assert make(tiny_dir, **base, batch_size=4).cache_key() == keys[0]  # the batch size changes nothing


def test_sweep_points_key_the_cache_separately(tiny_dir, vec):
    from dsteer_eval.sweep.sweep_lm import SweepLM

    lm = SweepLM(pretrained=tiny_dir, vector=vec, layer=2, alpha=0.0, batch_size=2, device="cpu")
    seen = {}
    for alpha in (0.0, -1.0, 2.0):
        lm.set_point(2, alpha)
        seen[alpha] = lm.cache_key()
    lm.set_point(2, -1.0, control=0)
    seen["control"] = lm.cache_key()
    assert len(set(seen.values())) == 4
    lm.set_point(2, -1.0)
    assert lm.cache_key() == seen[-1.0]


# ------------------------------------------------------------------ 4: the message names mode=
def test_non_finite_state_message_names_mode_unit_control_norm_preserve(tiny_dir, tiny, vec, tmp_path):
    from dsteer_eval.adapters.steered import NonFiniteStateError

    huge = tmp_path / "huge.safetensors"
    save_vectors(huge, {1: torch.full((32,), 3e38), 2: torch.full((32,), 3e38)}, model=tiny[0])
    lm = make(tiny_dir, vector=str(huge), layer="1;2", alpha=1.0)
    with pytest.raises(NonFiniteStateError, match=r"alpha=1\.0, mode=add, position=all\)"):
        lm.loglikelihood(REQS)
    lm = make(tiny_dir, vector=vec, layer="1;2", alpha=1.0, norm_preserve="true", control="random:1",
              control_seed=3)
    assert "alpha=1.0, mode=add, position=all, norm_preserve=True, control=random:1, control_seed=3" \
        in lm._args_label
    lm = make(tiny_dir, vector=vec, layer=1, alpha=0.5, unit="true", mode="ablate")
    assert "alpha=0.5, mode=ablate, position=all, unit=True" in lm._args_label


# ------------------------------------------------------------------ 2: a model that has stopped working
@pytest.mark.parametrize("args, named", [
    (dict(alpha=1e20), r"alpha=1e\+20, mode=add"),
    (dict(alpha=1e37, dtype="bfloat16"), r"alpha=1e\+37, mode=add, position=all, dtype=bfloat16"),
    # the alpha=1e20 on a real model; the tiny model's states are tiny (|h.v_hat| ~ 0.05), so there 1e20
    # leaves the mean square finite (a broken but not collapsed state) and 1e24 overflows it
    (dict(alpha=1e24, mode="ablate"), r"alpha=1e\+24, mode=ablate"),
])
def test_a_collapsed_forward_pass_raises_naming_the_arguments(tiny_dir, vec, args, named):
    """alpha*v far beyond the state's scale overflows RMSNorm's mean square: the state feeding the head is 0,
    every logit equal, and the shortest choice would win."""
    from dsteer_eval.adapters.steered import NonFiniteStateError

    lm = make(tiny_dir, vector=vec, layer=2, **args)
    message = r"steered model \(pretrained=.*" + named + r".*\): a forward pass collapsed: the logits of \d+ " \
              r"token\(s\) are the same for every vocabulary entry .* Use a much smaller alpha"
    with pytest.raises(NonFiniteStateError, match=message):
        lm.loglikelihood(REQS)
    gen = [Instance("generate_until", {}, ("Human: hi", {"until": ["\n\n"], "max_gen_toks": 3}), 0)]
    with pytest.raises(NonFiniteStateError, match=r"collapsed"):
        lm.generate_until(gen)
    packed = make(tiny_dir, vector=vec, layer=2, pack_contexts="true", **args)
    with pytest.raises(NonFiniteStateError, match=message):
        packed.loglikelihood(REQS)


def test_a_vector_whose_norm_overflows_float32_is_refused_with_unit_or_ablate(tiny_dir, tiny, tmp_path):
    from dsteer_eval.steering.hook import Intervention, NonFiniteError

    big = tmp_path / "big.safetensors"
    save_vectors(big, {2: torch.full((32,), 1e38)}, model=tiny[0])  # every entry fits; the norm (5.7e38) does not
    with pytest.raises(NonFiniteError, match=r"unit=True: the norm of vector=.*big\.safetensors \(layer 2\) "
                                             r"overflows float32 \(inf\)"):
        make(tiny_dir, vector=str(big), layer=2, alpha=1.0, unit="true")
    with pytest.raises(NonFiniteError, match=r"mode=ablate: the norm of the vector for layer 2 overflows float32"):
        make(tiny_dir, vector=str(big), layer=2, alpha=1.0, mode="ablate")
    with pytest.raises(NonFiniteError, match=r"mode=ablate: the norm of the vector for layer 2 overflows float32"):
        Intervention(2, torch.full((32,), 1e38), 1.0, mode="ablate")


def test_an_ablation_alpha_beyond_the_dtype_is_refused_at_load(tiny_dir, vec):
    from dsteer_eval.steering.hook import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"mode=ablate: alpha=1e\+39 times the unit vector.*float32"):
        make(tiny_dir, vector=vec, layer=2, alpha=1e39, mode="ablate")


def test_a_sweep_group_with_a_collapsing_alpha_raises(tiny_dir, vec):
    from dsteer_eval.adapters.steered import NonFiniteStateError
    from dsteer_eval.sweep.sweep_lm import SweepLM

    lm = SweepLM(pretrained=tiny_dir, vector=vec, layer=2, alpha=0.0, batch_size=2, device="cpu")
    lm.set_point(2, 1e20)
    with pytest.raises(NonFiniteStateError, match=r"alpha=1e\+20, mode=add.*collapsed"):
        lm.loglikelihood(REQS)
    lm = SweepLM(pretrained=tiny_dir, vector=vec, layer=2, alpha=0.0, batch_size=2, device="cpu")
    points = [("L2_a0", 2, 0.0, None), ("L2_a1", 2, 1.0, None), ("L2_a1e20", 2, 1e20, None)]
    lm.set_point(2, 0.0)
    lm.set_group(points, "L2_a0")
    with pytest.raises(NonFiniteStateError, match=r"alpha=0\.0;1\.0;1e\+20 \(one pass for the group\).*collapsed"):
        lm.loglikelihood(REQS)


def test_the_guard_leaves_normal_numbers_bit_identical(tiny_dir, vec, monkeypatch):
    from contextlib import nullcontext

    from dsteer_eval.adapters import steered

    for args in (dict(alpha=-1.0), dict(alpha=2.0, mode="ablate"), dict(alpha=-1.0, pack_contexts="true")):
        guarded = make(tiny_dir, vector=vec, layer=2, **args).loglikelihood(REQS)
        with monkeypatch.context() as m:
            m.setattr(steered, "finite_guard", lambda parts, describe: nullcontext())
            unguarded = make(tiny_dir, vector=vec, layer=2, **args).loglikelihood(REQS)
        assert guarded == unguarded


# ------------------------------------------------------------------ 3: ALiBi architectures
def _bloom(tok):
    from transformers import BloomConfig, BloomForCausalLM

    return BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=4, n_head=4,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))


def _falcon_alibi(tok):
    from transformers import FalconConfig, FalconForCausalLM

    return FalconForCausalLM(FalconConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4,
                                          num_attention_heads=4, alibi=True, new_decoder_architecture=False,
                                          multi_query=True, parallel_attn=True, bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


# architectures beyond the tiny Llama that steering, packing and the sweep's group pass must run on
ARCHITECTURES = {"bloom": _bloom, "falcon_alibi": _falcon_alibi}
ARCH_REQS = REQS + [Instance("loglikelihood", {}, ("What is the capital", " of France"), 2),
                    Instance("loglikelihood", {}, ("What is the capital", " Paris"), 3)]


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def arch_dir(request, tmp_path_factory):
    """A tiny random model of the architecture, with the tiny Llama's tokenizer and a vector file."""
    from conftest import build_tiny_llama

    folder = tmp_path_factory.mktemp(request.param)
    _, tok = build_tiny_llama(folder / "tokenizer_source")
    torch.manual_seed(0)
    model = ARCHITECTURES[request.param](tok).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    g = torch.Generator().manual_seed(5)
    save_vectors(folder / "v.safetensors", {s: torch.randn(32, generator=g) for s in range(5)}, model=model,
                 model_id=request.param)
    return str(folder)


def _close(got, want, tol=1e-4):
    """packed_contexts' tolerance: |d loglik| <= 1e-4 x max(1, |loglik|) in float32, greedy flags equal."""
    assert len(got) == len(want)
    for (a, ga), (b, gb) in zip(got, want):
        assert abs(a - b) <= tol * max(1.0, abs(b)) and ga == gb, (got, want)


def test_alibi_models_with_packed_contexts_fall_back_to_rows_and_equal_hf(arch_dir, caplog):
    hf = get_model("hf")(pretrained=arch_dir, device="cpu", batch_size=2).loglikelihood(ARCH_REQS)
    lm = make(arch_dir, vector=f"{arch_dir}/v.safetensors", layer=2, alpha=0.0, pack_contexts="true")
    with caplog.at_level("WARNING"):
        _close(lm.loglikelihood(ARCH_REQS), hf)
    assert lm._pack_check["ok"] is False and "first packed batch failed" in caplog.text
    steered = make(arch_dir, vector=f"{arch_dir}/v.safetensors", layer=2, alpha=-2.0)
    packed = make(arch_dir, vector=f"{arch_dir}/v.safetensors", layer=2, alpha=-2.0, pack_contexts="true")
    _close(packed.loglikelihood(ARCH_REQS), steered.loglikelihood(ARCH_REQS))


@pytest.mark.parametrize("pack", ["true", "false"])
def test_alibi_models_in_the_sweeps_group_pass_equal_single_runs(arch_dir, pack):
    from dsteer_eval.sweep.sweep_lm import SweepLM

    vec_path = f"{arch_dir}/v.safetensors"
    hf = get_model("hf")(pretrained=arch_dir, device="cpu", batch_size=2).loglikelihood(ARCH_REQS)
    single = {a: make(arch_dir, vector=vec_path, layer=2, alpha=a).loglikelihood(ARCH_REQS) for a in (1.0, -3.0)}
    lm = SweepLM(pretrained=arch_dir, vector=vec_path, layer=2, alpha=0.0, batch_size=2, device="cpu",
                 pack_contexts=pack)
    points = [("L2_a0", 2, 0.0, None), ("L2_a1", 2, 1.0, None), ("L2_a-3", 2, -3.0, None)]
    for name, layer, alpha, _ in points:
        lm.set_point(layer, alpha)
        lm.set_group(points, name)
        got = lm.loglikelihood(ARCH_REQS)
        _close(got, hf if alpha == 0 else single[alpha])


def test_a_shared_prefix_replay_that_raises_counts_as_a_failed_check(tiny_dir, vec, monkeypatch, caplog):
    from dsteer_eval.steering import shared_prefix
    from dsteer_eval.sweep.sweep_lm import SweepLM

    want = make(tiny_dir, vector=vec, layer=2, alpha=2.0).loglikelihood(REQS)
    lm = SweepLM(pretrained=tiny_dir, vector=vec, layer=2, alpha=0.0, batch_size=2, device="cpu",
                 pack_contexts="false")
    lm.set_point(2, 1.0)
    lm.loglikelihood(REQS)  # stores the states below the site
    lm.set_point(2, 2.0)

    def broken(self, *args, **kwargs):  # stands for an architecture whose layers take what a replay cannot give
        raise ValueError("too many values to unpack (expected 2)")

    monkeypatch.setattr(shared_prefix._Replay, "forward", broken)
    with caplog.at_level("WARNING"):
        _close(lm.loglikelihood(REQS), want)
    assert lm.shared.enabled is False and "replay failed at site 2" in caplog.text
