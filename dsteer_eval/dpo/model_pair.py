"""A base/DPO model pair: two checkpoints, or ONE model with a PEFT adapter toggled.

``ModelPair.load(base, dpo=PATH)`` holds two models; ``ModelPair.load(base,
adapter=PATH)`` holds one PeftModel and runs the base by disabling the adapter
(``PeftModel.disable_adapter()``), so memory stays at about one model.  Either
way :meth:`ModelPair.side` yields the model to run for ``"base"`` or ``"dpo"``.

Loading checks that the two sides can be compared: same tokenizer (vocabulary
and special tokens) and same architecture (hidden size, layers, vocabulary).
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from dsteer_eval.models.defaults import model_name
from dsteer_eval.models.embedded import resolve_pretrained
from dsteer_eval.steering.sites import resolve_parts
from dsteer_eval.vectors import model_fingerprint


class ModelPairError(ValueError):
    """Base and DPO models that cannot be compared; the message says why."""


@dataclass
class ModelPair:
    base: torch.nn.Module  # with an adapter: the PeftModel itself
    dpo: torch.nn.Module | None  # None when the DPO side is the adapter
    tokenizer: object
    base_id: str
    dpo_id: str
    adapter_name: str = "default"  # which adapter of the PeftModel is the DPO side (the null adapter: "null")

    @property
    def uses_adapter(self) -> bool:
        return self.dpo is None

    @property
    def num_sites(self) -> int:
        return resolve_parts(self.base).num_sites

    @contextmanager
    def side(self, which: str):
        """The model that computes ``which`` ("base" or "dpo")."""
        if which not in ("base", "dpo"):
            raise ValueError(f"side must be 'base' or 'dpo', got {which!r}")
        if self.uses_adapter:
            if which == "dpo" and self.base.active_adapter != self.adapter_name:
                self.base.set_adapter(self.adapter_name)
            ctx = self.base.disable_adapter() if which == "base" else nullcontext()
            with ctx:
                yield self.base
        else:
            yield self.base if which == "base" else self.dpo

    @classmethod
    def load(cls, base=None, *, dpo=None, adapter=None, device: str | None = None,
             dtype=torch.float32) -> "ModelPair":
        from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers loads only when a model is loaded

        if (dpo is None) == (adapter is None):
            raise ModelPairError("give the DPO side either as dpo=CHECKPOINT or as adapter=PEFT_FOLDER (one of them)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        for name, value in (("dpo", dpo), ("adapter", adapter)):
            if value is not None and _looks_local(value) and not Path(value).exists():
                raise FileNotFoundError(f"{name}={value}: no such folder")
        if adapter is not None and _looks_local(adapter) and not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelPairError(f"adapter={adapter} holds no adapter_config.json: is it a PEFT adapter folder?")
        base_path = resolve_pretrained(base)
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device).eval()
        if adapter is not None:
            from peft import PeftModel  # deferred: peft loads only when an adapter is used

            _check_adapter_base(adapter, model)
            try:
                model = PeftModel.from_pretrained(model, str(adapter)).eval()
            except RuntimeError as exc:  # size mismatches: an adapter of another model
                first = str(exc).strip().splitlines()[0][:300]
                raise ModelPairError(f"adapter={adapter} does not fit the base model {base_path}: {first}") from None
            return cls(model, None, tokenizer, model_name(base), str(adapter))
        dpo_path = resolve_pretrained(dpo)
        check_same_tokenizer(tokenizer, AutoTokenizer.from_pretrained(dpo_path), str(base_path), str(dpo_path))
        other = AutoModelForCausalLM.from_pretrained(dpo_path, dtype=dtype).to(device).eval()
        check_same_architecture(model, other, str(base_path), str(dpo_path))
        return cls(model, other, tokenizer, model_name(base), str(dpo))


def _looks_local(value) -> bool:
    """A path rather than a hub id (``gpt2``, ``org/name``) or an embedded short name."""
    text = str(value)
    return text.startswith((".", "/", "~")) or Path(text).exists() or text.count("/") > 1


def _check_adapter_base(adapter, model) -> None:
    config_file = Path(str(adapter)) / "adapter_config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    # A LoRA on another architecture fails inside peft with a shape error; say it plainly.
    targets = config.get("target_modules")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if isinstance(targets, list) and targets and not set(targets) & names:
        raise ModelPairError(
            f"adapter={adapter} targets modules {targets} that the base model does not have; "
            f"it was trained on a different architecture"
        )


def check_same_tokenizer(a, b, name_a: str, name_b: str) -> None:
    if a.get_vocab() != b.get_vocab() or a.all_special_tokens != b.all_special_tokens:
        raise ModelPairError(
            f"base ({name_a}) and DPO ({name_b}) use different tokenizers; hidden states at "
            f"'the last prompt token' are not comparable. Use a DPO model trained from this base"
        )


def check_same_architecture(a, b, name_a: str, name_b: str) -> None:
    fa, fb = model_fingerprint(a), model_fingerprint(b)
    if fa != fb:
        diff = ", ".join(f"{k}: {fa[k]} vs {fb[k]}" for k in fa if fa[k] != fb.get(k))
        raise ModelPairError(f"base ({name_a}) and DPO ({name_b}) have different architectures ({diff})")
