"""``--model steered-vllm`` against ``--model steered`` on the embedded pair: per-request log-likelihoods within
a stated fp32 tolerance, greedy generations identical, α = 0 bit for bit equal to plain ``--model vllm``; a
wrong sign or a wrong site fails the same comparison. Runs in the vLLM venv (scripts/setup_vllm.sh; CI runs
it there), skipped where vLLM is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm.entrypoints.llm")  # the vLLM venv only (scripts/setup_vllm.sh)

from lm_eval.api.instance import Instance  # noqa: E402

from dsteer_eval.harness import plugin  # noqa: E402

TOLERANCE = 5e-4  # max |Δ log-likelihood| per request, fp32 (measured: about 7e-5)
ENGINE = {"gpu_memory_utilization": 0.15, "max_model_len": 1024, "batch_size": 8}
DOCS = Path(__file__).resolve().parents[2] / "dsteer_eval" / "harness" / "tasks" / "refusal" / "refusal_eval.jsonl"


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
    from dsteer_eval.harness.steered_vllm import SteeredVLLM

    return SteeredVLLM(pair="refusal", layer=20, alpha=-1.0, **ENGINE)


def _hf(**args):
    from dsteer_eval.harness.steered import SteeredLM

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


def test_ablate_equals_steered():
    from dsteer_eval.harness.steered_vllm import SteeredVLLM

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
    ({"position": "prompt"}, "position=prompt: steered-vllm steers every position"),
    ({"data_parallel_size": 2}, "data_parallel_size>1"),
    ({"layer": 99}, "out of range"),
    ({"mode": "ablate", "alpha": -1}, "mode=ablate with alpha=-1"),
])
def test_bad_arguments_fail_before_the_engine_loads(args, message, monkeypatch):
    from lm_eval.models import vllm_causallms

    from dsteer_eval.harness.steered_vllm import SteeredVLLM

    monkeypatch.setattr(vllm_causallms, "LLM", lambda **_: pytest.fail("the engine was started"))
    with pytest.raises(ValueError, match=message):
        SteeredVLLM(pair="refusal", **{"alpha": -1.0, **args}, **ENGINE)
