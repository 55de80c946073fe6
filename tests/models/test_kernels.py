"""Kernel forms chosen for the devices, not the process's backend: `kernels` resolves
from a mesh's devices (TPU topology devices in a CPU process give the TPU forms), and
every family of forms computes the same model: the plain XLA forms and the TPU forms
(splash attention, run here in Pallas interpret mode) match transformers' logits as
the CPU forms do, and their gradients match the CPU forms'."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kardia_jax.errors import ConfigError
from kardia_jax.models import kernels, load_hf_model
from kardia_jax.models.config import ModelConfig
from kardia_jax.models.logprobs import weighted_log_prob_sum
from kardia_jax.sharding import make_mesh

from .conftest import left_padded_batch
from .test_transformers_parity import torch_logits

TINY = ModelConfig(
    family="qwen2",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
)


def test_explicit_kernels_win_and_auto_follows_the_mesh_devices():
    assert kernels.resolve(TINY.replace(kernels="xla")).kernels == "xla"
    assert kernels.resolve(TINY).kernels == "cpu"  # this process's devices are CPUs
    mesh = make_mesh({"data": 2, "tensor": 2}, devices=jax.devices()[:4])
    assert kernels.resolve(TINY, mesh).kernels == "cpu"
    with pytest.raises(ConfigError, match="kernels"):
        TINY.replace(kernels="gpu-fast")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (tpu extra)")
def test_tpu_topology_devices_give_the_tpu_forms_in_a_cpu_process():
    from jax.experimental import topologies

    devices = topologies.get_topology_desc("v5e:2x2", "tpu").devices
    mesh = jax.sharding.Mesh(np.array(devices).reshape(2, 2), ("data", "tensor"))
    assert jax.default_backend() == "cpu"
    assert kernels.resolve(TINY, mesh).kernels == "tpu"


@pytest.mark.parametrize("forms", ["xla", "tpu"])
@pytest.mark.parametrize("variant", ["qwen2_untied", "qwen3", "llama_tied"])
def test_each_kernel_family_matches_transformers(hf_checkpoint, variant, forms):
    path, hf = hf_checkpoint(variant)
    ids, mask = left_padded_batch()
    ref = torch_logits(hf, ids, mask)
    model = load_hf_model(path, dtype="float32", kernels=forms)
    assert model.config.kernels == forms
    out = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    err = np.abs(out - ref)[mask.astype(bool)].max()
    assert err <= 1e-4, f"{variant} / {forms}: max |logit diff| {err:.2e} on real tokens"


def _packed_batch():
    """2 rows of 3 packed segments each, the second row ending in padding."""
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 256, size=(2, 24)).astype(np.int32)
    seg = np.repeat(np.arange(3), 8)[None].repeat(2, 0).astype(np.int32)
    mask = np.ones((2, 24), np.int32)
    mask[1, 20:] = 0
    ids[mask == 0] = 0
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(seg)


def _loss_and_grads(model, ids, mask, seg):
    """Sum of target log-probs of the packed rows (through the fused head) and its
    gradient wrt every parameter."""
    graphdef, params = nnx.split(model)

    def loss(p):
        m = nnx.merge(graphdef, p)
        hidden = m.hidden_states(ids, mask, segment_ids=seg)[:, :-1]
        weight = (mask[:, 1:] * (seg[:, 1:] == seg[:, :-1])).astype(jnp.float32)
        return weighted_log_prob_sum(m, hidden, ids[:, 1:], weight, chunk=8)

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("scan", [False, True])
def test_tpu_forms_give_the_cpu_forms_loss_and_gradients_on_packed_rows(hf_checkpoint, scan):
    path, _ = hf_checkpoint("qwen2_untied")
    batch = _packed_batch()
    want, want_g = _loss_and_grads(load_hf_model(path, kernels="cpu", scan_layers=scan), *batch)
    got, got_g = _loss_and_grads(load_hf_model(path, kernels="tpu", scan_layers=scan), *batch)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    flat_want = dict(nnx.to_flat_state(want_g))
    for path_, g in nnx.to_flat_state(got_g):
        w = np.asarray(flat_want[path_].get_value())
        err = np.abs(np.asarray(g.get_value()) - w).max() / max(np.abs(w).max(), 1e-6)
        assert err <= 1e-4, f"{'.'.join(map(str, path_))}: relative gradient error {err:.2e}"


def test_tpu_forms_on_a_mesh_split_heads_and_batch(hf_checkpoint):
    """On a data 2 x tensor 2 mesh splash runs in shard_map: rows over data, heads
    over tensor; the logits equal one device's."""
    path, _ = hf_checkpoint("qwen2_untied")
    ids, mask = left_padded_batch()
    ids, mask = np.concatenate([ids, ids[:1]]), np.concatenate([mask, mask[:1]])  # 4 rows
    one = load_hf_model(path, kernels="tpu")(jnp.asarray(ids), jnp.asarray(mask))
    mesh = make_mesh({"data": 2, "tensor": 2}, devices=jax.devices()[:4])
    model = load_hf_model(path, mesh=mesh, kernels="tpu")
    assert model.head_axes == ("tensor",)
    out = jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    real = mask.astype(bool)
    assert np.abs(np.asarray(out) - np.asarray(one))[real].max() <= 1e-5
