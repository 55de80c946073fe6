"""The tokenizer of a GGUF file, rebuilt from its tokenizer.ggml.* metadata (tokens,
merges, token types, special ids, chat template) as a Hugging Face fast tokenizer.
Only byte-level BPE ('gpt2') vocabularies are supported."""

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
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED = 3, 4  # llama.cpp's token_type codes


def build_tokenizer(g: GGUFFile):
    """A transformers fast tokenizer from the file's tokenizer.ggml.* metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = g.need("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"{g.path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') is imported"
        )
    pre = g.get("tokenizer.ggml.pre", "default")
    if pre in _GPT2_PRE:
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre in _DIGITS_THEN_GPT2_PRE:
        pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        raise CheckpointError(
            f"{g.path}: tokenizer.ggml.pre={pre!r} is not supported "
            f"(supported: {', '.join(_GPT2_PRE + _DIGITS_THEN_GPT2_PRE)})"
        )
    tokens = list(g.need("tokenizer.ggml.tokens"))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CheckpointError(f"{g.path}: tokenizer.ggml.tokens has duplicate entries")
    merges = []
    for m in g.need("tokenizer.ggml.merges"):
        parts = m.split(" ")
        if len(parts) != 2:
            raise CheckpointError(f"{g.path}: tokenizer.ggml.merges entry {m!r} is not 'a b'")
        merges.append((parts[0], parts[1]))
    types = list(g.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    if len(types) != len(tokens):
        raise CheckpointError(
            f"{g.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) are special; user-defined ones are never split
    # but kept when decoding with skip_special_tokens, as llama.cpp treats them.
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _TOKEN_TYPE_CONTROL
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _TOKEN_TYPE_USER_DEFINED
        ]
    )

    def token(field):
        i = g.get(f"tokenizer.ggml.{field}")
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise CheckpointError(f"{g.path}: tokenizer.ggml.{field}={i} is out of range")
        return tokens[int(i)]

    bos, eos = token("bos_token_id"), token("eos_token_id")
    add_bos = bool(g.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(g.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    steps = [processors.ByteLevel(trim_offsets=False)]
    if add_bos or add_eos:
        single = [bos] * add_bos + ["$A"] + [eos] * add_eos
        pair = single + [bos] * add_bos + ["$B"] + [eos] * add_eos
        special = [(t, vocab[t]) for t in dict.fromkeys([bos] * add_bos + [eos] * add_eos)]
        steps.append(
            processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
        )
    tok.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)

    context = g.get(f"{g.get('general.architecture')}.context_length")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        chat_template=g.get("tokenizer.chat_template"),
        add_bos_token=add_bos,
        add_eos_token=add_eos,
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
