"""``--model steered-vllm`` against ``--model steered`` on the embedded pair: per-request log-likelihoods within
a stated fp32 tolerance, greedy generations identical, α = 0 bit for bit equal to plain ``--model vllm``; a
wrong sign or a wrong site fails the same comparison. Runs in the vLLM venv (scripts/setup_vllm.sh; CI runs
it there), skipped where vLLM is not installed."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("vllm.entrypoints.llm")  # the vLLM venv only (scripts/setup_vllm.sh)

from lm_eval.api.instance import Instance  # noqa: E402
from vllm import SamplingParams, TokensPrompt  # noqa: E402

from dsteer_eval.adapters import plugin  # noqa: E402
from dsteer_eval.common.redaction import redact  # noqa: E402
from dsteer_eval.steering.guard import NonFiniteStateError  # noqa: E402

TOLERANCE = 5e-4  # max |Δ log-likelihood| per request, fp32 (measured: about 7e-5)
COLLAPSING = -6.23e28  # alpha*v fits float32, but overflows RMSNorm's mean square: every logit equal
ENGINE = {"gpu_memory_utilization": 0.15, "max_model_len": 1024, "batch_size": 8}
DOCS = Path(__file__).resolve().parents[2] / "tasks" / "refusal" / "refusal_eval.jsonl"


def _docs(n=6):
    rows = [json.loads(x) for x in DOCS.read_text().splitlines() if x.strip()]
    return rows[:n // 2] + [r for r in rows if r["kind"] == "harmless"][:n - n // 2]


def _ll_requests():
    return [Instance("loglikelihood", doc, (doc["prompt"], doc[k]), idx=i)
            for doc in _docs() for i, k in enumerate(("chosen", "rejected"))]


def _gen_requests(tokens=24):
    return [Instance("generate_until", doc, (doc["prompt"], {"until": ["\n\nHuman:"], "max_gen_toks": tokens,
                                                             "do_sample": False}), idx=0) for doc in _docs(4)]


@pytest.fixture(scope="module")
def engine():
    plugin.register()
    from dsteer_eval.adapters.steered_vllm import SteeredVLLM

    return SteeredVLLM(pair="refusal", layer=20, alpha=-1.0, **ENGINE)


def _hf(**args):
    from dsteer_eval.adapters.steered import SteeredLM

    return SteeredLM(pair="refusal", batch_size=4, **args)


def _ll(lm):
    return [x[0] for x in lm.loglikelihood(_ll_requests(), disable_tqdm=True)]


def _gap(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.parametrize("layer, alpha, control", [(20, -1.0, None), (20, 1.0, None), ("10;20", -1.0, None),
                                                   (20, -1.0, 0), ("final", 0.5, None), (1, -4.0, None)])
def test_log_likelihoods_equal_steered_and_a_wrong_sign_or_site_does_not(engine, layer, alpha, control):
    layers = tuple(int(x) if x.lstrip("-").isdigit() else x for x in str(layer).split(";"))
    engine.set_steering(engine.interventions_at(layers if len(layers) > 1 else layers[0], alpha, control))
    got = _ll(engine)
    extra = {} if control is None else {"control": f"random:{control}"}
    assert _gap(got, _ll(_hf(layer=layer, alpha=alpha, **extra))) <= TOLERANCE
    assert _gap(got, _ll(_hf(layer=layer, alpha=-alpha, **extra))) > 100 * TOLERANCE  # the wrong sign
    if layer == 20:
        assert _gap(got, _ll(_hf(layer=19, alpha=alpha, **extra))) > 100 * TOLERANCE  # the wrong site


def test_greedy_generations_equal_steered(engine):
    for alpha in (-1.0, 1.0):
        engine.set_steering(engine.interventions_at(20, alpha))
        got = engine.generate_until(_gen_requests(), disable_tqdm=True)
        assert got == _hf(layer=20, alpha=alpha).generate_until(_gen_requests(), disable_tqdm=True)
    engine.set_steering(engine.interventions_at(20, 4.0))
    assert engine.generate_until(_gen_requests(), disable_tqdm=True) != got  # the steering reaches generation


@pytest.mark.parametrize("position, other", [("prompt", "completion"), ("completion", "prompt"), ("last", "all")])
def test_positions_equal_steered_and_another_position_does_not(engine, position, other):
    engine.set_steering(engine.interventions_at(20, -1.0))
    engine.set_position(position)
    try:
        got = _ll(engine)
    finally:
        engine.set_position("all")
    assert _gap(got, _ll(_hf(layer=20, alpha=-1.0, position=position))) <= TOLERANCE
    assert _gap(got, _ll(_hf(layer=20, alpha=-1.0, position=other))) > 100 * TOLERANCE


@pytest.mark.parametrize("position", ["prompt", "completion"])
def test_greedy_generations_with_positions_equal_steered(engine, position):
    engine.set_steering(engine.interventions_at(20, 2.0))
    engine.set_position(position)
    try:
        got = engine.generate_until(_gen_requests(), disable_tqdm=True)
    finally:
        engine.set_position("all")
    assert got == _hf(layer=20, alpha=2.0, position=position).generate_until(_gen_requests(), disable_tqdm=True)
    assert got != engine.generate_until(_gen_requests(), disable_tqdm=True)  # position=all writes other replies


def test_several_settings_in_one_engine_pass_equal_separate_runs(engine, monkeypatch):
    """Each request carries its own steering (α, or a control's vector): the first point's pass runs every
    setting; the others are served from it, with the numbers of separate runs."""
    settings = [engine.interventions_at(20, a, c) for a, c in ((-1.0, None), (0.0, None), (1.0, None), (-1.0, 0))]
    separate = []
    for setting in settings:
        engine.set_steering(setting)
        separate.append((_ll(engine), engine.generate_until(_gen_requests(), disable_tqdm=True)))
    runs, real = [], engine._run
    monkeypatch.setattr(engine, "_run", lambda prompts, params: runs.append((engine._slot, len(prompts))) or
                        real(prompts, params))
    engine.set_slots(settings, 0)
    together = []
    for slot in range(len(settings)):
        engine.select_slot(slot)
        together.append((_ll(engine), engine.generate_until(_gen_requests(), disable_tqdm=True)))
    assert {slot for slot, _ in runs} == {0} and sum(n for _, n in runs) == 4 * (12 + 4)  # one pass, all settings
    for (ll_a, gen_a), (ll_b, gen_b) in zip(separate, together):
        assert _gap(ll_a, ll_b) <= 1e-6 and gen_a == gen_b  # measured: equal bit for bit on CPU
    assert separate[0][0] != separate[2][0] and separate[0][0] != separate[3][0]  # the settings differ


def test_the_prefix_cache_never_serves_kv_computed_under_other_steering(engine):
    prompt = engine.tok_encode("Tell me a long story about a cat. " * 40)[:400]  # three full 128-token blocks
    params = SamplingParams(temperature=0, max_tokens=8)

    def steered():
        out = engine._model_generate([prompt], True, [params])[0]
        return list(out.outputs[0].token_ids), out.num_cached_tokens

    def unsalted():  # what lm-eval's VLLM sends: the cache is keyed by tokens only
        out = engine.model.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)[0]
        return list(out.outputs[0].token_ids), out.num_cached_tokens

    engine.set_steering(engine.interventions_at(20, 1.0))
    first, again = steered(), steered()
    assert again[0] == first[0] and again[1] > 0  # the cache is live: the same steering reuses it
    unsalted()
    engine.set_steering(engine.interventions_at(20, -4.0))
    after = steered()
    assert after[1] == 0 and after[0] != first[0]
    stale = unsalted()  # the hazard this guards against: KV computed at alpha=+1 served at alpha=-4
    assert stale[1] > 0 and stale[0] != after[0]


def test_use_cache_keys_entries_by_the_steering(engine, tmp_path, monkeypatch):
    """lm-eval's --use_cache (CachingLM) keys entries by the request alone: each steering gets its own table."""
    from lm_eval.api.model import CachingLM

    answers = {}
    for alpha in (-1.0, 1.0):
        engine.set_steering(engine.interventions_at(20, alpha))
        answers[alpha] = _ll(engine)
    cached = CachingLM(engine, str(tmp_path / "cache.db"))
    runs, real = [], engine._run
    monkeypatch.setattr(engine, "_run", lambda prompts, params: runs.append(len(prompts)) or real(prompts, params))
    for alpha in (-1.0, 1.0, -1.0, 1.0):
        engine.set_steering(engine.interventions_at(20, alpha))
        assert [x[0] for x in cached.loglikelihood(_ll_requests())] == answers[alpha]
    assert sum(runs) == 2 * 12  # each alpha computed once, then served from its own entries
    assert answers[-1.0] != answers[1.0]


def test_two_data_parallel_replicas_give_one_engines_numbers(engine):
    ray = pytest.importorskip("ray")
    from dsteer_eval.adapters.steered_vllm import SteeredVLLM

    # each replica's share of memory must hold its weights as well as its KV cache (vLLM's CPU build refuses
    # 0.08 of 23 GiB: "requested memory for kv -0.04 GiB")
    dp = SteeredVLLM(pair="refusal", layer=20, alpha=-1.0, data_parallel_size=2, **ENGINE)
    try:
        assert len(dp.replicas) == 2 and dp.data_parallel_size == 2 and dp.steered_workers == 2
        for alpha, position in ((-1.0, "all"), (1.0, "completion")):  # re-pointing reaches both replicas
            for lm in (engine, dp):
                lm.set_steering(lm.interventions_at(20, alpha))
                lm.set_position(position)
            assert _gap(_ll(dp), _ll(engine)) <= 1e-6  # each replica runs part of the batch: rounding only
            assert dp.generate_until(_gen_requests(), disable_tqdm=True) == \
                engine.generate_until(_gen_requests(), disable_tqdm=True)
    finally:
        engine.set_position("all")
        dp.replicas.close()
        ray.shutdown()


def test_tensor_parallel_ranks_are_all_steered(monkeypatch):
    """tensor_parallel_size=3 (SmolLM2's 9 attention and 3 KV heads split three ways; vLLM's CPU build runs
    the ranks as processes, unbound from cores on this 2-core machine): every rank is steered and the numbers
    are steered's within the tolerance (the ranks' partial sums change the rounding, not the result)."""
    from dsteer_eval.adapters.steered_vllm import SteeredVLLM

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    lm = SteeredVLLM(pair="refusal", layer=20, alpha=-1.0, tensor_parallel_size=3,
                     **{**ENGINE, "gpu_memory_utilization": 0.08})
    assert lm.steered_workers == 3
    assert _gap(_ll(lm), _ll(_hf(layer=20, alpha=-1.0))) <= TOLERANCE
    lm.set_steering(lm.interventions_at(20, 1.0))
    lm.set_position("completion")
    assert lm.steered_workers == 3
    assert _gap(_ll(lm), _ll(_hf(layer=20, alpha=1.0, position="completion"))) <= TOLERANCE
    assert lm.generate_until(_gen_requests(), disable_tqdm=True) == \
        _hf(layer=20, alpha=1.0, position="completion").generate_until(_gen_requests(), disable_tqdm=True)
    del lm
    gc.collect()  # the three rank processes go before the next engine starts


def test_ablate_equals_steered():
    from dsteer_eval.adapters.steered_vllm import SteeredVLLM

    lm = SteeredVLLM(pair="refusal", peft="none", layer=20, alpha=1.0, mode="ablate", **ENGINE)
    got = _ll(lm)
    assert _gap(got, _ll(_hf(peft="none", layer=20, alpha=1.0, mode="ablate"))) <= TOLERANCE
    assert _gap(got, _ll(_hf(peft="none", layer=20, alpha=0.0))) > 100 * TOLERANCE  # ablating changes something


def test_alpha_zero_is_plain_vllm_bit_for_bit(engine):
    from lm_eval.models.vllm_causallms import VLLM

    engine.set_steering(engine.interventions_at(20, 0.0))
    plain = VLLM(pretrained=engine.model_args["model"], dtype="float32", enforce_eager=True, **ENGINE)
    assert _ll(engine) == _ll(plain)
    assert engine.generate_until(_gen_requests(), disable_tqdm=True) == \
        plain.generate_until(_gen_requests(), disable_tqdm=True)


@pytest.mark.parametrize("args, message", [
    ({"enforce_eager": "false"}, "enforce_eager=false: steered-vllm runs vLLM eagerly"),
    ({"unit": "norm"}, "unit=norm: use unit=true"),
    ({"position": "middle"}, "position='middle'"),
    ({"data_parallel_size": 0}, "data_parallel_size=0"),
    ({"layer": 99}, "out of range"),
    ({"mode": "ablate", "alpha": -1}, "mode=ablate with alpha=-1"),
])
def test_bad_arguments_fail_before_the_engine_loads(args, message, monkeypatch):
    from lm_eval.models import vllm_causallms

    from dsteer_eval.adapters.steered_vllm import SteeredVLLM

    monkeypatch.setattr(vllm_causallms, "LLM", lambda **_: pytest.fail("the engine was started"))
    with pytest.raises(ValueError, match=message):
        SteeredVLLM(pair="refusal", **{"alpha": -1.0, **args}, **ENGINE)


class _EngineStarted(Exception):
    pass


def _no_engine(monkeypatch, seen=None):
    """vLLM's LLM replaced: records the arguments it was given, then stops the construction."""
    from lm_eval.models import vllm_causallms

    def start(**kwargs):
        if seen is not None:
            seen.append(kwargs)
        raise _EngineStarted

    monkeypatch.setattr(vllm_causallms, "LLM", start)


def test_a_collapsed_forward_pass_raises_as_steered_does(engine):
    """alpha*v fits float32 but collapses the state (the final norm's input overflows: LM-head input all zero,
    every logit equal, log-likelihoods exactly -n log V): steered-vllm raises steered's NonFiniteStateError for
    log-likelihood and generation requests, naming alpha and dtype, instead of scoring the shortest choice."""
    with pytest.raises(NonFiniteStateError, match="a forward pass collapsed"):
        _ll(_hf(layer=20, alpha=COLLAPSING))  # steered, the same arguments
    label = r"steered model \(peft=.*, vector=.*, layer=20, alpha=-6\.23e\+28, mode=add, position=all, dtype=float32\)"
    for run in (_ll, lambda lm: lm.generate_until(_gen_requests(), disable_tqdm=True)):
        engine.set_steering(engine.interventions_at(20, COLLAPSING))  # re-pointed: the guard starts afresh
        with pytest.raises(NonFiniteStateError, match=label + r": a forward pass collapsed: the state feeding "
                                                              r"the LM head is all zero for \d+ token\(s\)"):
            run(engine)
    engine.set_steering(engine.interventions_at(20, -1.0))
    assert _gap(_ll(engine), _ll(_hf(layer=20, alpha=-1.0))) <= TOLERANCE  # re-pointed: working again


def test_a_collapsed_slot_raises_for_its_own_requests_only(engine, monkeypatch):
    """Two settings in one engine pass, one collapsing: the other's answers are served (separate runs' numbers);
    selecting the collapsed one raises, from its kept answers too, without another pass."""
    engine.set_steering(engine.interventions_at(20, -1.0))
    alone = _ll(engine)
    runs, real = [], engine._run
    monkeypatch.setattr(engine, "_run", lambda prompts, params: runs.append(len(prompts)) or real(prompts, params))
    engine.set_slots([engine.interventions_at(20, -1.0), engine.interventions_at(20, COLLAPSING, 0)], 0)
    assert _gap(_ll(engine), alone) <= 1e-6 and sum(runs) == 2 * 12  # 12 requests x 2 slots
    engine.select_slot(1)
    with pytest.raises(NonFiniteStateError, match=r"layer=20, alpha=-6\.23e\+28, mode=add, position=all, "
                                                  r"control=random:0, dtype=float32\): a forward pass collapsed"):
        _ll(engine)
    assert sum(runs) == 2 * 12  # its answers were computed (and found broken) in slot 0's pass
    engine.set_steering(engine.interventions_at(20, -1.0))


def test_nothing_is_pickled_to_the_workers(engine):
    """The steering and the guard reach the workers as method names on vLLM's worker_extension_cls, so the
    process never allows vLLM's pickle fallback (VLLM_ALLOW_INSECURE_SERIALIZATION): a function is refused."""
    from dsteer_eval.steering.engine_hooks import EXTENSION

    assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in os.environ
    assert engine.model.llm_engine.vllm_config.parallel_config.worker_extension_cls == EXTENSION
    with pytest.raises(TypeError, match="is not serializable"):
        engine.model.collective_rpc(lambda worker: 1)
    engine.set_steering(engine.interventions_at(20, 1.0))
    assert engine.steered_workers == 1
    assert _gap(_ll(engine), _ll(_hf(layer=20, alpha=1.0))) <= TOLERANCE


@pytest.mark.parametrize("fails_at", ["arguments", "engine"])
def test_model_arg_secrets_are_registered_at_construction(fails_at, monkeypatch):
    """As steered: token=, api_key= ... are masked in every log record and error from construction on, whether
    construction fails at the argument checks or after them (the engine start)."""
    from dsteer_eval.adapters.steered_vllm import SteeredVLLM

    _no_engine(monkeypatch)
    secret = f"hf_dsteerVllm{fails_at}Secret42"
    refused = {"unit": "norm"} if fails_at == "arguments" else {}
    with pytest.raises(ValueError if refused else _EngineStarted):
        SteeredVLLM(pair="refusal", alpha=-1.0, token=secret, **refused, **ENGINE)
    assert redact(f"the engine said {secret}.") == "the engine said <model_args token>."


def _base_in(dtype: str, folder: Path) -> tuple[str, dict]:
    """The embedded base model with a config that names ``dtype`` (weights linked), and the shipped pair's vector
    and adapter for it."""
    from dsteer_eval.models.defaults import resolve_default_pair
    from dsteer_eval.models.embedded import resolve_pretrained

    base = Path(resolve_pretrained(None))
    folder.mkdir()
    for item in base.iterdir():
        (folder / item.name).symlink_to(item)
    config = json.loads((base / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "dtype": dtype, "torch_dtype": dtype}))
    shipped = resolve_default_pair(None, pair="refusal")
    return str(folder), {"vector": shipped.vector, "peft": shipped.peft}


def test_dtype_auto_runs_the_base_config_dtype_on_both_sides(monkeypatch, tmp_path):
    """dtype=auto: both sides run the base model's config dtype, passed to vLLM explicitly. The merged DPO
    checkpoint is saved in float32, so vLLM's own auto would resolve it apart from the base (here a float16
    base: float16 for the base side, the platform's preferred bfloat16 for the merged DPO side)."""
    from transformers import AutoConfig

    from dsteer_eval.adapters import steered_vllm
    from dsteer_eval.models.defaults import resolve_default_pair
    from dsteer_eval.models.embedded import resolve_pretrained
    from dsteer_eval.models.merged_checkpoint import merged_checkpoint

    merged = merged_checkpoint(resolve_pretrained(None), resolve_default_pair(None, pair="refusal").peft)
    monkeypatch.setattr(steered_vllm, "merged_checkpoint", lambda base, adapter: merged)  # the shipped merge
    for dtype, pretrained, pair in (("float32", None, {"pair": "refusal"}),
                                    ("float16", *_base_in("float16", tmp_path / "fp16"))):
        seen = []
        _no_engine(monkeypatch, seen)
        for side in ({}, {"peft": "none"}):
            with pytest.raises(_EngineStarted):
                steered_vllm.SteeredVLLM(pretrained=pretrained, alpha=-1.0, dtype="auto", **{**pair, **side},
                                         layer=20, **ENGINE)
        assert [kwargs["dtype"] for kwargs in seen] == [dtype, dtype]  # DPO side, base side
        assert str(AutoConfig.from_pretrained(seen[0]["model"]).dtype) == "torch.float32"  # the merged weights
        assert str(AutoConfig.from_pretrained(seen[1]["model"]).dtype) == f"torch.{dtype}"  # the base


def test_dtype_auto_checks_alpha_v_against_the_dtype_the_engine_runs(monkeypatch, tmp_path):
    """A bfloat16 config and alpha*v between bfloat16's largest value and float32's: it fits the float32 skeleton
    dtype=auto used to be checked on, and overflows the bfloat16 the engine runs: refused before it starts."""
    import torch

    from dsteer_eval.adapters.steered_vllm import SteeredVLLM
    from dsteer_eval.vectors.formats import load_vectors

    _no_engine(monkeypatch)
    pretrained, pair = _base_in("bfloat16", tmp_path / "bf16")
    v = load_vectors(pair["vector"], argument="vector").vector(20, argument="vector").float()
    alpha = 3.4e38 / float(v.abs().max())
    assert torch.isfinite(alpha * v).all() and not torch.isfinite((alpha * v).bfloat16()).all()
    with pytest.raises(ValueError, match=r"alpha=.* \(layer 20\) in the model's dtype: .* beyond the largest "
                                         r"bfloat16 value"):
        SteeredVLLM(pretrained=pretrained, **pair, layer=20, alpha=alpha, dtype="auto", **ENGINE)
    with pytest.raises(_EngineStarted):  # float32 holds it
        SteeredVLLM(pretrained=pretrained, **pair, layer=20, alpha=alpha, dtype="float32", **ENGINE)
