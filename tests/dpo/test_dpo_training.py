"""train-dpo on a tiny random Llama: what changes, the CPU LM head, the card, bad input."""

from __future__ import annotations

import json
import shlex

import pytest
import torch
from conftest import SHORT_PAIRS, write_jsonl

from dsteer_eval.dpo.training import DPOSettings, make_trainer, recreate_command, train_dpo
from dsteer_eval.data.preference_pairs import PreferencePair

PAIRS = [PreferencePair(**row) for row in SHORT_PAIRS]
FAST = dict(batch_size=2, max_length=64, max_prompt_length=40, eval_size=0, logging_steps=1)


def _fresh(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(tiny_dir)


def test_dpo_steps_change_only_the_adapter(tiny_dir, tmp_path):
    model, tok = _fresh(tiny_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(model, tok, PAIRS, DPOSettings(steps=2, learning_rate=1e-2, **FAST), output_dir=tmp_path)
    trainer.train()
    assert trainer.state.global_step == 2
    lora, base = {}, {}
    for name, p in trainer.model.named_parameters():
        (lora if "lora_" in name else base)[name] = p
    assert lora and all(p.requires_grad for p in lora.values())
    # Every LoRA matrix moved (B in step 1, A once B is non-zero) ...
    assert all(not torch.equal(p, torch.zeros_like(p)) for n, p in lora.items() if "lora_B" in n)
    # ... and every base weight is bit-identical to before training.
    unwrapped = trainer.model.get_base_model().state_dict()
    checked = 0
    for key, value in before.items():
        peft_key = key.replace(".weight", ".base_layer.weight") if key.replace(".weight", ".base_layer.weight") in unwrapped else key
        assert torch.equal(unwrapped[peft_key], value), key
        checked += 1
    assert checked == len(before)


def test_lora_a_moves_after_b(tiny_dir, tmp_path):
    model, tok = _fresh(tiny_dir)
    trainer = make_trainer(model, tok, PAIRS, DPOSettings(steps=2, learning_rate=1e-2, **FAST), output_dir=tmp_path)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}
    trainer.train()
    moved = [n for n, p in trainer.model.named_parameters() if "lora_A" in n and not torch.equal(p, start[n])]
    assert len(moved) == len(start)


def test_compact_head_equals_trl_head(tiny_dir, tmp_path):
    """Same log-probs, entropy, mean logits, top-1 flags, loss and gradients as trl's fused kernel."""
    outs, grads = {}, {}
    for head in ("trl", "compact"):
        model, tok = _fresh(tiny_dir)
        trainer = make_trainer(model, tok, PAIRS, DPOSettings(steps=1, lm_head=head, **FAST), output_dir=tmp_path / head)
        assert trainer.dsteer_lm_head == head
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():  # a non-trivial adapter, so policy != reference
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        trainer.model.train()
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                            fused_lm_head=True)
        outs[head] = out
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads[head] = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        outs[head + "_loss"] = loss.detach()
    a, b = outs["trl"], outs["compact"]
    assert int(a.label_mask.sum()) > 0 and torch.equal(a.label_mask, b.label_mask)
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), atol=1e-5, rtol=1e-5)
    assert torch.equal(a.is_top1.bool(), b.is_top1.bool())
    torch.testing.assert_close(outs["compact_loss"], outs["trl_loss"], atol=1e-6, rtol=1e-6)
    assert grads["trl"].keys() == grads["compact"].keys() and grads["trl"]
    for name in grads["trl"]:
        torch.testing.assert_close(grads["compact"][name], grads["trl"][name], atol=1e-6, rtol=1e-4)


def test_train_dpo_writes_adapter_and_card(tiny_dir, short_pairs_file, tmp_path):
    from dsteer_eval.cli import build_parser

    settings = DPOSettings(steps=2, learning_rate=1e-3, eval_size=4, batch_size=2, max_length=64,
                           max_prompt_length=40, lora_r=2, lora_alpha=4)
    out = tmp_path / "dpo"
    card = train_dpo(short_pairs_file, out, settings, pretrained=tiny_dir)
    names = {p.name for p in out.iterdir()}
    assert names == {"adapter_model.safetensors", "adapter_config.json", "dpo_card.json"}
    assert json.loads((out / "dpo_card.json").read_text()) == card
    assert card["data"]["pairs_loaded"] == 18 and card["data"]["pairs_eval"] == 3
    # no pair is dropped: over-long prompts are left-truncated and counted instead
    assert card["data"]["pairs_train"] + card["data"]["pairs_eval"] == 18 and card["data"]["part"] == "all"
    assert card["data"]["prompts_truncated"] == 0
    assert card["steps_done"] == 2 and card["kind"] == "lora" and card["lm_head"] == "compact" and not card["bf16"]
    for split in ("train", "eval"):
        m = card["metrics"][split]
        assert 0.0 <= m["reward_accuracy"] <= 1.0
        assert m["reward_margin_mean"] == pytest.approx(m["chosen_reward_mean"] - m["rejected_reward_mean"], abs=1e-6)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
    # The recorded command parses back to exactly these settings.
    args = build_parser().parse_args(shlex.split(card["command"])[1:])
    assert args.verb == "train-dpo" and args.out == str(out) and args.data == short_pairs_file
    assert DPOSettings(**{k: getattr(args, k) for k in settings.__dataclass_fields__}) == settings


def test_rewards_are_beta_times_logratio(tiny_dir, tmp_path):
    """pair_rewards equals beta*(log pi - log pi_ref) computed by hand with the adapter on and off."""
    from dsteer_eval.dpo.training import pair_rewards

    model, tok = _fresh(tiny_dir)
    trainer = make_trainer(model, tok, PAIRS[:2], DPOSettings(steps=1, beta=0.3, **FAST), output_dir=tmp_path)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    chosen, rejected = pair_rewards(trainer, PAIRS[:2])
    trainer.model.eval()

    def logp(text_prompt, reply):
        ids = tok(text_prompt + reply + tok.eos_token).input_ids
        n_prompt = len(tok(text_prompt).input_ids)
        x = torch.tensor([ids])
        lp = trainer.model(input_ids=x).logits[0, :-1].log_softmax(-1).gather(-1, x[0, 1:, None]).squeeze(-1)
        return lp[n_prompt - 1:].sum()

    with torch.no_grad():
        for i, p in enumerate(PAIRS[:2]):
            pol = [logp(p.prompt, r) for r in (p.chosen, p.rejected)]
            with trainer.model.disable_adapter():
                ref = [logp(p.prompt, r) for r in (p.chosen, p.rejected)]
            assert float(chosen[i]) == pytest.approx(0.3 * float(pol[0] - ref[0]), abs=1e-4)
            assert float(rejected[i]) == pytest.approx(0.3 * float(pol[1] - ref[1]), abs=1e-4)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "holds no usable pairs"),
        (["not json"], r"short\.jsonl:1: not valid JSON"),
        ([{"chosen": "\n\nHuman: a\n\nAssistant: b"}], "needs fields 'chosen' and 'rejected'"),
        ([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: zz\n\nAssistant: c"}],
         r"no usable pairs .*different prompts"),
        ([{"prompt": "p", "chosen": 3, "rejected": "r"}], "field 'chosen' must be a string"),
    ],
)
def test_bad_data_fails_before_training_and_writes_nothing(tiny_dir, tmp_path, rows, message):
    path = tmp_path / "short.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        train_dpo(path, out, DPOSettings(steps=1, **FAST), pretrained=tiny_dir)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["short.jsonl"]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(beta=-0.1), "beta must be a finite number > 0"),
        (dict(learning_rate=float("nan")), "learning_rate must be a finite number"),
        (dict(max_prompt_length=64), r"max_prompt_length \(64\) must be below max_length \(64\)"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(lora_r=0), "lora_r must be >= 1"),
        (dict(precision="fp8"), "precision must be auto, fp32 or bf16"),
    ],
)
def test_bad_settings_are_named(short_pairs_file, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train_dpo(short_pairs_file, tmp_path / "out", DPOSettings(**{**FAST, **change}), pretrained="/nonexistent")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten(tiny_dir, short_pairs_file, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty"):
        train_dpo(short_pairs_file, out, DPOSettings(steps=1, **FAST), pretrained=tiny_dir)
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_train_dpo_reports_errors_with_exit_2(tmp_path, capsys):
    from dsteer_eval.cli import main

    path = write_jsonl(tmp_path / "empty.jsonl", [])
    assert main(["train-dpo", "--data", path, "--out", str(tmp_path / "o")]) == 2
    assert "holds no usable pairs" in capsys.readouterr().err


def test_recreate_command_names_only_changed_settings():
    cmd = recreate_command(None, "d.jsonl", DPOSettings(steps=7, full=True), out="o")
    assert cmd == "dsteer-eval train-dpo --data d.jsonl --steps 7 --full --out o"


def test_full_fine_tuning_writes_a_model(tiny_dir, short_pairs_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    card = train_dpo(short_pairs_file, out, DPOSettings(steps=1, full=True, learning_rate=1e-3, **FAST),
                     pretrained=tiny_dir)
    assert card["kind"] == "full" and (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    trained = AutoModelForCausalLM.from_pretrained(out)
    start, _ = _fresh(tiny_dir)
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, start.get_parameter(n))]
    assert len(changed) == len(list(start.parameters()))  # full fine-tuning moves every weight


def test_hub_data_is_read_through_datasets(monkeypatch, tmp_path):
    """A hub id goes to datasets.load_dataset with data_dir and split (mocked: no network here)."""
    import datasets

    from dsteer_eval.data.preference_pairs import load_pairs

    seen = {}

    def fake_load_dataset(name, data_dir=None, split=None):
        seen.update(name=name, data_dir=data_dir, split=split)
        return datasets.Dataset.from_list([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs = load_pairs("Anthropic/hh-rlhf", data_dir="harmless-base", split="test")
    assert seen == {"name": "Anthropic/hh-rlhf", "data_dir": "harmless-base", "split": "test"}
    assert pairs.source == "hub:Anthropic/hh-rlhf/harmless-base[test]" and len(pairs) == 1
