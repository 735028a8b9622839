"""Shared fixtures: a tiny random Llama (fast) and the real embedded model (slower)."""

from __future__ import annotations

import os

for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
    from dsteer_eval.embedded import ensure_embedded

    return str(ensure_embedded("smollm2"))
