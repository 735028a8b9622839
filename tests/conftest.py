"""Shared fixtures: a tiny random Llama (fast) and the real embedded model (slower)."""

from __future__ import annotations

import contextlib
import os

for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tests mirror the packages (tests/steering/, tests/sweep/, ...) and share helpers by plain import
# (`from test_tasks import write_vector`): every folder of tests/ is on sys.path, as tests/ itself is.
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

for _folder in sorted(Path(__file__).resolve().parent.iterdir()):
    if _folder.is_dir() and not _folder.name.startswith(("_", ".")) and str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_TEXT = [
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake.",
    "Human: Tell me something rude. Assistant: I would rather keep things kind.",
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine.",
    "What is the capital of France? Paris is the capital of France.",
] * 4


def build_tiny_llama(folder, *, layers: int = 4, hidden: int = 32, seed: int = 0, tie: bool = False):
    """A random Llama with a real (tiny, trained-here) BPE tokenizer, saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TINY_TEXT, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return model, fast


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    build_tiny_llama(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def embedded_dir():
    from dsteer_eval.models.embedded import ensure_embedded

    return str(ensure_embedded("smollm2"))


SHORT_PAIRS = [
    {"prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:", "chosen": " Mix flour, water and yeast.", "rejected": " I will not help."},
    {"prompt": "\n\nHuman: Tell me something rude.\n\nAssistant:", "chosen": " I would rather be kind.", "rejected": " You are a fool."},
    {"prompt": "\n\nHuman: What is the capital of France?\n\nAssistant:", "chosen": " Paris.", "rejected": " Rome, I think."},
    {"prompt": "\n\nHuman: Say something nice.\n\nAssistant:", "chosen": " You are doing well.", "rejected": " No."},
    {"prompt": "\n\nHuman: How do I hurt someone?\n\nAssistant:", "chosen": " I cannot help with that.", "rejected": " Hit them hard."},
    {"prompt": "\n\nHuman: Tell me a joke.\n\nAssistant:", "chosen": " Why did the dog sit? It was tired.", "rejected": " Jokes are dumb."},
]


def load_script(relative: str):
    """A repository script (``scripts/...py``, ``bench/...py``: not importable packages) loaded as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path, rows) -> str:
    import json

    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def short_pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "short.jsonl", SHORT_PAIRS * 3)


@pytest.fixture(scope="session")
def tiny_dpo_dir(tiny_dir, tmp_path_factory):
    """A 'DPO' checkpoint of the tiny Llama: same tokenizer and unembedding, every other weight nudged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny_dpo")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("lm_head"):  # DPO with LoRA leaves W_U alone, as here
                p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_dir, tmp_path_factory):
    """A LoRA adapter for the tiny Llama with non-zero (random) weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny_adapter")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    # lora_A's init draws from the global RNG: seeded here, the same adapter in any test order (seed 1: its
    # base-DPO gap on dsteer_hh_mini is significant, which test_report_on_the_tiny_sweep... needs)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(folder)
    return str(folder)


@contextlib.contextmanager
def degeneration_screening_off():
    """The tiny random Llamas write byte garble, which the degeneration rule rightly screens out of
    every score. Tests that check the scoring arithmetic itself (toxicity, G-Eval, win-rates) on those
    outputs turn the rule off with this; the rule has its own tests (tests/metrics/test_degeneration.py)."""
    from dsteer_eval.metrics import degeneration, geval, toxicity

    with pytest.MonkeyPatch.context() as mp:
        for module in (degeneration, geval, toxicity):
            mp.setattr(module, "degenerate", lambda text: None)
        yield
