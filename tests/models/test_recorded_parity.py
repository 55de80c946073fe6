"""Parity with transformers where torch cannot be installed: its logits and greedy
generations, recorded by `tests/references.py` in a venv that has torch, compared here
at the live tests' tolerances (`test_transformers_parity`, `test_sampler_parity`).

KARDIA_JAX_REFERENCES=DIR reads a recording (`.ci/run` makes one in its Python 3.11
venv for its Python 3.12 one); without it the references are recorded now, which needs
torch."""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from kardia_jax.models import load_hf_model
from kardia_jax.sampling import Sampler
from tests import references
from tests.models.conftest import VARIANTS


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """variant -> (checkpoint dir, recorded arrays)."""
    directory = os.environ.get("KARDIA_JAX_REFERENCES", "")
    if directory:
        manifest = os.path.join(directory, references.MANIFEST)
        # Asked for and absent is a broken CI step, not a reason to skip.
        assert os.path.isfile(manifest), f"KARDIA_JAX_REFERENCES={directory}: no {manifest}"
        with open(manifest, encoding="utf-8") as f:
            assert sorted(json.load(f)["variants"]) == sorted(VARIANTS), manifest
    elif importlib.util.find_spec("torch") is None:
        pytest.skip(reason="needs torch to record, or KARDIA_JAX_REFERENCES to read a recording")
    else:
        directory = str(tmp_path_factory.mktemp("references"))
        references.record(directory)
    return {
        v: (os.path.join(directory, v), load_file(os.path.join(directory, v, references.REFERENCE)))
        for v in VARIANTS
    }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_recorded_transformers(recorded, variant):
    path, ref = recorded[variant]
    ids, mask = ref["ids"], ref["mask"]
    out = np.asarray(load_hf_model(path, dtype="float32")(jnp.asarray(ids), jnp.asarray(mask)))
    err = np.abs(out - ref["logits"])[mask.astype(bool)].max()
    assert err <= 1e-4, f"{variant}: max |logit diff| {err:.2e} on real tokens"


@pytest.mark.parametrize(
    "variant,kernels",
    [(v, "auto") for v in references.GENERATE_VARIANTS] + [("qwen2_untied", "tpu")],
)
def test_greedy_matches_recorded_generate(recorded, variant, kernels):
    """Token for token; "tpu" prefills through splash attention (Pallas interpret
    mode on CPU) and caches keys in the TPU layout."""
    path, ref = recorded[variant]
    rows = zip(ref["prompt_ids"], ref["prompt_mask"], strict=True)
    prompts = [ids[mask.astype(bool)].tolist() for ids, mask in rows]
    model = load_hf_model(path, dtype="float32", kernels=kernels)
    out = Sampler(model, eos_ids=[])(prompts, references.NEW)
    np.testing.assert_array_equal(out.tokens, ref["greedy_tokens"])
    np.testing.assert_allclose(out.logprobs, ref["greedy_logprobs"], atol=1e-4)
