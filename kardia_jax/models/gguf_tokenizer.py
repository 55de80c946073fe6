"""The tokenizer of a GGUF file as a Hugging Face fast tokenizer, built by transformers'
GGUF tokenizer conversion (`convert_gguf_tokenizer`: vocabulary, merges, control and
user-defined tokens) from the tokenizer.ggml.* metadata that the `gguf` package reads.
Only byte-level BPE ('gpt2') vocabularies are supported.

transformers' own metadata reader imports torch, so the fields come from our GGUFFile;
and its conversion has no digit split for llama.cpp's "starcoder" group (SmolLM's
"smollm"), where llama.cpp isolates every digit, so that pre-tokenizer stays ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from kardia_jax.errors import CheckpointError

if TYPE_CHECKING:
    from kardia_jax.models.gguf import GGUFFile

# llama.cpp's pre-tokenizer names -> how to split text before byte-level BPE. The
# GPT-2 regex is what ByteLevel(use_regex=True) applies; the "starcoder" group of
# llama.cpp (which includes SmolLM's "smollm") first isolates every digit.
_GPT2_PRE = ("default", "gpt2", "mpt", "olmo", "jais")
_DIGITS_THEN_GPT2_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone")


def _pre_tokenizer(g: GGUFFile):
    from tokenizers import pre_tokenizers

    pre = g.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _GPT2_PRE:
        return byte_level
    if pre in _DIGITS_THEN_GPT2_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    raise CheckpointError(
        f"{g.path}: tokenizer.ggml.pre={pre!r} is not supported "
        f"(supported: {', '.join(_GPT2_PRE + _DIGITS_THEN_GPT2_PRE)})"
    )


def build_tokenizer(g: GGUFFile):
    """A transformers fast tokenizer from the file's tokenizer.ggml.* metadata."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    kind = g.need("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"{g.path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') is imported"
        )
    pre_tokenizer = _pre_tokenizer(g)
    tokens = list(g.need("tokenizer.ggml.tokens"))
    g.need("tokenizer.ggml.merges")
    if len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{g.path}: tokenizer.ggml.tokens has duplicate entries")
    types = g.get("tokenizer.ggml.token_type")
    if types is not None and len(types) != len(tokens):
        raise CheckpointError(
            f"{g.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    fields = {
        name: g.get(f"tokenizer.{key}")
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if g.get(f"tokenizer.{key}") is not None
    }
    backend, _ = convert_gguf_tokenizer(g.need("general.architecture"), fields)
    if backend.get_vocab_size(with_added_tokens=True) > len(tokens):
        # transformers' byte-level builder (GPT2Tokenizer) adds its default <|endoftext|>
        # when the file has none; that token is not the model's, so it goes.
        state = json.loads(backend.to_str())
        state["added_tokens"] = [t for t in state["added_tokens"] if t["id"] < len(tokens)]
        backend = Tokenizer.from_str(json.dumps(state))
    backend.pre_tokenizer = pre_tokenizer

    def token(field):
        i = g.get(f"tokenizer.ggml.{field}")
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise CheckpointError(f"{g.path}: tokenizer.ggml.{field}={i} is out of range")
        return tokens[int(i)]

    bos, eos = token("bos_token_id"), token("eos_token_id")
    context = g.get(f"{g.get('general.architecture')}.context_length")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        chat_template=g.get("tokenizer.chat_template"),
        # transformers writes the bos / eos template itself (and drops a flag whose
        # token is absent).
        add_bos_token=bool(g.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(g.get("tokenizer.ggml.add_eos_token", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=int(context) if context else None,
    )


def save_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.save_pretrained(str(out))
    # transformers 5 writes the chat template to chat_template.jinja only and names its
    # own backend class; readers with transformers 4 (vLLM, TRL) look for the template
    # in tokenizer_config.json and know the class as PreTrainedTokenizerFast.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if tokenizer.chat_template:
        cfg["chat_template"] = tokenizer.chat_template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", "utf-8")
