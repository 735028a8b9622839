"""The embedded SmolLM2-135M-Instruct, end to end (real weights, offline)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM

from dsteer_eval.models import embedded
from dsteer_eval.steering.sites import resolve_parts
from dsteer_eval.vectors import save_vectors

pytestmark = pytest.mark.embedded

PAIRS = [
    ("\n\nHuman: How do I bake bread?\n\nAssistant:", " Mix flour, water, salt and yeast, knead, let it rise and bake."),
    ("\n\nHuman: How do I bake bread?\n\nAssistant:", " I don't know."),
    ("The capital of France is", " Paris"),
]


def test_cache_root_honours_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("DSTEER_EVAL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_root() == tmp_path / "xdg" / "dsteer-eval"
    monkeypatch.setenv("DSTEER_EVAL_CACHE", str(tmp_path / "own"))
    assert embedded.cache_root() == tmp_path / "own"


def test_embedded_is_cached_once_and_loads_like_a_hub_model(embedded_dir):
    folder = Path(embedded_dir)
    marker = folder / "dsteer-embedded.json"
    stamp = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert embedded.ensure_embedded("smollm2") == folder
    assert time.perf_counter() - start < 1.0  # no second dequantization
    assert marker.stat().st_mtime_ns == stamp
    record = json.loads(marker.read_text())
    assert record["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert "quantization_config" not in config
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert embedded.resolve_pretrained("smollm2") == str(folder)
    assert embedded.resolve_pretrained(None) == str(folder)
    assert embedded.resolve_pretrained("gpt2") == "gpt2"


@pytest.fixture(scope="module")
def real_vector(embedded_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_dir)
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("real") / "v.safetensors"
    save_vectors(path, {20: torch.randn(576, generator=g), 30: torch.randn(576, generator=g) / 24},
                 model=model, model_id="smollm2", method="random-test")
    return str(path), model


def test_real_model_alpha_zero_equals_hf_and_final_shift_is_exact(embedded_dir, real_vector):
    path, model = real_vector
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)]
    hf = [ll for ll, _ in HFLM(pretrained=embedded_dir, device="cpu", batch_size=3).loglikelihood(reqs)]
    zero = get_model("steered")(pretrained="smollm2", vector=path, layer=20, alpha=0.0, batch_size=3)
    assert [ll for ll, _ in zero.loglikelihood(reqs)] == hf

    # final: log p(y | x) after steering = log_softmax(z + alpha W_U v)[y], by hand
    ctx, cont = PAIRS[2]
    tok = zero.tokenizer
    c = tok(ctx).input_ids
    y = tok(cont).input_ids[0]
    parts = resolve_parts(model)
    from dsteer_eval.vectors import load_vectors

    v = load_vectors(path).vectors[30]
    with torch.no_grad():
        z = model(torch.tensor([c])).logits[0, -1]
        expected = float(torch.log_softmax(z + 2.0 * (parts.lm_head.weight @ v), -1)[y])
    lm = get_model("steered")(vector=path, layer="final", alpha=2.0)
    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, (ctx, tok.decode([y])), 0)])
    assert ll == pytest.approx(expected, abs=1e-4)
    assert abs(ll - hf[2]) > 1e-3  # the steering did something


def test_shipped_pair_is_the_default_and_alpha_minus_one_subtracts_vbar(embedded_dir):
    """`--model steered --model_args alpha=-1.0`: the shipped DPO adapter, steered by -v̄ at its default layer."""
    from peft import PeftModel

    from dsteer_eval.dpo.training import read_card
    from dsteer_eval.vectors import load_vectors

    adapter, vector = embedded.default_adapter(), embedded.default_vector()
    assert adapter is not None and vector is not None
    card = read_card(adapter)
    assert card["kind"] == "lora" and card["metrics"]["eval"]["pairs"] > 0
    assert card["command"].startswith("dsteer-eval train-dpo ")
    vf = load_vectors(vector)
    assert vf.metadata["method"] == "dpo-diff" and vf.metadata["default_layer"] == "20"
    # the refusal pair: LoRA r=16 on every linear layer, float32 (19 MB); the wheel must stay small
    assert sum(p.stat().st_size for p in adapter.parent.rglob("*") if p.is_file()) <= 20 * 2**20
    assert card["gate"]["passed"]  # the default pair passed its gate, computed in its card

    lm = get_model("steered")(alpha=-1.0, batch_size=4)
    assert isinstance(lm.model, PeftModel)
    [iv] = lm.interventions
    assert (iv.site, iv.alpha) == (20, -1.0) and torch.equal(iv.vector, vf.vectors[20])
    base_only = get_model("steered")(alpha=1.0, peft="none", batch_size=4)
    assert not isinstance(base_only.model, PeftModel)

    # alpha=0 on the default pair is the DPO model itself: lm_eval --model hf with peft= gives the same numbers.
    reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    dpo_hf = HFLM(pretrained=embedded_dir, peft=str(adapter), device="cpu", batch_size=4)
    zero = get_model("steered")(alpha=0.0, batch_size=4)
    got, want = zero.loglikelihood(reqs), dpo_hf.loglikelihood(reqs)
    assert [g[0] for g in got] == [w[0] for w in want]
    minus = [r[0] for r in lm.loglikelihood(reqs)]
    assert all(abs(m - w[0]) > 1e-4 for m, w in zip(minus, want))
