"""The sampler and the judge on Gemma, Gemma 2 and Gemma 3 (tiny checkpoints
transformers wrote): greedy decoding equals transformers' `generate` token for token
on a left-padded batch, prompts and generation several sliding windows long; the
sampler's log-probs equal the training forward's (`models/logprobs.py`); sliding
layers decode from rings of window slots (`decoder.cache_for_decode`), whose logits
equal the full forward's at every position; the CPU decode head keeps Gemma 2's final
soft-cap; a Gemma-3-shaped judge's cached scores equal its uncached forward's."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from kardia_jax.models import get_preset, kernels, load_hf_model, save_hf_model
from kardia_jax.models.decoder import cache_for_decode, positions_from_mask, ring_slots
from kardia_jax.models.logprobs import token_log_probs
from kardia_jax.rewards import JudgeContext
from kardia_jax.sampling import Sampler, SamplingConfig, loop
from tests.rewards.conftest import make_judge
from tests.rewards.helpers import VOCAB, numpy_model

from .conftest import char_tokenizer

WINDOW = 8
NEW = 28  # 3.5 windows of new tokens; the budget bucket is 32
PROMPT_LENGTHS = (11, 20, 29)  # left-padded to the prompt bucket, 32 (four windows)
# Tiny shapes keeping each family's features: GQA, head_dim != hidden / heads,
# query_pre_attn_scalar != head_dim, soft-caps small enough to bite (Gemma 2), windows
# far shorter than prompt + generation, Gemma 3's 2:1 local:global pattern with a
# local rope base != the global one. Layer counts leave layers after the last whole
# repeat of the pattern (Gemma 2: one sliding layer; Gemma 3: two), which the scanned
# decode runs outside its scan over repeats. initializer_range 0.1 gives O(1) logits,
# so a wrong window, rope or cap moves every logit by far more than the tolerances.
_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    initializer_range=0.1,
)
VARIANTS = {
    "gemma": ("GemmaConfig", dict(num_hidden_layers=2)),
    "gemma2": (
        "Gemma2Config",
        dict(
            num_hidden_layers=5,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            num_hidden_layers=8,
            sliding_window=WINDOW,
            sliding_window_pattern=3,
            query_pre_attn_scalar=24,
            rope_theta=1e6,
            rope_local_base_freq=1e4,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
        ),
    ),
}
WINDOWED = ["gemma2", "gemma3"]


@pytest.fixture(scope="module")
def gemma_checkpoint(tmp_path_factory):
    """Factory: variant -> (checkpoint dir, transformers model)."""
    made = {}

    def get(variant: str):
        if variant not in made:
            cls_name, kw = VARIANTS[variant]
            config = getattr(transformers, cls_name)(**{**_COMMON, **kw})
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config).eval()
            with torch.no_grad():  # norms start at 0 ((1 + w) form): move them
                for name, p in model.named_parameters():
                    if "norm" in name:
                        p.add_(0.3 * torch.randn_like(p))
            path = tmp_path_factory.mktemp(f"sampling_{variant}")
            model.save_pretrained(path)
            made[variant] = (str(path), model)
        return made[variant]

    return get


@pytest.fixture(scope="module")
def long_prompts():
    rng = np.random.default_rng(5)
    return [rng.integers(3, 256, n).tolist() for n in PROMPT_LENGTHS]


def hf_generate(hf, ids, mask, new: int):
    """transformers' greedy `generate`: ([B, new] tokens, [B, new, V] scores)."""
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,  # never stop early: all tokens are compared
            output_scores=True,
            return_dict_in_generate=True,
        )
    return out.sequences[:, ids.shape[1] :].numpy(), torch.stack(out.scores, 1).float().numpy()


def _slots_of(cache) -> set[int]:
    return {x.shape[-2] for x in jax.tree.leaves(cache.v)}


@pytest.mark.parametrize(
    "variant,scan,forms",
    # "xla": the GPU / TPU cache layout, keys [B, K, S, H] like the values (CPU: keys
    # transposed), so the rings are cut along another axis.
    [
        ("gemma", False, "auto"),
        ("gemma2", False, "auto"),
        ("gemma2", True, "auto"),
        ("gemma3", False, "auto"),
        ("gemma3", True, "auto"),
        ("gemma3", True, "xla"),
    ],
)
def test_greedy_equals_transformers_generate_past_the_window(
    gemma_checkpoint, long_prompts, left_pad, variant, scan, forms
):
    path, hf = gemma_checkpoint(variant)
    ids, mask = left_pad(long_prompts)
    ref, scores = hf_generate(hf, ids, mask, NEW)
    # Only meaningful if no step is a near-tie that float noise could flip.
    top2 = np.sort(scores, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-4

    model = load_hf_model(path, scan_layers=scan, kernels=forms)
    sampler = Sampler(model, eos_ids=[])
    out = sampler(long_prompts, NEW)
    np.testing.assert_array_equal(out.tokens, ref)
    # Greedy log-probs are the model's own: those of transformers' scores, Gemma 2's
    # final soft-cap included (its tied head takes the CPU decode head).
    ref_lp = np.take_along_axis(jax.nn.log_softmax(scores), ref[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, ref_lp, atol=1e-4)
    state = sampler.prefill(long_prompts, NEW)
    slots = state.cache.num_slots
    assert slots == 64  # 32 prompt + 32 budget slots: eight windows
    # Sliding layers decoded from rings of window slots, global layers from all.
    assert _slots_of(state.cache) == ({slots, WINDOW} if variant in WINDOWED else {slots})
    # Keys [.., S, H] (minor dim H = 32) for "xla", [.., H, S] transposed on CPU.
    key_minor = {x.shape[-1] for x in jax.tree.leaves(state.cache.k)}
    assert key_minor == ({32} if forms == "xla" else _slots_of(state.cache))
    if scan and forms == "auto":  # the scanned model decoded through unrolled layers
        unrolled = Sampler(model, eos_ids=[], unroll_layers=True)(long_prompts, NEW)
        np.testing.assert_array_equal(unrolled.tokens, ref)


@pytest.mark.parametrize("variant", ["gemma", "gemma2", "gemma3"])
def test_sampled_logprobs_equal_training_forward(gemma_checkpoint, long_prompts, variant):
    """Temperature sampling, two samples per prompt: each completion token's
    log-prob from the sampler equals `token_log_probs` over [prompt | completion] in
    one ordinary forward pass, the way GRPO computes them."""
    path, _ = gemma_checkpoint(variant)
    model = load_hf_model(path, scan_layers=variant == "gemma3")
    cfg = SamplingConfig(temperature=0.7, top_k=40)
    out = Sampler(model, eos_ids=[])(long_prompts, NEW, cfg, group_size=2, seed=3)
    rows = [p for p in long_prompts for _ in range(out.group_size)]
    seqs = [r + out.ids(i) for i, r in enumerate(rows)]
    t = max(map(len, seqs))
    ids = np.zeros((len(seqs), t), np.int32)
    mask = np.zeros((len(seqs), t), np.int32)
    for i, s in enumerate(seqs):
        ids[i, t - len(s) :], mask[i, t - len(s) :] = s, 1

    @jax.jit
    def training_forward(ids, mask):
        hidden = model.hidden_states(ids, mask)
        return token_log_probs(model, hidden[:, :-1], ids[:, 1:], temperature=cfg.temperature)

    logp = np.asarray(training_forward(jnp.asarray(ids), jnp.asarray(mask)))
    ref = np.stack([logp[i, t - NEW - 1 :] for i in range(len(seqs))])
    err = np.abs(out.logprobs - ref).max()
    assert err <= 1e-4, f"max |sampler - training log-prob| = {err:.2e}"
    assert out.mask.all()


def test_cpu_decode_head_applies_the_final_soft_cap(gemma_checkpoint):
    """`loop.step_logits` projects a tied head with its own multiply-reduce on CPU:
    it must return the model's logits, Gemma 2's final soft-cap included."""
    path, _ = gemma_checkpoint("gemma2")
    model = load_hf_model(path)
    cap = model.config.final_logit_softcap
    assert model.config.tie_word_embeddings and kernels.of(model.config.kernels) == "cpu" and cap
    # Hidden states large enough that uncapped logits pass the cap.
    hidden = 4.0 * jax.random.normal(jax.random.key(0), (4, 1, 64), jnp.float32)
    got = np.asarray(loop.step_logits(model, hidden))
    want = np.asarray(model.logits(hidden)[:, 0])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    uncapped = np.asarray(hidden[:, 0]) @ np.asarray(model.head_weight()[0]).T
    assert np.abs(got).max() <= cap < np.abs(uncapped).max()


# ------------------------------------------------------------------- ring caches
@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("variant", WINDOWED)
def test_ring_decode_equals_the_full_forward_at_every_position(gemma_checkpoint, variant, scan):
    """A left-padded prompt through `forward_with_cache`, its cache turned into the
    decode layout (sliding layers in rings of window slots), then one token at a time
    for three windows: every position's logits equal the full forward's."""
    path, _ = gemma_checkpoint(variant)
    model = load_hf_model(path, scan_layers=scan)
    rng = np.random.default_rng(3)
    s, p = 40, 13  # 13-token prompt bucket, the shortest row 4 real tokens
    ids = rng.integers(3, 256, size=(3, s)).astype(np.int32)
    mask = np.ones((3, s), np.int32)
    mask[1, :5], mask[2, :9] = 0, 0
    ids[mask == 0] = 0
    full = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    positions = np.asarray(positions_from_mask(jnp.asarray(mask)))
    step = nnx.jit(lambda m, *a: m.forward_with_cache(*a))
    k, v = model.init_cache(3, p, "float32")
    prefix = (jnp.asarray(ids[:, :p]), jnp.asarray(positions[:, :p]), jnp.asarray(mask[:, :p]))
    hidden, k, v = step(model, *prefix, k, v, 0)
    k, v = cache_for_decode(model.config, k, v, s)
    assert ring_slots(model.config, s) == WINDOW
    assert {x.shape[-2] for x in jax.tree.leaves(v)} == {s, WINDOW}
    outs = [model.logits(hidden)]
    kv_mask = jnp.asarray(mask)
    for i in range(p, s):
        at = jnp.asarray(i, jnp.int32)
        one = (jnp.asarray(ids[:, i : i + 1]), jnp.asarray(positions[:, i : i + 1]))
        hidden, k, v = step(model, *one, kv_mask, k, v, at)
        outs.append(model.logits(hidden))
    cached = np.concatenate([np.asarray(o) for o in outs], axis=1)
    real = mask.astype(bool)
    assert np.abs(cached - full)[real].max() <= 1e-4
    two = (jnp.asarray(ids[:, :2]), jnp.asarray(positions[:, :2]))
    with pytest.raises(ValueError, match="one token per step"):
        model.forward_with_cache(*two, kv_mask, k, v, 2)


def test_windows_as_long_as_the_cache_keep_every_slot(gemma_checkpoint):
    path, _ = gemma_checkpoint("gemma3")
    cfg = load_hf_model(path).config
    assert ring_slots(cfg, WINDOW) is None and ring_slots(cfg, WINDOW + 1) == WINDOW
    assert ring_slots(cfg.replace(layer_types=()), 4 * WINDOW) is None  # no sliding layer


# ------------------------------------------------------------------------ judge
JUDGE_WINDOW = 16  # judge prompts are ~250 tokens (byte-level tokenizer)


def gemma3_judge(path: str, window: int = JUDGE_WINDOW):
    """A random Gemma-3-shaped judge (sliding and global layers 2:1 over 6, QK-norm,
    sandwich norms, local rope base, GeGLU, scaled embeddings) with the reward tests'
    byte-level tokenizer; untied so that its head can be scaled up as `random_model`'s
    is (a far-from-uniform score distribution)."""
    layer_types = tuple(
        "full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(6)
    )
    cfg = dataclasses.replace(
        get_preset("gemma3_270m"),
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_layers=6,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16.0,
        layer_types=layer_types,
        sliding_window=window,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
        scan_layers=True,
    )
    model = numpy_model(cfg, seed=2)
    # `numpy_model` sets norm scales to 1, which (1 + w) norms read as 2: every norm,
    # the q / k norms included, would double. Gemma's own init is 0.
    for path_, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path_[-1] == "scale":
            var.set_value(jnp.zeros_like(var.get_value()))
    head = model.lm_head.kernel
    head.set_value(40.0 * head.get_value())
    save_hf_model(model, path, tokenizer=char_tokenizer())
    return path


JUDGE_ITEMS = (
    [
        JudgeContext("INFJ; likes hiking and old films.", "My dog died last week.", ()),
        JudgeContext(
            "ESTP; runs a small bakery.",
            "I failed my driving test again.",
            (("user", "I failed again."), ("assistant", "Oh no, how are you feeling?")),
        ),
    ]
    * 2,
    [
        "<|response_begin|>I am so sorry. Do you want to talk about it?<|response_end|>",
        "<|response_begin|>That is hard; it happens to many people.<|response_end|>",
        "no markers at all, a longer reply that runs on for a while " * 2,
        "<|response_begin|>ok<|response_end|>",
    ],
)


def test_gemma3_judge_cached_scores_equal_the_uncached_forward(tmp_path):
    """The judge's shared-prefix cache (the full cache: windows counted in positions
    across the padding between head and rest) against five full prompts through the
    uncached forward, scanned and unrolled layers; and the window changes the scores
    (so the comparison exercises it)."""
    judge = make_judge(gemma3_judge(str(tmp_path / "windowed")))
    assert judge.model_config.sliding_window == JUDGE_WINDOW
    prompts = judge.prompts(*JUDGE_ITEMS)
    assert min(len(p.prefix_ids) for p in prompts) > 10 * JUDGE_WINDOW
    shared = judge.evaluate_prompts(prompts, prefix_sharing=True)
    naive = judge.evaluate_prompts(prompts, prefix_sharing=False)
    diff = np.abs(shared.scores - naive.scores).max()
    assert diff <= 1e-5, f"max |cached - uncached| = {diff:.2e}"
    np.testing.assert_allclose(shared.mass, naive.mass, atol=1e-5)
    assert np.ptp(shared.scores, axis=0).min() > 1e-3  # rows really differ
    unrolled = make_judge(str(tmp_path / "windowed"), scan_layers=False)
    unrolled_scores = unrolled.evaluate_prompts(prompts, prefix_sharing=True).scores
    assert np.abs(unrolled_scores - naive.scores).max() <= 1e-5
    wide = make_judge(gemma3_judge(str(tmp_path / "wide"), window=4096))
    assert np.abs(wide.evaluate_prompts(prompts).scores - shared.scores).max() > 1e-3
