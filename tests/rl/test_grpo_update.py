"""The GRPO update as the driver builds it (`jit_grpo_update`): `train.microbatches`
reaches it and changes nothing but memory; the step's token count is a count; rollout
seeds never repeat; bad settings are refused before any model loads."""

import itertools

import jax
import numpy as np
import pytest

from kardia_jax.errors import ConfigError
from kardia_jax.rl import grpo
from kardia_jax.rl import step as step_module
from kardia_jax.rl.grpo import _check_settings, prompt_buckets, rollout_seed, run_grpo
from kardia_jax.rl.step import GRPOLoss, jit_grpo_update
from kardia_jax.sampling.sampler import PROMPT_BUCKETS
from kardia_jax.train.state import batch_sharding

from .test_grpo_config import config
from .test_step import N, one_device, rollout_batch, setup


def update(microbatches):
    mesh, rules = one_device()
    graphdef, state, shardings, tx = setup(mesh, rules)
    bsh, vsh = batch_sharding(mesh, rules), batch_sharding(mesh, rules, ndim=1)
    loss = GRPOLoss(beta=0.04, norm=float(N))
    fn = jit_grpo_update(graphdef, tx, loss, shardings, bsh, vsh, microbatches=microbatches)
    batch = rollout_batch()
    hlo = fn.lower(state, batch).as_text()
    state, metrics = fn(state, batch)
    return jax.tree.map(np.asarray, state.params), jax.device_get(metrics), hlo


def test_two_microbatches_give_the_single_pass_update_and_token_count():
    one_params, one, one_hlo = update(1)
    two_params, two, two_hlo = update(2)
    loops = "stablehlo.while"  # the microbatch scan adds one: the setting is used
    assert two_hlo.count(loops) > one_hlo.count(loops)
    for a, b in zip(jax.tree.leaves(two_params), jax.tree.leaves(one_params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    for k in ("loss", "pg_loss", "kl", "entropy", "clip_frac"):
        assert float(two[k]) == pytest.approx(float(one[k]), abs=1e-6), k
    # A count, not a mean: the parts' counts add up to the minibatch's.
    tokens = float(rollout_batch()["completion_mask"].sum())
    assert float(one["num_tokens"]) == float(two["num_tokens"]) == tokens


def test_the_driver_passes_train_microbatches_to_the_update(
    tmp_path, monkeypatch, rl_policy, rl_tokenizer, short_data
):
    seen = {}

    class Built(Exception):  # stops the run once the update is built: nothing samples
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(grpo, "jit_grpo_update", spy)
    c = config(
        **{
            "model.path": rl_policy,
            "data.tokenizer": rl_tokenizer,
            "data.path": f"{short_data}:train",
            "data.max_length": 256,
            "data.buckets": (256,),
            "model.vocab_multiple": 8,
            "select.every": 0,
            "export_hf": False,
            "train.steps": 1,
            "train.microbatches": 2,
        }
    )
    with pytest.raises(Built):
        run_grpo(c, str(tmp_path / "run"))
    assert seen["microbatches"] == 2


def test_microbatches_that_do_not_split_the_update_are_refused(tmp_path):
    # grpo_tiny: 16 completions per update; no model is read before the refusal.
    c = config(**{"model.path": str(tmp_path / "absent"), "train.microbatches": 3})
    with pytest.raises(ConfigError, match="train.microbatches=3"):
        grpo.prepare_grpo(c, str(tmp_path / "run"))


def test_empty_buckets_are_the_samplers_defaults():
    assert prompt_buckets(config(**{"data.buckets": ()})) == PROMPT_BUCKETS
    assert prompt_buckets(config(**{"data.buckets": (256, 512)})) == (256, 512)


def test_rollout_seeds_differ_over_steps_and_rounds():
    grid = list(itertools.product(range(300), range(6)))
    seeds = [rollout_seed(0, s, r) for s, r in grid]
    assert len(set(seeds)) == len(grid)
    assert all(0 <= s < 2**32 for s in seeds)  # what the sampler's PRNG key takes
    assert rollout_seed(1, 0, 0) != rollout_seed(0, 0, 0)  # the run's seed counts too
    assert rollout_seed(0, 5, 1) == rollout_seed(0, 5, 1)  # a resumed run draws the same


@pytest.mark.parametrize(
    "key, value",
    [
        ("rollout.temperature", 0.0),
        ("grpo.agg", "sequence-mean"),
        ("grpo.kl_estimator", "k4"),
        ("grpo.advantage_scale", "zscore"),
    ],
)
def test_loss_settings_are_refused_before_any_model_loads(tmp_path, key, value):
    _check_settings(config())  # the tiny config itself is fine
    with pytest.raises(ConfigError, match=f"{key}="):
        _check_settings(config(**{key: value}))
    # The driver refuses it too, before it reads model.path (absent here).
    c = config(**{key: value, "model.path": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match=f"{key}="):
        run_grpo(c, str(tmp_path / "run"))


def test_step_module_builds_the_update_with_its_shardings():
    # compile-check and the bench import the builder from here, the driver too.
    assert grpo.jit_grpo_update is step_module.jit_grpo_update
