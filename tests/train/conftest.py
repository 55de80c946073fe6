"""Fixtures for training tests: a small byte-level BPE tokenizer trained on the
bundled sample (so driver mechanics run with a ~4k-token vocabulary instead of
Qwen's 152k), and run configs built from configs/sft_tiny.py."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_small_tokenizer(out_dir: str, vocab_size: int = 8192) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kardia_jax.data.reader import sample_path
    from kardia_jax.data.template import CHAT_TEMPLATE

    texts = []
    for split in ("train", "test"):
        with open(sample_path(split), encoding="utf-8") as f:
            for line in f:
                texts += [m["content"] for m in json.loads(line)["messages"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE  # Qwen's format: the tokens are Qwen's specials
    fast.save_pretrained(out_dir)
    return out_dir


def tiny_overrides(tokenizer_dir: str, **extra) -> list[str]:
    """Overrides that make configs/sft_tiny.py run in well under a second per step."""
    base = {
        "data.tokenizer": tokenizer_dir,
        "data.max_length": 512,
        "data.buckets": (512,),
        "train.global_batch": 8,
        "train.lr": 1e-2,
        "train.warmup_steps": 0,
        "log.every": 1,
        "checkpoint.every": 5,
        "checkpoint.max_to_keep": 3,
        "export_hf": False,
        "model.vocab_multiple": 8,
    }
    base.update(extra)
    return [f"--config.{k}={v}" for k, v in base.items()]


def run_cli(
    args: list[str],
    env_extra: dict | None = None,
    *,
    optimize: bool = False,
    module: str = "kardia_jax.cli",
    **kw,
) -> subprocess.Popen:
    """`python -m kardia_jax.cli ...` in a child with the test JAX settings. Children
    of tiny models are compile-bound like the in-process tests and keep the cheapest
    LLVM level (tests/conftest.py); `optimize=True` is for children whose time goes
    into running (a 152k vocabulary), where the default level wins. `module` runs
    another entry point (one that injects a fault, then calls the CLI)."""
    import jax

    from ..conftest import FAST_COMPILE_FLAG

    env = dict(os.environ)
    env.update(env_extra or {})
    flags = env.get("XLA_FLAGS", "").replace(FAST_COMPILE_FLAG, "").strip()
    env["XLA_FLAGS"] = flags if optimize else f"{flags} {FAST_COMPILE_FLAG}".strip()
    # Children share the suite's persistent compilation cache.
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )
