"""The settings of a DPO run (:class:`DPOSettings`) and the documented presets (``train-dpo --preset``).

No torch here: the CLI reads the presets for ``--help`` without loading a model."""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SAVE_STEPS = 50
LABELS = ("given", "shuffled")


@dataclass
class DPOSettings:
    """Hyper-parameters of one DPO run (the CLI flags of ``train-dpo`` mirror these)."""

    beta: float = 0.1
    learning_rate: float = 5e-5
    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int = 0
    max_length: int = 192
    max_prompt_length: int = 128
    eval_size: int = 64
    full: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    precision: str = "auto"
    lm_head: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 10
    epochs: float = 0.0  # > 0: steps = ceil(epochs * train pairs / (batch_size * grad_accum)), replacing steps
    # "given": train on the pairs as labelled; "shuffled": chosen and rejected are swapped on a seeded half of the
    # train pairs, so there is no consistent preference to learn (the null DPO run; held-out pairs keep their labels)
    labels: str = "given"

    def check(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "max_length", "max_prompt_length", "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_size"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.epochs) and self.epochs >= 0):
            raise ValueError(f"epochs must be a finite number >= 0 (0: use steps), got {self.epochs}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length}) "
                f"to leave room for the replies"
            )
        for name in ("beta", "learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.full and (self.lora_r < 1 or self.lora_alpha <= 0):
            raise ValueError("lora_r must be >= 1 and lora_alpha > 0 (or pass full=True for full fine-tuning)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {self.labels!r}")
        if self.lm_head not in ("auto", "trl", "compact"):
            raise ValueError(f"lm_head must be auto, trl or compact, got {self.lm_head!r}")

    def lora_target_modules(self):
        targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if not targets:
            raise ValueError("lora_targets is empty; use 'all-linear' or module names like q_proj,v_proj")
        return "all-linear" if targets == ["all-linear"] else targets

    def steps_for(self, train_pairs: int) -> int:
        """Optimizer steps of the run: ``steps``, or ``epochs`` passes over ``train_pairs``."""
        if self.epochs > 0:
            return max(1, math.ceil(self.epochs * train_pairs / (self.batch_size * self.grad_accum)))
        return self.steps


# Documented recipes (docs/data-and-splits.md).  A preset fills
# the settings and the data part; flags given on the command line override it.
PRESETS = {
    # the refusal pair: build-refusal's refusal_pairs.jsonl.gz, ~1 epoch over the train part;
    # beta 0.3 / lr 5e-4 is the point scripts/dpo_hparam_sweep.py chose on the vector part
    # (results/dpo_hparam_sweep/sweep.md)
    "refusal": {"part": "train", "settings": dict(
        beta=0.3, learning_rate=5e-4, epochs=1.0, batch_size=4, warmup_steps=6, lora_r=16, lora_alpha=32,
        lora_targets="all-linear")},
    # the HH harmless pair: LoRA r 16 on every linear layer, 1 epoch over the train part; beta / lr
    # from scripts/dpo_hparam_sweep.py --preset hh (results/dpo_hparam_sweep_hh/sweep.md)
    "hh": {"part": "train", "settings": dict(
        beta=0.1, learning_rate=5e-4, epochs=1.0, batch_size=4, warmup_steps=10, lora_r=16, lora_alpha=32,
        lora_targets="all-linear")},
    # the toxicity pair (Lee et al. 2024 on the embedded model): build-toxicity's toxicity_pairs.jsonl.gz, 1 epoch
    # over the train part; beta 0.1 as the paper (which trained every weight with RMSprop at lr 1e-6); LoRA r 16 on
    # every linear layer, so the MLP value vectors (down_proj) and keys (gate/up) can change. No hparam sweep: the
    # other presets' learning rate. Prompts and continuations are short (20 tokens), hence the short max lengths.
    "toxicity": {"part": "train", "settings": dict(
        beta=0.1, learning_rate=5e-4, epochs=1.0, batch_size=4, warmup_steps=10, lora_r=16, lora_alpha=32,
        lora_targets="all-linear", max_length=96, max_prompt_length=64)},
}


def preset_settings(name: str) -> DPOSettings:
    try:
        return DPOSettings(**PRESETS[name]["settings"])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
