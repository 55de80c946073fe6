"""SFT runs that start from a Hugging Face checkpoint, meet a corrupt checkpoint or a
torn log line, or blow up: each ends with a usable result or a clear message, never a
silent loss."""

import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from kardia_jax.cli import main

from .conftest import tiny_overrides
from .test_sft import TINY, read_log


def sft(workdir, small_tokenizer, **overrides):
    args = ["sft", "--config", TINY, "--workdir", str(workdir)]
    return main(args + tiny_overrides(small_tokenizer, **overrides))


def test_start_from_hf_checkpoint_grows_vocab_for_the_tokenizer(tmp_path, small_tokenizer):
    config = transformers.Qwen2Config(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "base")
    # lr 0: after one step the exported weights must still be the checkpoint's.
    rc = sft(
        tmp_path / "run",
        small_tokenizer,
        **{
            "model.path": str(tmp_path / "base"),
            "train.steps": 1,
            "train.lr": 0.0,
            "export_hf": True,
            "checkpoint.every": 0,
        },
    )
    assert rc == 0
    before = load_file(tmp_path / "base" / "model.safetensors")
    after = load_file(tmp_path / "run" / "hf" / "model.safetensors")
    emb0, emb1 = before["model.embed_tokens.weight"], after["model.embed_tokens.weight"]
    assert emb1.shape == (4176, 64)  # 4175 tokenizer ids, padded to a multiple of 8
    np.testing.assert_array_equal(emb1[:4096], emb0)
    np.testing.assert_allclose(emb1[4096:], np.broadcast_to(emb0.mean(0), (80, 64)), atol=1e-6)
    name = "model.layers.1.self_attn.q_proj.bias"
    np.testing.assert_array_equal(after[name], before[name])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, small_tokenizer, capsys
):
    assert sft(tmp_path, small_tokenizer, **{"train.steps": 4, "checkpoint.every": 2}) == 0
    ckpt = tmp_path / "checkpoints" / "4"
    assert ckpt.is_dir()
    for root, _, files in os.walk(ckpt / "state"):  # damage every array file of step 4
        for f in files:
            if not f.endswith((".json", "_METADATA")):
                open(os.path.join(root, f), "wb").close()
    capsys.readouterr()
    assert sft(tmp_path, small_tokenizer, **{"train.steps": 6, "checkpoint.every": 2}) == 0
    out = capsys.readouterr().out
    assert "checkpoints/4 is unreadable" in out and "resumed from step 2" in out
    assert any(n.startswith("4.unreadable-") for n in os.listdir(tmp_path / "checkpoints"))
    assert [r["step"] for r in read_log(tmp_path)] == list(range(1, 7))


def test_a_log_line_torn_by_a_kill_is_cut_on_resume(tmp_path, small_tokenizer, capsys):
    settings = {"train.steps": 4, "checkpoint.every": 2}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert sft(straight, small_tokenizer, **settings) == 0
    # Killed while writing step 4's row, after the step-2 checkpoint: no checkpoint 4,
    # step 3's row past the checkpoint, and half a line at the end of each log.
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    train, held = resumed / "train_log.jsonl", resumed / "eval_log.jsonl"
    lines = train.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    train.write_bytes(b"".join(lines[:3]) + lines[3][:20])
    held.write_bytes(held.read_bytes().rstrip(b"\n"))  # a whole row, its newline lost
    held_bytes = held.stat().st_size
    capsys.readouterr()
    assert sft(resumed, small_tokenizer, **settings) == 0
    out = capsys.readouterr().out
    assert "resumed from step 2" in out
    assert [ln for ln in out.splitlines() if ln.startswith("warning:")] == [
        f"warning: {train}: cut a torn last line (20 bytes) left by a kill",
        f"warning: {held}: cut a torn last line ({held_bytes} bytes) left by a kill",
    ]
    assert read_log(resumed) == read_log(straight)
    assert held.read_bytes() == (straight / "eval_log.jsonl").read_bytes()


def test_repeated_non_finite_updates_stop_the_run_with_checkpoint_intact(
    tmp_path, small_tokenizer, capsys
):
    # lr 1e30: the first update is finite but sends the weights to ~1e30, so every
    # later loss overflows; after train.max_nonfinite of them the run stops.
    rc = sft(
        tmp_path,
        small_tokenizer,
        **{
            "train.steps": 10,
            "train.lr": 1e30,
            "train.clip_norm": 0.0,
            "train.max_nonfinite": 2,
            "checkpoint.every": 1,
        },
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "2 non-finite updates in a row at step 3 (train.max_nonfinite)" in err
    # Step 2 was skipped (state unchanged), so its checkpoint holds finite weights;
    # the halting step 3 is never saved.
    assert "the last checkpoint (2) is intact" in err
    assert [r["skipped"] for r in read_log(tmp_path)] == [0, 1, 1]
    assert sorted(n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()) == ["1", "2"]


@pytest.fixture(autouse=True)
def _quiet_tokenizers(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
