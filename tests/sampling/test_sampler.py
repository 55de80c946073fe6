"""The sampler's contract: bounded compiles, left-padding invariance, stop ids and
finish reasons, group sampling from one prefill, streaming, and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kardia_jax.errors import ConfigError
from kardia_jax.models import load_hf_model
from kardia_jax.sampling import Sampler, SamplingConfig, compile_counts, generate, loop
from kardia_jax.sharding import make_mesh

VARIANT = "qwen2_untied"  # the model and shapes of test_sampler_parity: its programs are reused


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_hf_model(tiny_checkpoint(VARIANT)[0], dtype="float32")


def test_ten_prompt_lengths_compile_one_program_per_bucket(model):
    rng = np.random.default_rng(7)
    lengths = [1, 3, 7, 12, 16, 17, 25, 31, 33, 60]  # buckets 16, 32, 64
    prompts = [rng.integers(3, 256, n).tolist() for n in lengths]
    budgets = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # one budget bucket (16)
    sampler = Sampler(model, eos_ids=[])
    # Other tests in this process may have compiled these shapes already (compaction
    # builds every smaller row bucket of a call): start from empty in-memory caches.
    loop.prefill.clear_cache()
    loop.decode.clear_cache()
    before = compile_counts()
    jax_before = loop.prefill._cache_size(), loop.decode._cache_size()
    alone = [sampler([p], n) for p, n in zip(prompts, budgets, strict=True)]
    buckets = {sampler.shapes([p], n) for p, n in zip(prompts, budgets, strict=True)}
    assert len(buckets) == 3
    after = compile_counts()
    for name in ("prefill", "decode"):
        assert after[name] - before.get(name, 0) == len(buckets), (name, before, after)
    # jax's own executable caches agree with our trace counter.
    assert loop.prefill._cache_size() - jax_before[0] == len(buckets)
    assert loop.decode._cache_size() - jax_before[1] == len(buckets)
    for out, n in zip(alone, budgets, strict=True):  # dynamic budgets inside one bucket
        assert out.lengths.tolist() == [n] and out.finish_reason == ["length"]
        assert out.tokens.shape == (1, n)
    # Left padding and batch padding change nothing: all ten prompts in one batch
    # (padded to 16 rows x 64 tokens) give each prompt the tokens it got alone.
    batch = sampler(prompts, 12)
    for i, out in enumerate(alone):
        np.testing.assert_array_equal(batch.tokens[i, : budgets[i]], out.tokens[0])
        np.testing.assert_allclose(batch.logprobs[i, : budgets[i]], out.logprobs[0], atol=1e-5)


def expected_ends(free, eos, stop, budget):
    """(last index, reason) per row, from the free-running greedy tokens."""
    ends = []
    for row in free:
        hits = [(int(np.flatnonzero(np.isin(row, ids))[0]), why) for ids, why in
                ((eos, "eos"), (stop, "stop")) if np.isin(row, ids).any()]  # fmt: skip
        ends.append(min(hits + [(budget - 1, "length")]))
    return ends


def test_eos_and_stop_ids_end_rows_with_their_reason(model, prompts):
    sampler = Sampler(model, eos_ids=[])
    free = sampler(prompts, 32).tokens  # greedy: the same tokens until a row stops
    # Two eos ids (from row 0) and a stop id (from row 1) taken from the free-running
    # output such that rows end early with both reasons.
    pairs = [([int(free[0, i]), int(free[2, i])], [int(free[1, j])])
             for i in range(1, 9) for j in range(1, 9)]  # fmt: skip
    eos, stop = next(
        (e, s) for e, s in pairs if {"eos", "stop"} <= {r for _, r in expected_ends(free, e, s, 32)}
    )
    out = Sampler(model, eos_ids=eos, stop_ids=stop)(prompts, 32)
    for i, (end, reason) in enumerate(expected_ends(free, eos, stop, 32)):
        assert out.finish_reason[i] == reason and out.lengths[i] == end + 1
        np.testing.assert_array_equal(out.tokens[i, : end + 1], free[i, : end + 1])  # stop kept
        assert (out.tokens[i, end + 1 :] == sampler.pad_id).all()
        assert out.mask[i].tolist() == [j <= end for j in range(32)]
        assert (out.logprobs[i, end + 1 :] == 0).all()
    # eos_ids=None is the checkpoint's (config eos 2); [] never stops early.
    assert Sampler(model).eos_ids == model.config.eos_ids == (2,)
    never = sampler(prompts, 32)
    assert never.finish_reason == ["length"] * 4 and never.lengths.tolist() == [32] * 4


def test_generate_one_call_api(model, prompts):
    out = generate(model, prompts, 32, eos_ids=[])
    ref = Sampler(model, eos_ids=[])(prompts, 32)
    assert [c.token_ids for c in out] == [ref.ids(i) for i in range(4)]
    assert [c.finish_reason for c in out] == ["length"] * 4
    np.testing.assert_allclose([c.logprobs for c in out], ref.logprobs)


def test_decode_donates_the_state(model, prompts):
    sampler = Sampler(model, eos_ids=[])
    state = sampler.prefill(prompts, 32)
    old_cache = state.cache.k[0]
    new = sampler.decode(state)
    # The cache was updated in place: the input buffers are gone, not copied.
    assert old_cache.is_deleted() and state.tokens.is_deleted()
    assert not new.cache.k[0].is_deleted() and int(new.step) == 32


def test_stream_yields_the_same_tokens_without_new_programs(model, prompts):
    sampler = Sampler(model, eos_ids=[int(Sampler(model, eos_ids=[])(prompts, 32).tokens[0, 9])])
    ref = sampler(prompts, 32)
    before = compile_counts()
    pieces = list(sampler.stream(prompts, 32, chunk=5))
    assert compile_counts() == before  # the chunk limit is a traced argument
    assert len(pieces) > 2
    for i in range(len(prompts)):
        assert sum((p[i] for p in pieces), []) == ref.ids(i)


def test_group_samples_share_one_prefill(model, prompts):
    # test_sampler_parity's sampling config and shapes: no new programs.
    cfg = SamplingConfig(temperature=0.7, top_k=40, top_p=0.9)
    sampler = Sampler(model, eos_ids=[7, 11])
    a, b, c = (sampler(prompts, 32, cfg, group_size=2, seed=s) for s in (3, 3, 4))
    # Independent draws per row: a group's two samples differ; the call's one key
    # makes a run reproducible per seed and different across seeds.
    for out in (a, c):
        assert all(out.ids(2 * i) != out.ids(2 * i + 1) for i in range(4))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)

    # The prompt is run once per prompt, not once per sample: prefill FLOPs barely
    # grow with the group size (only the first draw and the cache copy do).
    def flops(group):
        args = (jnp.zeros((4, 16), jnp.int32), jnp.ones((4, 16), jnp.int32))
        lowered = loop.prefill.lower(
            sampler.graphdef, sampler.params, *args, jnp.ones(4 * group, bool),
            jnp.full(8, -1), jnp.full(8, -1), jax.random.key(0), 32,
            cfg=cfg, group=group, budget=32, cache_len=48, pad_id=0, cache_dtype="float32",
        )  # fmt: skip
        return lowered.cost_analysis()["flops"]

    print("prefill flops G=1, G=8:", flops(1), flops(8))
    assert flops(8) < 1.2 * flops(1)


def test_sharded_sampler_matches_single_device(tiny_checkpoint, model, prompts):
    mesh = make_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])
    sharded = load_hf_model(tiny_checkpoint(VARIANT)[0], dtype="float32", mesh=mesh)
    sampler = Sampler(sharded, eos_ids=[], mesh=mesh)
    out = sampler(prompts, 32)
    np.testing.assert_array_equal(out.tokens, Sampler(model, eos_ids=[])(prompts, 32).tokens)
    state = sampler.prefill(prompts, 32)
    # Keys [B, K, H, S], values [B, K, S, H]: rows on data, kv heads on tensor.
    for x in (*state.cache.k, *state.cache.v):
        assert tuple(x.sharding.spec)[:2] == ("data", "tensor"), x.sharding.spec


def test_sharded_sampler_with_tpu_kernels_matches_single_device(tiny_checkpoint, model, prompts):
    """Splash prefill in shard_map (rows on data, heads on tensor) and keys cached
    [B, K, S, H], sharded as the values are."""
    mesh = make_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])
    sharded = load_hf_model(tiny_checkpoint(VARIANT)[0], mesh=mesh, kernels="tpu")
    sampler = Sampler(sharded, eos_ids=[], mesh=mesh)
    want = Sampler(model, eos_ids=[])(prompts, 16, group_size=2).tokens
    np.testing.assert_array_equal(sampler(prompts, 16, group_size=2).tokens, want)
    state = sampler.prefill(prompts, 16, group_size=2)
    for x in (*state.cache.k, *state.cache.v):
        assert x.shape[-1] == sharded.config.head_dim
        assert tuple(x.sharding.spec)[:2] == ("data", "tensor"), x.sharding.spec


def test_bad_requests_raise_config_errors(model):
    sampler = Sampler(model)
    for prompts, n, match in [
        ([], 4, "no prompts"),
        ([[5], []], 4, "prompt 1 is empty"),
        ([[5, 256]], 4, r"outside \[0, 256\)"),
        ([[5] * 250], 7, "exceeds max_position_embeddings=256"),
        ([[5]], 0, "need >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            sampler(prompts, n)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingConfig(temperature=1.0, top_p=0.0)
