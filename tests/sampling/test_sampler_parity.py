"""The sampler against references: transformers' greedy `generate` token for token,
and the training forward pass's log-probs of the sampled sequences."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kardia_jax.models import load_hf_model
from kardia_jax.sampling import Sampler, SamplingConfig, loop
from tests.references import NEW, hf_greedy


@pytest.mark.parametrize(
    "variant,scan",
    # Untied and tied heads (the tied one takes the sampler's own projection on CPU),
    # unrolled and scanned layers, Qwen2 / Qwen3 / Llama.
    [("qwen2_untied", False), ("qwen2_untied", True), ("qwen3", False), ("llama_tied", False)],
)
def test_greedy_equals_transformers_generate(tiny_checkpoint, prompts, left_pad, variant, scan):
    path, hf = tiny_checkpoint(variant)
    ids, mask = left_pad(prompts)
    ref, scores = hf_greedy(hf, ids, mask)
    # The comparison is only meaningful if no step is a near-tie that float noise
    # could flip; the fixed seed gives a clear top-2 gap at every step.
    top2 = np.sort(scores, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-4

    model = load_hf_model(path, dtype="float32", scan_layers=scan)
    out = Sampler(model, eos_ids=[])(prompts, NEW)
    np.testing.assert_array_equal(out.tokens, ref)
    assert out.mask.all() and out.finish_reason == ["length"] * 4
    # Greedy log-probs are the model's own (T = 1): those of transformers' scores.
    ref_lp = np.take_along_axis(jax.nn.log_softmax(scores), ref[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, ref_lp, atol=1e-4)
    if scan:  # decoding a scanned model through unrolled copies of its layers
        unrolled = Sampler(model, eos_ids=[], unroll_layers=True)(prompts, NEW)
        np.testing.assert_array_equal(unrolled.tokens, ref)


def training_logprobs(model, prompts, out, temperature):
    """log softmax(logits / T) of each sampled token, from one ordinary forward pass
    over [left-padded prompt | completion], the way a GRPO trainer computes them."""
    rows = [p for p in prompts for _ in range(out.group_size)]
    seqs = [r + out.ids(i) for i, r in enumerate(rows)]
    t = max(map(len, seqs))
    ids = np.zeros((len(seqs), t), np.int32)
    mask = np.zeros((len(seqs), t), np.int32)
    for i, s in enumerate(seqs):
        ids[i, t - len(s) :], mask[i, t - len(s) :] = s, 1
    logits = jax.jit(lambda i, m: model(i, m))(jnp.asarray(ids), jnp.asarray(mask))
    logp = np.asarray(jax.nn.log_softmax(logits / temperature, axis=-1))
    result = np.zeros_like(out.logprobs)
    for i in range(len(seqs)):
        n = out.lengths[i]
        pos = np.arange(t - n - 1, t - 1)  # the position predicting each completion token
        result[i, :n] = logp[i, pos, ids[i, t - n :]]
    return result


def test_sampled_logprobs_equal_training_forward(tiny_checkpoint, prompts):
    path, _ = tiny_checkpoint("qwen2_untied")
    model = load_hf_model(path, dtype="float32")
    # Two eos ids common enough to end some rows early, so padding after a stop is
    # exercised; top-k / top-p change what is drawn but not the reported log-probs.
    cfg = SamplingConfig(temperature=0.7, top_k=40, top_p=0.9)
    out = Sampler(model, eos_ids=[7, 11])(prompts, NEW, cfg, group_size=2, seed=3)
    assert "eos" in out.finish_reason and "length" in out.finish_reason
    ref = training_logprobs(model, prompts, out, cfg.temperature)
    err = np.abs(out.logprobs - ref)[out.mask].max()
    assert err <= 1e-4, f"max |sampler - training log-prob| = {err:.2e}"
    assert (out.logprobs[~out.mask] == 0).all()


def test_bf16_model_decodes_against_an_f32_cache_written_in_place(tiny_checkpoint, prompts):
    # On CPU a bf16 model's cache is f32 (`state.default_cache_dtype`): XLA:CPU writes
    # into a bf16 cache by converting all of it to f32 and back, at every layer and
    # step. The compiled loop must convert or copy no cache-sized array, and the log-
    # probs still agree with the bf16 training forward (attention over the cache in
    # f32, the training forward's logits from bf16 products: a bf16 tolerance).
    path, _ = tiny_checkpoint("qwen2_untied")
    model = load_hf_model(path, dtype="bfloat16")
    sampler = Sampler(model, eos_ids=[])
    assert sampler.cache_dtype == "float32"
    state = sampler.prefill(prompts, NEW)
    k, v = state.cache.k[0], state.cache.v[0]
    assert k.dtype == v.dtype == jnp.float32
    hlo = loop.decode.lower(
        sampler.graphdef, sampler.params, state, jnp.int32(NEW),
        cfg=SamplingConfig(), pad_id=sampler.pad_id, sharding=None,
    ).compile().as_text()  # fmt: skip
    for shape in {k.shape, v.shape}:
        dims = ",".join(map(str, shape))
        whole = [
            line.strip()[:120]
            for line in hlo.splitlines()
            if f"[{dims}]" in line.split("=", 1)[-1].split("(", 1)[0]
            and re.search(r"\b(convert|copy)\(", line)
        ]
        assert not whole, whole
    out = sampler(prompts, NEW)
    ref = training_logprobs(model, prompts, out, 1.0)
    err = np.abs(out.logprobs - ref)[out.mask].max()
    assert err <= 5e-2, f"max |sampler - training log-prob| = {err:.2e} (bf16)"


@pytest.mark.parametrize("forms,scan", [("xla", False), ("tpu", False), ("tpu", True)])
def test_greedy_with_xla_and_tpu_kernels_equals_transformers_generate(
    tiny_checkpoint, prompts, left_pad, forms, scan
):
    """The non-CPU forms: keys cached [B, K, S, H] like the values, plain projections,
    and for "tpu" the prompt's prefill through splash attention (Pallas interpret
    mode here)."""
    path, hf = tiny_checkpoint("qwen2_untied")
    ids, mask = left_pad(prompts)
    ref, _ = hf_greedy(hf, ids, mask)
    model = load_hf_model(path, dtype="float32", scan_layers=scan, kernels=forms)
    sampler = Sampler(model, eos_ids=[])
    np.testing.assert_array_equal(sampler(prompts, NEW).tokens, ref)
    k = jax.tree.leaves(sampler.prefill(prompts, NEW).cache.k)[0]
    assert k.shape[-1] == model.config.head_dim  # keys [.., B, K, S, H]
