"""A checkpoint's tokenizer and the token ids that end its replies: the library side
of `kardia-jax generate` / `chat`, shared with evaluation and the judge."""

from __future__ import annotations

import os

from kardia_jax.errors import ConfigError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_tokenizer_for(path: str):
    """The checkpoint's own tokenizer when it has one (never running remote code),
    else the built-in Qwen2.5 tokenizer with the span markers."""
    from kardia_jax.data.tokenizer import load_tokenizer, read_tokenizer

    if any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        return read_tokenizer(path, "checkpoint's tokenizer")

    return load_tokenizer(None, span_markers=True)


def single_token_id(tokenizer, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(f"stop token {token!r} is {len(ids)} tokens, not one")
    return ids[0]


def eos_ids_for(model_config, tokenizer) -> list[int]:
    """The checkpoint's eos ids, the tokenizer's eos, and the chat template's end of
    turn (data.template.chat_stop_ids: Qwen's <|im_end|>, Gemma's <end_of_turn>)."""
    from kardia_jax.data.template import chat_stop_ids

    ids = set(model_config.eos_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    ids.update(chat_stop_ids(tokenizer))
    return sorted(ids)
