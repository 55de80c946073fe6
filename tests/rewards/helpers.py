"""Judge checkpoints for the reward tests, written with `save_hf_model` beside a
byte-level tokenizer (one token per character, so the vocabulary stays ~110):

- `marker_model`: weights set by hand so that the score-token logits are a closed
  form of the prompt (see `marker_reference`), making every judged value exactly
  predictable while still depending on the candidate, the dimension and the mask;
- `random_model`: a random Qwen3-shaped judge (q/k norms, GQA, scanned layers) for
  the path-equivalence tests (shared vs naive, batched vs single, mesh vs none).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kardia_jax.models import ModelConfig, abstract_model, save_hf_model
from kardia_jax.rewards import Rubric

from ..sampling.conftest import char_tokenizer

# A short rubric with the shipped one's structure: prompts of ~250 tokens for a
# byte-level tokenizer, so the tests run one small length bucket.
TEST_RUBRIC_TEXT = """@@ dimensions
relevance = Relevance
fluency = Fluency
empathy = Empathy
persona_consistency = Persona Consistency
safety = Safety
@@ system
Rate the reply between the tags, 1-5 per dimension.
@@ reasoning_note
Notes come first; rate the response.
@@ user
P: {profile}
S: {situation}
D: {dialogue}
<reply_to_evaluate>
{candidate}
</reply_to_evaluate>
@@ score
{dimension}:
"""
TEST_RUBRIC = Rubric.from_text(TEST_RUBRIC_TEXT, version="test")
LENGTH_BUCKETS = (512,)

VOCAB = 112  # >= the byte-level tokenizer, a multiple of 8 (tensor-parallel vocab)
MARKER = "e"  # the token whose share of the prompt moves the scores
A, C = 1.0, 2.5  # embedding of every token along u0; o_proj gain into u2
ALPHA = np.array([0.5, 0.3, 0.0, -0.25, -0.55], np.float32)  # score logits along u0
BETA = np.array([-0.6, -0.3, 0.0, 0.3, 0.6], np.float32)  # ... along u2 (the marker share)
EPS = 1e-6


def _config(**kw) -> ModelConfig:
    base = dict(
        family="llama",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        rms_norm_eps=EPS,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        eos_token_id=2,
    )
    base.update(kw)
    return ModelConfig(**base)


def _set(var, value):
    var.set_value(jnp.asarray(value, var.get_value().dtype))


def numpy_model(cfg: ModelConfig, seed: int = 0, std: float = 0.02):
    """A model with N(0, std) kernels and embeddings, unit norms and zero biases,
    drawn with numpy: `init_model`'s eager random init compiles every op (seconds)."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(cfg))
    flat = []
    for path, var in nnx.to_flat_state(state):
        shape, dtype = var.get_value().shape, var.get_value().dtype
        if path[-1] == "scale":
            value = np.ones(shape)
        elif path[-1] == "bias":
            value = np.zeros(shape)
        else:
            value = std * rng.standard_normal(shape)
        flat.append((path, var.replace(jnp.asarray(value, dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def marker_model(path: str):
    """Writes the hand-set judge to `path`; returns its tokenizer.

    Every token embeds as A*u0, the marker token as A*u0 + u1. q_proj is zero, so
    attention is exactly uniform over the visible tokens; v_proj reads u1 into kv
    head 0, o_proj writes head 0 into u2 (gain C); the MLP and everything else are
    zero. At the last position the residual is thus A*u0 + b_last*u1 + C*m*u2, m the
    mean over visible tokens of the normed marker feature, and the score logits are
    ALPHA_s y0 + BETA_s y2 of its RMS-normed value y (all other logits 0).
    """
    tok = char_tokenizer()
    model = numpy_model(_config(), std=0.0)
    d, v = 32, VOCAB
    emb = np.zeros((v, d), np.float32)
    emb[:, 0] = A
    emb[tok.convert_tokens_to_ids(MARKER), 1] = 1.0
    _set(model.embed_tokens.embedding, emb)
    layer = model.layers[0]
    for norm in (layer.input_layernorm, layer.post_attention_layernorm, model.norm):
        _set(norm.scale, np.ones(d))
    vk = np.zeros((d, 2, 8), np.float32)
    vk[1, 0, 0] = 1.0
    _set(layer.self_attn.v_proj.kernel, vk)
    ok = np.zeros((4, 8, d), np.float32)
    ok[0, 0, 2] = C
    _set(layer.self_attn.o_proj.kernel, ok)
    head = np.zeros((d, v), np.float32)
    ids = score_token_ids(tok)
    head[0, ids] = ALPHA
    head[2, ids] = BETA
    _set(model.lm_head.kernel, head)
    save_hf_model(model, path, tokenizer=tok)
    return tok


def score_token_ids(tok) -> list[int]:
    return [tok.convert_tokens_to_ids(s) for s in "12345"]


def marker_reference(ids, tok) -> tuple[float, float]:
    """(expected score, mass on the score tokens) of `marker_model` after `ids`,
    in float64 numpy."""
    b = (np.asarray(ids) == tok.convert_tokens_to_ids(MARKER)).astype(np.float64)
    d = 32
    v_feature = b / np.sqrt((A**2 + b**2) / d + EPS)  # input RMSNorm, coordinate u1
    m = v_feature.mean()
    x = np.zeros(d)
    x[0], x[1], x[2] = A, b[-1], C * m
    y = x / np.sqrt(np.mean(x**2) + EPS)
    logits = ALPHA * y[0] + BETA * y[2]
    p = np.exp(logits - logits.max())
    expected = float((p / p.sum()) @ np.arange(1, 6))
    mass = float(np.exp(logits).sum() / (np.exp(logits).sum() + (VOCAB - 5)))
    return expected, mass


def random_model(path: str, seed: int = 1):
    """A random Qwen3-shaped judge with stacked (scanned) layers; returns its tokenizer."""
    tok = char_tokenizer()
    cfg = _config(
        family="qwen3",
        num_layers=2,
        hidden_size=64,
        intermediate_size=96,
        head_dim=16,
        qk_norm=True,
        rope_theta=1e6,
        scan_layers=True,
    )
    model = numpy_model(cfg, seed=seed)
    # Scale the head up so the score distribution is far from uniform: a path that
    # mixes rows or dimensions cannot hide behind near-equal scores.
    _set(model.lm_head.kernel, 40.0 * np.asarray(model.lm_head.kernel.get_value()))
    save_hf_model(model, path, tokenizer=tok)
    return tok
