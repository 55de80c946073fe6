"""The tokenizer of a GGUF file as a Hugging Face fast tokenizer, rebuilt from the
tokenizer.ggml.* metadata that the `gguf` package reads. Two kinds:

- byte-level BPE ('gpt2'): built by transformers' GGUF tokenizer conversion
  (`convert_gguf_tokenizer`: vocabulary, merges, control and user-defined tokens).
  transformers' conversion has no digit split for llama.cpp's "starcoder" group
  (SmolLM's "smollm"), where llama.cpp isolates every digit, so that pre-tokenizer
  stays ours.
- Gemma's SentencePiece-style vocabulary ('llama' in a gemma / gemma2 / gemma3 file):
  BPE with byte fallback, no prefix space, spaces as "\u2581". The file has no merges;
  they are rebuilt from the vocabulary here, following the facts transformers'
  conversion applies (`gemma_tokenizer`), so ids agree with it (tests check them).

transformers' own metadata reader imports torch, so the fields come from our GGUFFile.
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


# llama.cpp's token types (gguf.TokenType) that the tokenizer keeps whole.
CONTROL, USER_DEFINED = 3, 4
SPACE = "\u2581"  # SentencePiece's visible space
GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")


def build_tokenizer(g: GGUFFile):
    """A transformers fast tokenizer from the file's tokenizer.ggml.* metadata."""
    from transformers import PreTrainedTokenizerFast

    kind = g.need("tokenizer.ggml.model")
    arch = g.get("general.architecture")
    if kind == "gpt2":
        backend = _byte_level_backend(g)
    elif kind == "llama" and arch in GEMMA_ARCHITECTURES:
        backend = gemma_backend(g)
    else:
        raise CheckpointError(
            f"{g.path}: tokenizer.ggml.model={kind!r} in a {arch!r} file; imported are "
            "byte-level BPE ('gpt2') and Gemma's SentencePiece vocabulary ('llama' in a "
            "gemma file)"
        )
    tokens = g.need("tokenizer.ggml.tokens")

    def token(field):
        i = g.get(f"tokenizer.ggml.{field}")
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise CheckpointError(f"{g.path}: tokenizer.ggml.{field}={i} is out of range")
        return tokens[int(i)]

    template = g.get("tokenizer.chat_template")
    if template is None and arch == "gemma3":
        from kardia_jax.data.template import GEMMA3_CHAT_TEMPLATE

        # A Gemma 3 file need not carry the template (google/gemma-3-270m's has none);
        # the family's own one is the Gemma 3 format.
        template = GEMMA3_CHAT_TEMPLATE
    mask = token("mask_token_id")
    if mask is None and kind == "llama" and "<mask>" in tokens:
        mask = "<mask>"  # Gemma's tokenizer names it without the file saying so
    context = g.get(f"{arch}.context_length")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        mask_token=mask,
        chat_template=template,
        # transformers writes the bos / eos template itself (and drops a flag whose
        # token is absent).
        add_bos_token=bool(g.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(g.get("tokenizer.ggml.add_eos_token", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=int(context) if context else None,
    )


def _checked_tokens(g: GGUFFile) -> tuple[list[str], list[int] | None]:
    tokens = list(g.need("tokenizer.ggml.tokens"))
    types = g.get("tokenizer.ggml.token_type")
    if types is not None and len(types) != len(tokens):
        raise CheckpointError(
            f"{g.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    return tokens, None if types is None else [int(t) for t in types]


def _byte_level_backend(g: GGUFFile):
    from tokenizers import Tokenizer
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    pre_tokenizer = _pre_tokenizer(g)
    tokens, _ = _checked_tokens(g)
    g.need("tokenizer.ggml.merges")
    if len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{g.path}: tokenizer.ggml.tokens has duplicate entries")
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
    return backend


def gemma_vocab(tokens: list[str]) -> dict[str, int]:
    """token -> id. Gemma files store each run of two or more spaces with real spaces,
    where the vocabulary is looked up after spaces became U+2581, so those tokens are
    respelled (a token of whitespace holding a space becomes that many U+2581, as
    transformers' conversion does; a later duplicate would win, as in its dict)."""
    return {SPACE * len(t) if " " in t and not t.strip() else t: i for i, t in enumerate(tokens)}


def merges_by_position(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges recovered from a vocabulary that lists no merges: every split of a
    token into two tokens, ranked by the token's position (Gemma's scores rank only
    its ordinary tokens; the order of the file ranks all of them, and transformers'
    conversion uses it), the longer left piece first within a token."""
    merges = []
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    return merges


def gemma_backend(g: GGUFFile):
    """Gemma's tokenizer as a `tokenizers` BPE: spaces become U+2581 (no prefix space),
    bytes outside the vocabulary fall back to <0xNN> tokens, control tokens are special
    and user-defined ones (newline runs, HTML tags) are added tokens, both never split."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    if g.get("tokenizer.ggml.merges") is not None:
        raise CheckpointError(f"{g.path}: a Gemma vocabulary with merges is not supported")
    tokens, types = _checked_tokens(g)
    vocab = gemma_vocab(tokens)
    unk = g.get("tokenizer.ggml.unknown_token_id")
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges_by_position(vocab),
            unk_token=tokens[int(unk)] if unk is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    backend.normalizer = normalizers.Replace(" ", SPACE)
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    types = types or [0] * len(tokens)
    backend.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, types, strict=True)
            if kind == CONTROL
        ]
    )
    # A respelled space run is no added token: its file spelling is not in the vocabulary.
    backend.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types, strict=True)
            if kind == USER_DEFINED and t in vocab
        ]
    )
    return backend


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
