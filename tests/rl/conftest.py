"""Fixtures for the GRPO driver and difficulty-split tests: short dialogues (prompts
of ~100 tokens, one length bucket), a ~300-token byte-level tokenizer (a span marker
is then one token in ~40, a reward a tiny random policy can find by sampling), and
a tiny random policy checkpoint written with that tokenizer."""

import json
import os

import numpy as np
import pytest

from kardia_jax.data.spans import FourSpans

from ..data.helpers import BASE_RECORD
from ..train.conftest import build_small_tokenizer

# (gold emotion, situation, exchanges): 8 dialogues, 12 turn-level prompts.
DIALOGUES = (
    ("lonely", "My friends went out without me.", 2),
    ("afraid", "I heard footsteps behind me at night.", 1),
    ("joyful", "I got the job I wanted.", 2),
    ("sad", "My old dog died this week.", 1),
    ("angry", "My flatmate ate my food again.", 2),
    ("proud", "My daughter finished her first race.", 1),
    ("anxious", "My exam results come out tomorrow.", 2),
    ("grateful", "A neighbour fixed my bike for free.", 1),
)
RL_TOKENS = 300  # BPE vocabulary before the eight span markers are added


def short_record(i: int, emotion: str, situation: str, exchanges: int) -> dict:
    messages = [{"role": "system", "content": "Be kind. Profile: student."}]
    for k in range(exchanges):
        messages.append({"role": "user", "content": f"{situation} ({k})"})
        spans = FourSpans("They are hurt.", "Validate first.", emotion, "I am here for you.")
        messages.append({"role": "assistant", "content": spans.format("special", "")})
    return dict(
        BASE_RECORD,
        emotion=emotion,
        situation=situation,
        anon_username=f"anon_rl{i:02d}",
        messages=messages,
    )


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def short_data(tmp_path_factory):
    records = [short_record(i, *d) for i, d in enumerate(DIALOGUES)]
    return write_jsonl(tmp_path_factory.mktemp("rl_data") / "short.jsonl", records)


@pytest.fixture(scope="session")
def rl_tokenizer(tmp_path_factory):
    return build_small_tokenizer(str(tmp_path_factory.mktemp("rl_tokenizer")), RL_TOKENS)


def write_policy(path: str, tokenizer_dir: str, seed: int = 0) -> str:
    """A tiny random llama-shaped policy (tied head, N(0, 0.02): near-uniform next-token
    distribution) saved with the tokenizer (span markers included)."""
    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.models import ModelConfig, save_hf_model

    from ..rewards.helpers import numpy_model

    tok = load_tokenizer(tokenizer_dir)
    cfg = ModelConfig(
        family="llama",
        vocab_size=-(-len(tok) // 8) * 8,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
        max_position_embeddings=512,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    save_hf_model(numpy_model(cfg, seed=seed), path, tokenizer=tok)
    return path


@pytest.fixture(scope="session")
def rl_policy(tmp_path_factory, rl_tokenizer):
    return write_policy(str(tmp_path_factory.mktemp("rl_policy") / "hf"), rl_tokenizer)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def driver_args(workdir, policy, tokenizer, data, steps, **overrides) -> list[str]:
    """`kardia-jax grpo` on configs/grpo_tiny.py with the short data (one 256-token
    prompt bucket, read as the train split) and 16-token completions; no checkpoint
    selection unless `select.every` is overridden."""
    from ..train.conftest import REPO

    base = {
        "model.path": policy,
        "data.tokenizer": tokenizer,
        "data.path": f"{data}:train",
        "data.max_length": 256,
        "data.buckets": (256,),
        "model.vocab_multiple": 8,
        "train.steps": steps,
        "checkpoint.every": 0,
        "export_hf": False,
        "log.text_samples": 1,
        "rollout.max_new_tokens": 16,
        "select.every": 0,
    }
    base.update(overrides)
    return [
        "grpo",
        "--config",
        os.path.join(REPO, "kardia_jax", "configs", "grpo_tiny.py"),
        "--workdir",
        str(workdir),
        *[f"--config.{k}={v}" for k, v in base.items()],
    ]


def as_groups(values, group_size: int) -> np.ndarray:
    return np.asarray(values).reshape(-1, group_size)
