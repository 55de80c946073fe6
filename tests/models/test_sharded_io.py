"""Loading straight into a sharded layout (each device's slice read on its own),
writing from it, and growing the vocabulary for added special tokens."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from kardia_jax.errors import ConfigError
from kardia_jax.models import load_hf_model, resize_token_embeddings, save_hf_model
from kardia_jax.models.checkpoint import TensorFile, _layout
from kardia_jax.sharding import make_mesh

from .conftest import left_padded_batch


def test_layout_reads_exactly_the_requested_slice(tmp_path):
    rng = np.random.default_rng(0)
    cases = [
        (("self_attn", "q_proj", "kernel"), (6, 4, 3)),
        (("self_attn", "o_proj", "kernel"), (4, 3, 6)),
        (("mlp", "up_proj", "kernel"), (6, 10)),
        (("self_attn", "k_proj", "bias"), (2, 3)),
    ]
    for path, shape in cases:
        layout = _layout(path, shape)
        hf = rng.standard_normal(layout.hf_shape).astype(np.float32)
        save_file({"w": hf}, tmp_path / "t.safetensors")
        f = TensorFile(str(tmp_path / "t.safetensors"))
        ours = layout.to_ours(hf)
        np.testing.assert_array_equal(layout.to_hf(ours), hf)
        for bounds in itertools.product(*[[(0, n), (1, n), (0, n - 1), (1, 2)] for n in shape]):
            index = tuple(slice(a, b) for a, b in bounds)
            np.testing.assert_array_equal(layout.read(f, "w", index), ours[index])


def test_sharded_load_reads_per_device_slices_and_matches_unsharded(hf_checkpoint, monkeypatch):
    path, _ = hf_checkpoint("qwen2_untied")
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    reads = []
    real_read = TensorFile.read
    monkeypatch.setattr(
        TensorFile,
        "read",
        lambda self, name, index=None: reads.append((name, index)) or real_read(self, name, index),
    )
    model = load_hf_model(path, mesh=mesh)
    monkeypatch.undo()

    q = model.layers[0].self_attn.q_proj.kernel[...]  # [D=64, N=4, H=16]
    assert q.sharding.spec == P("fsdp", "tensor", None)
    assert {s.data.shape for s in q.addressable_shards} == {(16, 2, 16)}
    # Every read of that tensor fetched one device's eighth, never the whole tensor.
    q_reads = [i for n, i in reads if n == "model.layers.0.self_attn.q_proj.weight"]
    assert len(q_reads) == 8 and all(i is not None for i in q_reads)
    assert all((i[0].stop - i[0].start) * (i[1].stop - i[1].start) == 64 * 64 // 8 for i in q_reads)
    assert model.lm_head.kernel[...].sharding.spec == P("fsdp", "tensor")

    ids, mask = left_padded_batch()
    sharded = nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    plain = load_hf_model(path)(jnp.asarray(ids), jnp.asarray(mask))
    assert np.abs(np.asarray(sharded) - np.asarray(plain)).max() <= 1e-5


def test_sharded_scanned_model_saves_the_same_checkpoint(hf_checkpoint, tmp_path):
    path, _ = hf_checkpoint("qwen3")
    mesh = make_mesh({"fsdp": -1, "tensor": 2})
    model = load_hf_model(path, mesh=mesh, scan_layers=True)
    save_hf_model(model, tmp_path / "out")
    a, b = (
        load_file(f"{path}/model.safetensors"),
        load_file(tmp_path / "out/model.safetensors"),
    )
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_mesh_that_does_not_divide_a_tensor_is_a_clear_error(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2_untied")  # 2 kv heads
    with pytest.raises(
        ConfigError, match=r"k_proj.bias: dimension 0 \('kv_heads', size 2\) is not divisible"
    ):
        load_hf_model(path, mesh=make_mesh({"tensor": 4, "fsdp": 2}))
    with pytest.raises(ConfigError, match="axis sizes multiply to 6, but there are 8 devices"):
        make_mesh({"fsdp": 3, "tensor": 2})


@pytest.mark.parametrize("variant", ["qwen2_untied", "llama_tied"])
def test_resize_adds_mean_rows_and_keeps_old_logits(hf_checkpoint, tmp_path, variant):
    path, _ = hf_checkpoint(variant)
    model = load_hf_model(path)
    old_emb = np.asarray(model.embed_tokens.embedding[...])
    grown = resize_token_embeddings(model, 258, pad_to_multiple_of=4)  # -> 260
    assert grown.config.vocab_size == 260
    emb = np.asarray(grown.embed_tokens.embedding[...])
    np.testing.assert_array_equal(emb[:256], old_emb)
    np.testing.assert_allclose(
        emb[256:], np.repeat(old_emb.mean(0, keepdims=True), 4, 0), atol=1e-6
    )
    if not grown.config.tie_word_embeddings:
        head = np.asarray(grown.lm_head.kernel[...])
        np.testing.assert_allclose(
            head[:, 256:], np.repeat(head[:, :256].mean(1, keepdims=True), 4, 1), atol=1e-6
        )
    ids, mask = left_padded_batch()
    before = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    after = np.asarray(grown(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(after[..., :256], before, atol=1e-5)
    save_hf_model(grown, tmp_path / "grown")
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "grown", output_loading_info=True
    )
    assert not any(info.values()) and hf.config.vocab_size == 260
    with pytest.raises(ConfigError, match="shrinking"):
        resize_token_embeddings(model, 100)


def test_failed_save_leaves_the_previous_checkpoint_intact(hf_checkpoint, tmp_path, monkeypatch):
    path, _ = hf_checkpoint("qwen2_tied")
    model = load_hf_model(path)
    out = tmp_path / "ckpt"
    save_hf_model(model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("kardia_jax.models.checkpoint.write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        save_hf_model(model, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind


def test_multi_slice_mesh_needs_devices_that_form_slices():
    with pytest.raises(ConfigError, match=r"dcn_mesh \{'data': 2, 'fsdp': 1\}: asks for 2 slices"):
        make_mesh({"data": 1, "fsdp": -1}, dcn_axis_sizes={"data": 2})
    plain = make_mesh({"data": 1, "fsdp": -1}, dcn_axis_sizes={"data": 1})
    assert dict(plain.shape) == {"data": 1, "fsdp": 8}
