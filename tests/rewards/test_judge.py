"""The rubric judge: judged values equal a closed form of the hand-set checkpoint;
batched == one at a time; prefix-shared == five full prompts; one compile per
bucket; the policy's mesh; generate-then-parse with fallbacks; bf16 by default."""

import dataclasses

import jax
import numpy as np
import pytest

from kardia_jax.compiles import CompileCounter
from kardia_jax.errors import ConfigError
from kardia_jax.rewards import (
    DIMENSIONS,
    JudgeConfig,
    JudgeContext,
    PromptLimits,
    RubricJudge,
    parse_scores,
    scoring,
)
from kardia_jax.sharding import make_mesh

from .conftest import make_judge
from .helpers import marker_reference, numpy_model


def spans(response: str) -> str:
    return (
        "<|understanding_begin|>u<|understanding_end|><|reasoning_begin|>r<|reasoning_end|>"
        f"<|emotion_begin|>sad<|emotion_end|><|response_begin|>{response}<|response_end|>"
    )


CANDIDATES = [
    spans("eeee eeee eeee eeee eee"),  # many marker tokens: a high score
    spans("I am so sorry. Do you want to talk about it?"),
    "no markers at all, judged whole",
    spans("   "),  # whitespace-only: empty
    spans("I am so sorry. Do you want to talk about it?"),  # duplicate of #1
    "",  # empty
    spans("words " * 40),  # over max_candidate_tokens (96): truncated
    spans("xyzzy"),
]


@pytest.fixture(scope="module")
def items(contexts):
    ctx = [contexts[i % 2] for i in range(len(CANDIDATES))]
    ctx[4] = ctx[1]  # the duplicate shares its context too
    return ctx, CANDIDATES


def test_judged_values_equal_the_closed_form(marker_judge, items):
    ctx, cands = items
    result = marker_judge.evaluate(ctx, cands)
    prompts = marker_judge.prompts(ctx, cands)
    tok = marker_judge.tokenizer
    errors = []
    for i, p in enumerate(prompts):
        if p.empty:
            np.testing.assert_array_equal(result.scores[i], 1.0)  # empty_score
            assert np.isnan(result.mass[i]).all()
            continue
        ref = [
            marker_reference(list(p.prefix_ids) + s, tok) for s in marker_judge.builder.suffix_ids
        ]
        errors.append(np.abs(result.scores[i] - [r[0] for r in ref]).max())
        np.testing.assert_allclose(result.scores[i], [r[0] for r in ref], atol=2e-6, rtol=0)
        np.testing.assert_allclose(result.mass[i], [r[1] for r in ref], atol=2e-6, rtol=0)
    print(f"max |judged - closed form| = {max(errors):.2e}")
    judged = result.scores[~result.empty]
    assert np.ptp(judged[:, 0]) > 0.3  # the candidate moves the score...
    assert np.ptp(judged, axis=1).min() > 1e-3  # ...and so does the dimension
    assert result.counts == dict(
        candidates=8,
        judged=5,
        duplicates=1,
        empty=2,
        truncated=1,
        history_dropped=0,
        parse_failures=0,
    )
    assert result.truncated.tolist() == [False] * 6 + [True, False]
    assert result.rubric_id.startswith("test-") and len(result.rubric_id) == 17
    metrics = result.metrics()
    assert metrics["judge/rubric"] == result.rubric_id
    assert metrics["judge/empathy"] == pytest.approx(result.scores[:, 2].mean())


@pytest.mark.parametrize("which", ["marker_judge", "random_judge"])
def test_batched_equals_one_at_a_time(which, items, request):
    judge = request.getfixturevalue(which)
    ctx, cands = items
    batch = judge.score(ctx, cands)
    alone = np.concatenate([judge.score([c], [x]) for c, x in zip(ctx, cands, strict=True)])
    diff = np.abs(batch - alone).max()
    print(f"{which}: max |batched - single| = {diff:.2e}")
    assert diff <= 1e-5
    assert batch.shape == (len(cands), len(DIMENSIONS))


def test_chunks_smaller_than_the_batch_keep_row_order(marker_dir, marker_judge, items):
    small = make_judge(marker_dir, max_batch=2)  # 5 unique prompts: chunks of 2, 2, 1
    np.testing.assert_allclose(small.score(*items), marker_judge.score(*items), atol=1e-6)


@pytest.mark.parametrize("which", ["marker_judge", "random_judge"])
def test_prefix_shared_equals_five_full_prompts(which, items, request):
    judge = request.getfixturevalue(which)
    prompts = judge.prompts(*items)
    shared = judge.evaluate_prompts(prompts, prefix_sharing=True)
    naive = judge.evaluate_prompts(prompts, prefix_sharing=False)
    diff = np.abs(shared.scores - naive.scores).max()
    print(f"{which}: max |shared - naive| = {diff:.2e}")
    assert diff <= 1e-5
    np.testing.assert_allclose(shared.mass, naive.mass, atol=1e-5)
    assert np.ptp(shared.scores[~shared.empty], axis=0).min() > 1e-3  # rows really differ


def test_each_bucket_compiles_once(random_judge, contexts):
    judge = random_judge
    texts = [spans(f"reply number {i} " + "ab" * i) for i in range(7)]
    judge.score([contexts[0]] * 5, texts[:5])  # warm the (8 rows, 512 tokens) bucket
    compiles, cached = CompileCounter(), scoring.score_shared._cache_size()
    judge.score([contexts[1]] * 7, texts)  # 7 rows, other lengths: same bucket
    judge.score([contexts[0]] * 6, texts[1:])
    assert compiles.by_name() == {}
    assert scoring.score_shared._cache_size() == cached


_LOWERINGS = []  # one entry per program lowered (a new program: traced, then compiled)
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _secs, **_kw: (
        _LOWERINGS.append(event)
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration"
        else None
    )
)


def test_warm_up_leaves_nothing_to_compile(random_dir, contexts):
    # A fresh judge, as the GRPO driver builds one: warm_up compiles each length
    # bucket at one batch size; then calls with any number of rows and lengths in
    # two buckets lower no new program (the persistent compilation cache would hide
    # a compile, not a lowering).
    buckets = (256, 512, 768)
    judge = make_judge(random_dir, length_buckets=buckets)
    assert judge.warm_up(rows=8)[0] == 3
    calls = [(rows, words) for rows in (1, 3, 8, 11) for words in (2, 60)]  # 11: two chunks

    def judge_all(j):
        for rows, words in calls:
            j.score([contexts[i % 2] for i in range(rows)], [spans("word " * words)] * rows)

    head = len(judge.builder.head_ids)
    hit = {
        judge.length_bucket(len(p.prefix_ids) - head)
        for words in (2, 60)
        for p in judge.prompts(contexts, [spans("word " * words)] * len(contexts))
    }
    assert hit == {256, 512}  # the calls below span two buckets

    start = len(_LOWERINGS)
    judge_all(judge)
    assert _LOWERINGS[start:] == []
    # The same calls on a judge without warm_up lower programs: the check can fail.
    start = len(_LOWERINGS)
    judge_all(make_judge(random_dir, length_buckets=buckets))
    assert len(_LOWERINGS) > start
    # max_tokens stops at the first bucket that holds it.
    cold = make_judge(random_dir, length_buckets=buckets)
    assert cold.warm_up(rows=2, max_tokens=300)[0] == 2


def test_scores_on_the_policy_mesh_match_one_device(random_dir, random_judge, items):
    mesh = make_mesh({"data": 4, "tensor": 2})
    judge = make_judge(random_dir, mesh=mesh)
    q = judge.params["layers"]["self_attn"]["q_proj"]["kernel"].get_value()
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor", None)  # [L,D,N,H]
    diff = np.abs(judge.score(*items) - random_judge.score(*items)).max()
    print(f"mesh (data 4 x tensor 2) vs one device: {diff:.2e}")
    assert diff <= 1e-5


@pytest.mark.parametrize("forms,on_mesh", [("xla", False), ("tpu", False), ("tpu", True)])
def test_scores_with_xla_and_tpu_kernels_match_the_cpu_forms(
    random_dir, random_judge, items, forms, on_mesh
):
    """The TPU forms run the shared head, each rest and each dimension's suffix
    through splash attention over the cache's filled slots (interpret mode here; in
    shard_map on the mesh); both scoring paths agree with the CPU forms."""
    mesh = make_mesh({"data": 4, "tensor": 2}) if on_mesh else None
    judge = make_judge(random_dir, mesh=mesh, overrides={"kernels": forms})
    assert judge.model_config.kernels == forms
    prompts = random_judge.prompts(*items)
    for sharing in (True, False):
        want = random_judge.evaluate_prompts(prompts, prefix_sharing=sharing).scores
        got = judge.evaluate_prompts(prompts, prefix_sharing=sharing).scores
        diff = np.abs(got - want).max()
        assert diff <= 1e-5, f"{forms}, prefix sharing {sharing}: max diff {diff:.2e}"


def test_layers_are_scanned_unless_the_setting_turns_it_off(random_dir, random_judge, items):
    assert random_judge.model_config.scan_layers
    unrolled = make_judge(random_dir, scan_layers=False)
    assert not unrolled.model_config.scan_layers
    q = random_judge.params["layers"]["self_attn"]["q_proj"]["kernel"].get_value()
    assert q.ndim == 4  # [L, D, N, H]: the layers stacked on a leading axis
    diff = np.abs(unrolled.score(*items) - random_judge.score(*items)).max()
    assert diff <= 1e-5, f"scanned vs unrolled judge: max diff {diff:.2e}"


def test_bf16_is_the_default_and_close_to_float32(random_dir, random_judge, items):
    from .helpers import TEST_RUBRIC

    cfg = JudgeConfig(
        length_buckets=(512,), max_batch=8, limits=PromptLimits(max_candidate_tokens=96)
    )
    judge = RubricJudge.from_pretrained(random_dir, cfg, rubric=TEST_RUBRIC)
    assert judge.model_config.param_dtype == judge.model_config.dtype == "bfloat16"
    diff = np.abs(judge.score(*items) - random_judge.score(*items)).max()
    assert 0 < diff < 0.1


def test_generate_mode_counts_parse_failures_and_falls_back(random_dir, random_judge, items):
    # A random judge writes no "Name: digit" lines: every judged prompt fails to parse.
    expected = random_judge.evaluate(*items)
    judge = make_judge(random_dir, mode="generate", max_new_tokens=8)
    result = judge.evaluate(*items)
    assert result.counts["parse_failures"] == result.counts["judged"] == 5
    np.testing.assert_allclose(result.scores, expected.scores, atol=1e-6)  # "expected" fallback
    judge.config = dataclasses.replace(judge.config, parse_fallback=3.0)  # same programs
    scores = judge.evaluate(*items).scores
    np.testing.assert_array_equal(scores[~result.empty], 3.0)
    np.testing.assert_array_equal(scores[result.empty], 1.0)


NAMES = ("Relevance", "Fluency", "Empathy", "Persona Consistency", "Safety")
PARSE_CASES = [
    ("Relevance: 4\nFluency: 5\nEmpathy: 3\nPersona Consistency: 2\nSafety: 5", [4, 5, 3, 2, 5]),
    (
        "**Relevance**: 4\n**Fluency** = 5\nempathy - 3\nPersona  Consistency: 2/5\nSafety:1",
        [4, 5, 3, 2, 1],
    ),
    (
        "<think>Relevance: 1 maybe</think>\nRelevance: 4\nFluency: 4\nEmpathy: 4\nPersona Consistency: 4\nSafety: 4",
        [4, 4, 4, 4, 4],
    ),
    ("Relevance: 2\nRelevance: 3", [3, None, None, None, None]),  # a correction: the last wins
    ("Relevance: 4.5\nFluency: 45\nEmpathy: 6\nSafety: 0", [None] * 5),  # never one digit 1-5
    ("I cannot rate this.", [None] * 5),
]


@pytest.mark.parametrize("text,expected", PARSE_CASES)
def test_parse_scores(text, expected):
    got = parse_scores(text, NAMES)
    assert [None if np.isnan(x) else int(x) for x in got] == expected


def test_empty_score_none_judges_the_placeholder(marker_dir, contexts):
    judge = make_judge(marker_dir, empty_score=None)
    result = judge.evaluate([contexts[0]] * 2, ["", spans(" ")])
    p = judge.prompts([contexts[0]], [""])[0]
    ref = [
        marker_reference(list(p.prefix_ids) + s, judge.tokenizer)[0]
        for s in judge.builder.suffix_ids
    ]
    np.testing.assert_allclose(result.scores, [ref, ref], atol=2e-6)
    assert result.counts["empty"] == 2 and result.counts["judged"] == 1


def test_training_and_evaluation_judges_are_independent(marker_judge, random_judge, items):
    a, b = marker_judge.evaluate(*items), random_judge.evaluate(*items)
    assert a.judge != b.judge and np.abs(a.scores - b.scores).max() > 0.1
    np.testing.assert_array_equal(marker_judge.score(*items), a.scores)  # no cross-talk


def test_judge_configuration_errors(random_judge):
    with pytest.raises(ConfigError, match="judge mode 'vote'"):
        JudgeConfig(mode="vote")
    with pytest.raises(ConfigError, match="parse_fallback=7"):
        JudgeConfig(parse_fallback=7)
    with pytest.raises(ConfigError, match="unknown judge setting"):
        JudgeConfig.from_mapping({"modee": "expected"})
    cfg = JudgeConfig.from_mapping(
        {"limits": {"max_candidate_tokens": 64}, "length_buckets": [512]}
    )
    assert cfg.limits.max_candidate_tokens == 64 and cfg.length_buckets == (512,)
    small = numpy_model(random_judge.model_config.replace(vocab_size=64))  # < the tokenizer
    with pytest.raises(ConfigError, match="tokenizer has .* tokens, its model only 64"):
        RubricJudge(small, random_judge.tokenizer, cfg)
    ctx = JudgeContext("p" * 600, "s", ())
    with pytest.raises(ConfigError, match="over max_prompt_tokens=512"):
        random_judge.prompts([ctx], ["x"])
