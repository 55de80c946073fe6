"""The projection onto the vocabulary has one home (`Transformer.head_weight` and
`decoder.project_to_vocab`): it matches a plain numpy projection for tied and
untied heads, and no other module of the package reads the head's parameters."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

import kardia_jax
from kardia_jax.models import init_model
from kardia_jax.models.decoder import project_to_vocab
from kardia_jax.sampling.loop import step_logits

from .test_decoder import TINY


@pytest.mark.parametrize("tied", [True, False])
def test_logits_are_hidden_times_the_head_in_either_orientation(tied):
    model = init_model(TINY.replace(tie_word_embeddings=tied), seed=1)
    rng = np.random.default_rng(0)
    h = rng.standard_normal((2, 3, TINY.hidden_size)).astype(np.float32)
    w_out, vocab_major = model.head_weight()
    assert vocab_major == tied
    # Read from the parameters by name, not through head_weight: a swapped head
    # (the embedding used untied, or the kernel's orientation lost) would differ.
    if tied:
        want = h @ np.asarray(model.embed_tokens.embedding[...]).T
    else:
        want = h @ np.asarray(model.lm_head.kernel[...])
    got = model.logits(jnp.asarray(h))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        project_to_vocab(jnp.asarray(h), w_out, vocab_major, "float32"), want, rtol=1e-5, atol=1e-5
    )
    # The sampler's one-row decode form reads the same head.
    np.testing.assert_allclose(
        step_logits(model, jnp.asarray(h[:, :1])), want[:, 0], rtol=1e-5, atol=1e-5
    )


def test_only_the_decoder_reads_the_head_parameters():
    root = pathlib.Path(kardia_jax.__file__).parent
    pattern = re.compile(r"\.lm_head\.kernel|\.embed_tokens\.embedding|\.lm_head\(")
    readers = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())
    )
    assert readers == ["models/decoder.py"]
