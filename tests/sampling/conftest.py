"""Fixtures for the sampler tests: the tiny transformers-written checkpoints of
tests/models (imported by path, so the two conftest modules never shadow each other)
and a left-padded batch of prompts of different lengths."""

import importlib.util
import os

import numpy as np
import pytest

_MODELS_CONFTEST = os.path.join(os.path.dirname(__file__), "..", "models", "conftest.py")
_spec = importlib.util.spec_from_file_location("_kardia_models_conftest", _MODELS_CONFTEST)
models_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models_conftest)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: variant name -> (checkpoint dir, torch model), built once per session."""
    made = {}

    def get(variant: str):
        if variant not in made:
            path = tmp_path_factory.mktemp(f"sampling_{variant}")
            model = models_conftest.build_hf_model(variant)
            model.save_pretrained(path)
            made[variant] = (str(path), model)
        return made[variant]

    return get


@pytest.fixture(scope="session")
def prompts():
    """4 prompts of lengths 5, 9, 13 and 16 (one prompt bucket), ids in [3, 256)."""
    rng = np.random.default_rng(0)
    return [rng.integers(3, 256, n).tolist() for n in (5, 9, 13, 16)]


def _left_pad(prompts, pad_id=0):
    p = max(map(len, prompts))
    ids = np.full((len(prompts), p), pad_id, np.int64)
    mask = np.zeros((len(prompts), p), np.int64)
    for i, row in enumerate(prompts):
        ids[i, p - len(row) :] = row
        mask[i, p - len(row) :] = 1
    return ids, mask


@pytest.fixture(scope="session")
def left_pad():
    """prompts -> [B, P] int64 ids and mask, left-padded to the longest prompt
    (transformers' layout for batched generation)."""
    return _left_pad


def char_tokenizer():
    """A byte-level tokenizer without merges (one token per printable ASCII byte, ~110
    tokens: it fits the tiny models' 256-row vocabulary), with the chat template's
    and the span markers' special tokens: Qwen2.5's tokenizer in miniature."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from kardia_jax.data.spans import SPAN_MARKERS
    from kardia_jax.data.template import CHAT_TEMPLATE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *SPAN_MARKERS]
    symbols = bytes_to_unicode()
    chars = [symbols[b] for b in sorted(set(string.printable.encode()) - set(b"\t\r\x0b\x0c"))]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory):
    """A tiny qwen2 checkpoint whose vocabulary is exactly its own (byte-level)
    tokenizer's, saved beside it, so every sampled id decodes to text."""
    import torch
    import transformers

    tok = char_tokenizer()
    config = transformers.Qwen2Config(
        **{**models_conftest._COMMON, "vocab_size": len(tok), "eos_token_id": 2}
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = tmp_path_factory.mktemp("chat_checkpoint")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    assert tok.convert_ids_to_tokens(2) == "<|im_end|>"
    return str(path)
