"""Numerical parity with transformers (torch, CPU, float32) on tiny checkpoints
that transformers itself wrote, and the round trip back through `save_hf_model`."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from kardia_jax.models import load_hf_model, save_hf_model

from .conftest import VARIANTS, left_padded_batch


def torch_logits(model, ids, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        )
    return out.logits.float().numpy()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers_on_left_padded_batch(hf_checkpoint, variant):
    path, hf = hf_checkpoint(variant)
    ids, mask = left_padded_batch()
    ref = torch_logits(hf, ids, mask)
    model = load_hf_model(path, dtype="float32")
    out = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    err = np.abs(out - ref)[real].max()
    assert err <= 1e-4, f"{variant}: max |logit diff| {err:.2e} on real tokens"
    # The padded rows really were padded: their real tokens must match the same
    # row run alone (positions counted from the first real token).
    alone = torch_logits(hf, ids[2:, 7:], mask[2:, 7:])
    assert np.abs(out[2, 7:] - alone[0]).max() <= 1e-4


@pytest.mark.parametrize("variant", ["qwen2_untied", "qwen3"])
def test_scanned_and_rematerialised_layers_match_transformers(hf_checkpoint, variant):
    path, hf = hf_checkpoint(variant)
    ids, mask = left_padded_batch(seed=1)
    ref = torch_logits(hf, ids, mask)
    model = load_hf_model(path, scan_layers=True, remat="full")
    out = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(out - ref)[mask.astype(bool)].max() <= 1e-4


@pytest.mark.parametrize(
    "variant,scan,shard_bytes",
    [
        ("qwen2_tied", False, 5 * 2**30),
        ("qwen2_untied", True, 40_000),  # forces several files + index
        ("qwen3", False, 5 * 2**30),
        ("llama_bias_llama3_rope", False, 100_000),
    ],
)
def test_round_trip_through_save_hf_model(hf_checkpoint, tmp_path, variant, scan, shard_bytes):
    path, _ = hf_checkpoint(variant)
    model = load_hf_model(path, scan_layers=scan)
    out_dir = tmp_path / "export"
    save_hf_model(model, out_dir, max_shard_bytes=shard_bytes)
    files = os.listdir(out_dir)
    if shard_bytes < 5 * 2**30:
        assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
        out_dir, output_loading_info=True, dtype=torch.float32
    )
    assert not any(info.values()), f"transformers reported {info}"
    ids, mask = left_padded_batch(seed=2)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    theirs = torch_logits(reloaded.eval(), ids, mask)
    assert np.abs(ours - theirs)[mask.astype(bool)].max() <= 1e-5
    # And the exported dir loads back into kardia-jax bit-identically.
    again = np.asarray(
        load_hf_model(out_dir, scan_layers=scan)(jnp.asarray(ids), jnp.asarray(mask))
    )
    np.testing.assert_array_equal(again, ours)
    gen = json.loads((out_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2


def test_bfloat16_export_loads_in_transformers_as_bfloat16(hf_checkpoint, tmp_path):
    path, _ = hf_checkpoint("qwen2_tied")
    model = load_hf_model(path)
    save_hf_model(model, tmp_path / "bf16", dtype="bfloat16")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert reloaded.dtype == torch.bfloat16
    ours = np.asarray(model.embed_tokens.embedding[...])
    theirs = reloaded.model.embed_tokens.weight.detach().float().numpy()
    # bf16 keeps 8 bits of mantissa: relative rounding error below 2^-8.
    np.testing.assert_allclose(theirs, ours, rtol=2**-8, atol=1e-6)
