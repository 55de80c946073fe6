"""Compaction (`Sampler(compact=True)`): rows that finished leave the decode batch,
which shrinks through row buckets. Against references: greedy equals transformers'
`generate` and log-probs the training forward on batches whose rows end at spread
steps; and the guarantees compaction must keep: a row's tokens depend on its seed and
index alone, not on its batch; compiles bounded by row buckets; and the work counter
(`Sampler.last_stats`) shows the finished rows' steps saved."""

import jax
import numpy as np
import pytest

from kardia_jax.compiles import CompileCounter
from kardia_jax.models import load_hf_model
from kardia_jax.sampling import Sampler, SamplingConfig, compile_counts
from kardia_jax.sampling.sampler import row_buckets
from kardia_jax.sharding import make_mesh
from tests.references import NEW, hf_greedy

from .test_gemma_sampler import gemma_checkpoint  # noqa: F401 (a fixture)
from .test_sampler import VARIANT, expected_ends
from .test_sampler_parity import training_logprobs

LENGTHS = (3, 5, 6, 8, 9, 11, 12, 13, 14, 15, 16, 4, 7, 10, 2, 16)  # one prompt bucket


def make_prompts(n: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 256, k).tolist() for k in LENGTHS[:n]]


def spread_eos(free: np.ndarray) -> list[int]:
    """Eos ids taken from free-running greedy tokens [B, N] so that rows end at steps
    spread over the budget: for row i (of the first 3/4) the first token at or after
    step ~ i * N / B that is new to the row, to the set, and absent from the last
    quarter of rows, which then run to the budget."""
    b, n = free.shape
    keep = b - b // 4
    ids: list[int] = []
    for i in range(keep):
        for t in range((i * n) // keep + 1, n - 1):
            tok = int(free[i, t])
            if tok not in ids and tok not in free[i, :t] and not np.isin(free[keep:], tok).any():
                ids.append(tok)
                break
    return ids


def expected(free, eos, pad_id):
    """(tokens, lengths, reasons) the free-running tokens give when `eos` ends rows."""
    ends = expected_ends(free, eos, [], free.shape[1])
    tokens = np.full_like(free, pad_id)
    for i, (end, _) in enumerate(ends):
        tokens[i, : end + 1] = free[i, : end + 1]
    return tokens, np.asarray([e + 1 for e, _ in ends]), [r for _, r in ends]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_hf_model(tiny_checkpoint(VARIANT)[0], dtype="float32")


@pytest.fixture(scope="module")
def spread_checkpoint(tmp_path_factory):
    """(dir, transformers model): a tiny Qwen2 initialised at a larger scale than
    tests/models' (whose greedy rows settle into loops of two or three tokens): its
    greedy rows vary, so eos ids taken from them end rows at spread steps."""
    import torch
    import transformers

    config = transformers.Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=1e4,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    path = tmp_path_factory.mktemp("spread_checkpoint")
    hf.save_pretrained(path)
    return str(path), hf


@pytest.mark.parametrize(
    "variant,scan,prompts,buckets",
    # qwen2 unrolled and scanned (one stacked cache), 16 rows; gemma3 scanned: rings
    # of window slots for the sliding layers beside the global layers' cache.
    [("spread", False, 16, 5), ("spread", True, 8, 3), ("gemma3", True, 8, 2)],
)
def test_compacted_greedy_equals_transformers_generate(
    spread_checkpoint,
    gemma_checkpoint,  # noqa: F811
    left_pad,
    variant,
    scan,
    prompts,
    buckets,
):
    path, hf = gemma_checkpoint(variant) if variant == "gemma3" else spread_checkpoint
    prompts = make_prompts(prompts)
    ids, mask = left_pad(prompts)
    free, scores = hf_greedy(hf, ids, mask)  # transformers, never stopping early
    top2 = np.sort(scores, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-4  # no near-tie float noise could flip

    eos = spread_eos(free)
    model = load_hf_model(path, dtype="float32", scan_layers=scan)
    sampler = Sampler(model, eos_ids=eos)
    tokens, lengths, reasons = expected(free, eos, sampler.pad_id)
    assert "length" in reasons and "eos" in reasons

    out = sampler(prompts, NEW)
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_array_equal(out.lengths, lengths)
    assert out.finish_reason == reasons
    widths = sampler.last_stats["widths"]
    assert widths[0] == len(prompts) and len(widths) >= buckets  # it did compact
    # Greedy log-probs are the model's own (T = 1): those of transformers' scores.
    ref_lp = np.take_along_axis(np.asarray(_log_softmax(scores)), free[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs[out.mask], ref_lp[out.mask], atol=1e-4)
    assert (out.logprobs[~out.mask] == 0).all()

    plain = Sampler(model, eos_ids=eos, compact=False)(prompts, NEW)
    np.testing.assert_array_equal(plain.tokens, out.tokens)
    np.testing.assert_allclose(plain.logprobs, out.logprobs, atol=1e-5)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# Twelve ids: at T = 1 on the tiny random model about one row in twenty ends per step.
EOS12 = [7, 11, 19, 23, 42, 57, 64, 99, 128, 150, 201, 240]


def test_compacted_sampled_logprobs_equal_training_forward(model):
    prompts = make_prompts(4)
    cfg = SamplingConfig(temperature=1.0)
    sampler = Sampler(model, eos_ids=EOS12)
    out = sampler(prompts, NEW, cfg, group_size=4, seed=5)
    assert len(sampler.last_stats["widths"]) >= 3  # rows left through several buckets
    assert "eos" in out.finish_reason and len(set(out.lengths.tolist())) >= 8
    ref = training_logprobs(model, prompts, out, cfg.temperature)
    err = np.abs(out.logprobs - ref)[out.mask].max()
    assert err <= 1e-4, f"max |sampler - training log-prob| = {err:.2e}"
    assert (out.logprobs[~out.mask] == 0).all()
    assert (out.tokens[~out.mask] == sampler.pad_id).all()


def test_rows_draw_the_same_tokens_whatever_their_batch(spread_checkpoint):
    # The model whose logits depend strongly on the prompt: with tests/models' nearly
    # flat ones, rows of B and C at the same index would draw nearly the same tokens
    # from the same noise, and C would not change the schedule.
    model = load_hf_model(spread_checkpoint[0], dtype="float32")
    a, b, c = make_prompts(3, seed=2)
    cfg = SamplingConfig(temperature=1.0)
    g = 4
    sampler = Sampler(model, eos_ids=EOS12)
    plain = Sampler(model, eos_ids=EOS12, compact=False)
    # Compaction on or off: the same completions for the same seed.
    on = sampler([a, b], NEW, cfg, group_size=g, seed=11)
    on_stats = sampler.last_stats
    off = plain([a, b], NEW, cfg, group_size=g, seed=11)
    assert len(on_stats["widths"]) >= 3 and plain.last_stats["widths"] == [2 * g]
    np.testing.assert_array_equal(on.tokens, off.tokens)
    np.testing.assert_array_equal(on.lengths, off.lengths)
    np.testing.assert_allclose(on.logprobs, off.logprobs, atol=1e-5)
    # Prompt A beside C instead of B: C's rows end at other steps, so the rows of A
    # are compacted at other steps and into other positions; they draw the same.
    other = sampler([a, c], NEW, cfg, group_size=g, seed=11)
    assert other.lengths[g:].tolist() != on.lengths[g:].tolist()
    schedule = [sampler.last_stats[k] for k in ("widths", "steps")]
    assert schedule != [on_stats[k] for k in ("widths", "steps")]
    np.testing.assert_array_equal(other.tokens[:g], on.tokens[:g])
    np.testing.assert_allclose(other.logprobs[:g], on.logprobs[:g], atol=1e-5)
    assert len({tuple(on.ids(i)) for i in range(g)}) == g  # the G samples differ
    # Another seed draws other tokens.
    assert not np.array_equal(sampler([a, b], NEW, cfg, group_size=g, seed=12).tokens, on.tokens)


def test_compiles_are_bounded_by_row_buckets(model):
    # A sampling config and a budget bucket (64) no other test uses, so that every
    # program of these shapes is compiled here.
    cfg = SamplingConfig(temperature=0.85, top_k=33)
    prompts = make_prompts(4, seed=3)
    sampler = Sampler(model, eos_ids=EOS12)
    ladder = row_buckets(16)
    assert ladder == (12, 8, 6, 4, 3, 2)
    before = compile_counts()
    # A short budget: rows stop at 33 tokens, before the batch has shrunk far.
    first = sampler(prompts, 33, cfg, group_size=4, seed=1)
    widths_first = sampler.last_stats["widths"]
    mid = compile_counts()
    delta = {k: mid[k] - before.get(k, 0) for k in mid}
    # The first call builds every row bucket's programs: one decode per width, one
    # gather per smaller width, one prefill.
    assert delta == {"prefill": 1, "decode": len(ladder) + 1, "compact": len(ladder)}
    # Other lengths (another seed, another eos set of the same size, a longer budget
    # in the same bucket) reach buckets the first call never ran: nothing new.
    eos = [i + 1 for i in EOS12]
    built = CompileCounter()
    other = sampler(prompts, 60, cfg, group_size=4, seed=2, eos_ids=eos)
    widths = sampler.last_stats["widths"]
    assert set(widths) - set(widths_first), (widths_first, widths)
    assert first.lengths.tolist() != other.lengths.tolist()
    assert compile_counts() == mid
    assert built.count == 0  # nor any other program (a host-side conversion, say)


def test_sharded_compaction_matches_one_device(tiny_checkpoint, model):
    # Rows split over two data shards: every row bucket is even, the gathered caches
    # are laid out on the mesh, and the tokens are the single device's.
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    sharded = load_hf_model(tiny_checkpoint(VARIANT)[0], dtype="float32", mesh=mesh)
    cfg = SamplingConfig(temperature=1.0)
    prompts = make_prompts(4)
    sampler = Sampler(sharded, eos_ids=EOS12, mesh=mesh)
    out = sampler(prompts, NEW, cfg, group_size=4, seed=5)
    widths = sampler.last_stats["widths"]
    assert len(widths) >= 3 and all(w % 2 == 0 for w in widths)
    ref = Sampler(model, eos_ids=EOS12)(prompts, NEW, cfg, group_size=4, seed=5)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    built = CompileCounter()
    again = sampler(prompts, NEW, cfg, group_size=4, seed=6)
    assert sampler.last_stats["widths"] != widths or again.lengths.tolist() != out.lengths.tolist()
    assert built.count == 0


def test_work_counter_shows_the_finished_rows_steps_saved(spread_checkpoint):
    # Greedy rows ending at spread steps (as in the parity test), sixteen of them.
    model = load_hf_model(spread_checkpoint[0], dtype="float32")
    prompts = make_prompts(16)
    free = Sampler(model, eos_ids=[], compact=False)(prompts, NEW).tokens
    eos = spread_eos(free)
    compacted, plain = Sampler(model, eos_ids=eos), Sampler(model, eos_ids=eos, compact=False)
    out = compacted(prompts, NEW)
    ref = plain(prompts, NEW)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    lengths = out.lengths
    assert len(set(lengths.tolist())) >= 8  # the premise: spread ends
    on, off = compacted.last_stats, plain.last_stats
    assert on["kept_tokens"] == off["kept_tokens"] == lengths.sum()
    # Without compaction every row is computed until the longest ends.
    assert off["decode_row_steps"] == 16 * lengths.max() and off["segments"] == 1
    ratio_on = on["decode_row_steps"] / on["kept_tokens"]
    ratio_off = off["decode_row_steps"] / off["kept_tokens"]
    print(f"decode row-steps / kept tokens: {ratio_on:.3f} compacted, {ratio_off:.3f} not")
    assert lengths.sum() <= on["decode_row_steps"] <= 1.25 * lengths.sum()
    assert ratio_off > 1.25 and ratio_off > ratio_on
