"""`Sampler.programs` is the one builder of the sampler's prefill and decode: the
sampler runs exactly the programs it returns (static settings and the cache's sharding
included), so a caller that lowers them compiles what sampling runs."""

import jax
import numpy as np
import pytest

from kardia_jax.compiles import CompileCounter
from kardia_jax.models import load_hf_model
from kardia_jax.sampling import Sampler, SamplingConfig
from kardia_jax.sampling import sampler as sampler_module
from kardia_jax.sampling.sampler import row_buckets
from kardia_jax.sharding import batch_shards, make_mesh

from .test_sampler import VARIANT


@pytest.fixture(scope="module")
def sharded(tiny_checkpoint):
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    return load_hf_model(tiny_checkpoint(VARIANT)[0], dtype="float32", mesh=mesh), mesh


def test_the_sampler_runs_the_programs_its_builder_returns(sharded, prompts, monkeypatch):
    model, mesh = sharded
    called = []

    class Recorded(sampler_module.Program):
        def __call__(self, *args):
            called.append(self)
            return super().__call__(*args)

    monkeypatch.setattr(sampler_module, "Program", Recorded)
    sampler = Sampler(model, eos_ids=[], mesh=mesh)
    sampling = SamplingConfig(temperature=0.7, top_k=20)
    out = sampler(prompts, 6, sampling, group_size=2, seed=3)
    assert out.tokens.shape == (len(prompts) * 2, 6)

    b, p, n = sampler.shapes(prompts, 6)
    prefill, decode = sampler.programs(b, p, n, sampling, group=2)
    # With compaction the smaller row buckets' decode and gather programs run too
    # (the first call builds them all): each is the builder's for its width.
    ladder = row_buckets(b * 2, batch_shards(mesh))
    built = [prefill, decode] + [sampler.programs(w, p, n, sampling)[1] for w in ladder]
    built += [sampler.compact_program(w, p, n) for w in ladder]
    assert called[:2] == [prefill, decode]
    assert all(c in built for c in called) and all(x in called for x in built)
    # The cache is laid out on the mesh in both, and the budget bucket reaches prefill.
    assert prefill.static["sharding"] is not None and prefill.static["budget"] == n
    assert decode.static["sharding"] == prefill.static["sharding"]
    # Called again, the builder's programs are already compiled: nothing new builds.
    compiles = CompileCounter()
    again = sampler(prompts, 6, sampling, group_size=2, seed=3)
    assert compiles.by_name() == {}
    np.testing.assert_array_equal(again.tokens, out.tokens)
