"""models/defaults.py: the one resolver of the shipped pair, and a check that nobody else resolves it."""
import ast
from pathlib import Path

import pytest

import dsteer_eval
from dsteer_eval.models import defaults, embedded
from dsteer_eval.models.defaults import NoDefaultVectorError, resolve_default_pair, resolve_dpo_side


def test_nothing_named_is_the_shipped_refusal_pair():
    got = resolve_default_pair()
    assert got.vector == str(embedded.default_vector("smollm2", "refusal"))
    assert got.peft == str(embedded.default_adapter("smollm2", "refusal"))
    assert got.shipped and got.adapter == got.peft and got.name == "smollm2"
    assert resolve_default_pair("SmolLM2") == resolve_default_pair("SmolLM2", pair="refusal")


def test_pair_hh_picks_the_hh_files():
    got = resolve_default_pair(pair="hh")
    assert got.vector == str(embedded.default_vector("smollm2", "hh"))
    assert got.peft == str(embedded.default_adapter("smollm2", "hh"))
    with pytest.raises(ValueError, match="pair='nope'.*refusal, hh"):
        resolve_default_pair(pair="nope")


def test_peft_given_is_kept_and_none_means_the_base():
    got = resolve_default_pair(peft="none")
    assert got.peft == "none" and got.adapter is None and got.shipped
    assert resolve_default_pair(peft="/x/adapter").peft == "/x/adapter"


def test_a_named_vector_brings_no_adapter_and_refuses_pair():
    got = resolve_default_pair("gpt2", vector="v.safetensors")
    assert (got.vector, got.peft, got.shipped) == ("v.safetensors", None, False)
    assert resolve_default_pair(vector="v.safetensors", peft="a").peft == "a"
    with pytest.raises(ValueError, match="pair= picks a shipped base/DPO pair; with vector= give peft="):
        resolve_default_pair(vector="v.safetensors", pair="hh")


def test_other_models_must_name_their_vector():
    with pytest.raises(ValueError, match="vector= is required for pretrained=gpt2"):
        resolve_default_pair("gpt2")


def test_missing_shipped_adapter_says_so(monkeypatch):
    monkeypatch.setattr(defaults, "default_adapter", lambda name, pair=None: None)
    with pytest.raises(NoDefaultVectorError, match="ships a vector but no DPO adapter for 'smollm2'.*peft=none"):
        resolve_default_pair()
    assert resolve_default_pair(peft="none").adapter is None  # peft given: no adapter needed


def test_dpo_side():
    assert resolve_dpo_side(dpo="ckpt") == {"dpo": "ckpt"}
    assert resolve_dpo_side("gpt2", peft="a") == {"adapter": "a"}
    assert resolve_dpo_side() == {"adapter": str(embedded.default_adapter("smollm2"))}
    with pytest.raises(ValueError, match="not both"):
        resolve_dpo_side(dpo="x", peft="y")
    with pytest.raises(ValueError, match="needs the DPO model: pass --dpo CHECKPOINT or --peft"):
        resolve_dpo_side("gpt2")


def test_model_name():
    assert defaults.model_name(None) == defaults.model_name("") == "smollm2"
    assert defaults.model_name("gpt2") == "gpt2"


def test_only_the_resolver_looks_up_shipped_files():
    """default_vector/default_adapter (the shipped files) are called from models/defaults.py only, and the
    embedded model's short name is spelled as a literal nowhere else in the package's code."""
    root = Path(dsteer_eval.__file__).parent
    callers, literals = set(), set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in ("default_vector", "default_adapter"):
                    callers.add(rel)
            if isinstance(node, ast.Constant) and node.value == "smollm2":
                literals.add(rel)
    assert callers == {"models/defaults.py"}
    assert literals <= {"models/embedded.py"}, sorted(literals)


def test_vector_pair_puts_another_pairs_vector_on_this_pairs_model():
    got = resolve_default_pair(pair="refusal", vector_pair="hh")
    assert got.vector == str(embedded.default_vector("smollm2", "hh"))
    assert got.peft == str(embedded.default_adapter("smollm2", "refusal")) and got.shipped
    back = resolve_default_pair(pair="hh", vector_pair="refusal")
    assert (back.vector, back.peft) == (str(embedded.default_vector("smollm2", "refusal")),
                                        str(embedded.default_adapter("smollm2", "hh")))
    with pytest.raises(ValueError, match="either vector= .* or vector_pair="):
        resolve_default_pair(vector="v.safetensors", vector_pair="hh")
    with pytest.raises(ValueError, match="pair='x'"):
        resolve_default_pair(vector_pair="x")


def test_steered_takes_vector_pair(embedded_dir):
    """`--model_args pair=refusal,vector_pair=hh`: the refusal pair's DPO model steered by the HH pair's v̄."""
    from lm_eval.api.registry import get_model

    lm = get_model("steered")(pair="refusal", vector_pair="hh", alpha=-1.0, device="cpu", batch_size=1)
    assert str(lm.vector_file.path) == str(embedded.default_vector("smollm2", "hh"))
    assert lm.model.peft_config  # the refusal adapter is loaded
    assert str(embedded.default_adapter("smollm2", "refusal")) in lm.pretrained_label
