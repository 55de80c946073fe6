"""`RubricJudge`: a judge checkpoint (any `load_hf_model` family, its own tokenizer,
bf16 by default, placed on the policy's mesh) that scores candidates on the five
rubric dimensions, 1-5 each.

Host side of the judge: build prompts, judge identical prompts once, sort by length,
pad to static (batch, length) buckets and call the compiled programs of
`scoring.py` (or, in "generate" mode, the sampler). Training and evaluation judges
are simply two instances (two checkpoints, possibly two rubrics).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from kardia_jax.data.pipeline import bucket_length, pad_left, pow2_bucket
from kardia_jax.data.spans import SPAN_NAMES, marker
from kardia_jax.errors import ConfigError, DataError
from kardia_jax.rewards import scoring
from kardia_jax.rewards.prompt import JudgeContext, JudgePrompt, PromptBuilder, PromptLimits
from kardia_jax.rewards.rubric import DIMENSIONS, Rubric, load_rubric
from kardia_jax.sampling.sampler import Program
from kardia_jax.sampling.state import cache_sharding, default_cache_dtype
from kardia_jax.sharding import DEFAULT_RULES, Rules, batch_shards, fetch, logical_to_spec

MODES = ("expected", "generate")
_SUFFIX_MULTIPLE = 8


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """Run settings of one judge (see `from_mapping` for ConfigDict sections)."""

    rubric: str = "v1"  # shipped rubric version, or a path to a rubric file
    show_reasoning: bool = False  # also show the understanding and reasoning spans
    mode: str = "expected"  # "expected": E[score] over tokens 1..5; "generate": decode, parse
    prefix_sharing: bool = True  # prefill (rubric, context, candidate) once for 5 dimensions
    empty_score: float | None = 1.0  # empty replies get this on every dimension; None: judge
    max_batch: int = 32  # candidates per compiled call (rounded to a power of two)
    # Layers as one scanned stack: under FSDP the TPU compiler then gathers one layer's
    # weights at a time; unrolled, it gathers most of them ahead (docs/tpu.md).
    scan_layers: bool = True
    length_buckets: tuple[int, ...] = (256, 512, 768, 1024, 1536, 2048, 3072, 4096)
    limits: PromptLimits = PromptLimits()  # its max_prompt_tokens is max(length_buckets)
    chat_template_kwargs: tuple[tuple[str, object], ...] = (("enable_thinking", False),)
    # generate mode
    max_new_tokens: int = 96
    temperature: float = 0.0
    parse_fallback: str | float = "expected"  # "expected": score failures by E[score]

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"judge mode {self.mode!r}: expected one of {MODES}")
        if not self.length_buckets or list(self.length_buckets) != sorted(self.length_buckets):
            raise ConfigError(f"judge length_buckets must be increasing: {self.length_buckets}")
        if self.max_batch < 1:
            raise ConfigError(f"judge max_batch={self.max_batch}: need >= 1")
        fb = self.parse_fallback
        if not (fb == "expected" or (isinstance(fb, int | float) and 1 <= fb <= 5)):
            raise ConfigError(f"parse_fallback={fb!r}: 'expected' or a score in [1, 5]")

    @classmethod
    def from_mapping(cls, m: Mapping) -> JudgeConfig:
        """From a dict / ConfigDict; `limits` may be a nested mapping."""
        m = dict(m)
        if isinstance(m.get("limits"), Mapping):
            m["limits"] = PromptLimits(**dict(m["limits"]))
        if isinstance(m.get("chat_template_kwargs"), Mapping):
            m["chat_template_kwargs"] = tuple(dict(m["chat_template_kwargs"]).items())
        if "length_buckets" in m:
            m["length_buckets"] = tuple(m["length_buckets"])
        unknown = set(m) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown judge setting(s): {', '.join(sorted(unknown))}")
        return cls(**m)


def judge_section() -> ConfigDict:
    """The judge's run settings as a config section, with `JudgeConfig`'s defaults: the
    one definition behind GRPO's `reward.judge` and evaluation's `judge`."""
    d = JudgeConfig()
    c = ConfigDict()
    c.rubric = d.rubric  # unpublished; ours: shipped rubric version, or a rubric file
    c.show_reasoning = d.show_reasoning  # unpublished; ours: judge sees only the response
    c.mode = d.mode  # ours: E[score] over "1".."5" | "generate" (decode, parse)
    c.max_batch = d.max_batch  # ours: candidates per compiled judge call
    c.scan_layers = d.scan_layers  # ours: the judge's layers scanned (memory under FSDP)
    c.length_buckets = d.length_buckets  # ours: padded judge prompt lengths
    # ours: longer completions are cut before judging
    c.max_candidate_tokens = d.limits.max_candidate_tokens
    return c


def judge_config_from_section(section: Mapping, where: str) -> JudgeConfig:
    """A `judge_section()` (as overridden) -> JudgeConfig; a bad or unknown setting is
    one line naming the section `where` it is."""
    settings = dict(section or {})
    limit = settings.pop("max_candidate_tokens", None)
    if limit is not None:
        settings["limits"] = {"max_candidate_tokens": int(limit)}
    try:
        return JudgeConfig.from_mapping(settings)
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None


@dataclasses.dataclass
class JudgeResult:
    """Scores of N candidates, with what is needed to trust and reproduce them."""

    scores: np.ndarray  # [N, 5] f32 in [1, 5], columns in DIMENSIONS order
    mass: np.ndarray  # [N, 5] probability the judge put on "1".."5" (NaN: not measured)
    empty: np.ndarray  # [N] bool: nothing to judge, scored `empty_score`
    truncated: np.ndarray  # [N] bool: candidate cut to max_candidate_tokens
    rubric_id: str  # rubric version + hash of its text
    judge: str  # which checkpoint
    counts: dict[str, int]

    def metrics(self, prefix: str = "judge/") -> dict[str, float | str]:
        out: dict[str, float | str] = {f"{prefix}rubric": self.rubric_id}
        for j, name in enumerate(DIMENSIONS):
            out[f"{prefix}{name}"] = float(np.mean(self.scores[:, j])) if len(self.scores) else 0.0
        measured = self.mass[~np.isnan(self.mass)]
        if measured.size:
            out[f"{prefix}score_token_mass"] = float(np.mean(measured))
        out.update({f"{prefix}{k}": float(v) for k, v in self.counts.items()})
        return out


class RubricJudge:
    """Scores (context, completion) pairs on the five rubric dimensions.

    `model` is a `Transformer` whose parameters are already where they should be
    (`load_hf_model(path, mesh=mesh)` places them on the policy's mesh by `rules`);
    `tokenizer` is the judge's own.
    """

    def __init__(
        self,
        model,
        tokenizer,
        config: JudgeConfig = JudgeConfig(),
        *,
        rubric: Rubric | None = None,
        mesh=None,
        rules: Rules = DEFAULT_RULES,
        name: str = "",
    ):
        self.config = config
        self.rubric = rubric or load_rubric(config.rubric)
        self.model_config = model.config
        self.graphdef, self.params = nnx.split(model)
        self.tokenizer = tokenizer
        self.mesh, self.rules, self.name = mesh, rules, name
        self.builder = _prompt_builder(tokenizer, model.config, self.rubric, config)
        s = max(map(len, self.builder.suffix_ids))
        s = -(-s // _SUFFIX_MULTIPLE) * _SUFFIX_MULTIPLE
        self._suffix_ids = np.zeros((len(DIMENSIONS), s), np.int32)
        for j, ids in enumerate(self.builder.suffix_ids):
            self._suffix_ids[j, : len(ids)] = ids
        self._suffix_last = np.asarray([len(x) - 1 for x in self.builder.suffix_ids], np.int32)
        self._score_ids = np.asarray(self.builder.score_ids, np.int32)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self._batch_multiple = batch_shards(mesh, rules)
        self._sampler = None
        self._fixed_batch = 0  # set by `warm_up`: every call pads to this many rows
        self.totals: Counter = Counter()  # counts summed over every call (for run logs)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: JudgeConfig = JudgeConfig(),
        *,
        dtype: str = "bfloat16",
        mesh=None,
        rules: Rules = DEFAULT_RULES,
        tokenizer=None,
        rubric: Rubric | None = None,
        **model_overrides,
    ) -> RubricJudge:
        """A judge from a Hugging Face checkpoint dir and its tokenizer (or
        `tokenizer`, an object or a tokenizer dir). `rubric` overrides the config's
        rubric name with a loaded one. Never runs remote code."""
        from kardia_jax.models import load_hf_model

        path = os.fspath(path)
        model_overrides.setdefault("scan_layers", config.scan_layers)
        model = load_hf_model(path, dtype=dtype, mesh=mesh, rules=rules, **model_overrides)
        if tokenizer is None or isinstance(tokenizer, str | os.PathLike):
            tokenizer = _load_tokenizer(os.fspath(tokenizer or path))
        return cls(model, tokenizer, config, rubric=rubric, mesh=mesh, rules=rules, name=path)

    @classmethod
    def check(
        cls,
        path: str | os.PathLike,
        config: JudgeConfig = JudgeConfig(),
        *,
        dtype: str = "bfloat16",
        contexts: Iterable[JudgeContext] = (),
    ) -> None:
        """What `from_pretrained` and the first scoring call would refuse, without
        reading any weights: config.json and the tensor headers, the tokenizer, the
        rubric, and prompts for the first `PREFLIGHT_CONTEXTS` of `contexts` rendered
        through the chat template (a run's preflight)."""
        from kardia_jax.models import check_hf_checkpoint

        path = os.fspath(path)
        model_config = check_hf_checkpoint(path, dtype=dtype)
        builder = _prompt_builder(
            _load_tokenizer(path), model_config, load_rubric(config.rubric), config
        )
        for context in itertools.islice(contexts, PREFLIGHT_CONTEXTS):
            builder.build(context, PREFLIGHT_COMPLETION)

    # ------------------------------------------------------------------ prompts
    def prompts(
        self, contexts: Sequence[JudgeContext], completions: Sequence[str]
    ) -> list[JudgePrompt]:
        if len(contexts) != len(completions):
            raise DataError(f"{len(contexts)} contexts but {len(completions)} completions")
        return [self.builder.build(c, x) for c, x in zip(contexts, completions, strict=True)]

    # ------------------------------------------------------------------ scoring
    def score(self, contexts: Sequence[JudgeContext], completions: Sequence[str]) -> np.ndarray:
        """[N, 5] scores in [1, 5] (columns: DIMENSIONS)."""
        return self.evaluate(contexts, completions).scores

    def evaluate(self, contexts: Sequence[JudgeContext], completions: Sequence[str]) -> JudgeResult:
        return self.evaluate_prompts(self.prompts(contexts, completions))

    def evaluate_prompts(
        self, prompts: Sequence[JudgePrompt], *, prefix_sharing: bool | None = None
    ) -> JudgeResult:
        cfg = self.config
        n = len(prompts)
        scores = np.zeros((n, len(DIMENSIONS)), np.float32)
        mass = np.full((n, len(DIMENSIONS)), np.nan, np.float32)
        empty = np.asarray([p.empty for p in prompts], bool)
        skip = empty if cfg.empty_score is not None else np.zeros(n, bool)
        scores[skip] = cfg.empty_score if cfg.empty_score is not None else 0.0
        # Identical prompts (same context, same neutralised candidate) are judged once.
        unique: dict[tuple[int, ...], int] = {}
        owner = np.full(n, -1)
        for i, p in enumerate(prompts):
            if not skip[i]:
                owner[i] = unique.setdefault(p.prefix_ids, len(unique))
        rows = list(unique)
        counts = Counter(
            candidates=n,
            judged=len(rows),
            duplicates=int((~skip).sum()) - len(rows),
            empty=int(empty.sum()),
            truncated=sum(p.truncated for p in prompts),
            history_dropped=sum(p.history_dropped > 0 for p in prompts),
            parse_failures=0,
        )
        if rows:
            if cfg.mode == "generate":
                from kardia_jax.rewards.generate import generate_scores

                u_scores, u_mass, failures = generate_scores(self, rows)
                counts["parse_failures"] = failures
            else:
                sharing = cfg.prefix_sharing if prefix_sharing is None else prefix_sharing
                u_scores, u_mass = self.score_prefixes(rows, prefix_sharing=sharing)
            judged = owner >= 0
            scores[judged] = u_scores[owner[judged]]
            mass[judged] = u_mass[owner[judged]]
        self.totals.update(counts)
        return JudgeResult(
            scores=scores,
            mass=mass,
            empty=empty,
            truncated=np.asarray([p.truncated for p in prompts], bool),
            rubric_id=self.rubric.id,
            judge=self.name,
            counts=dict(counts),
        )

    def score_prefixes(
        self, prefixes: Sequence[Sequence[int]], *, prefix_sharing: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected scores [U, 5] and score-token mass [U, 5] of prompt prefixes, in
        bucketed batches (longest-similar prompts together, less padding)."""
        u = len(prefixes)
        scores = np.zeros((u, len(DIMENSIONS)), np.float32)
        mass = np.zeros((u, len(DIMENSIONS)), np.float32)
        order = sorted(range(u), key=lambda i: len(prefixes[i]))
        step = self._fixed_batch or self.batch_bucket(self.config.max_batch)
        fn = self._shared if prefix_sharing else self._naive
        # Every chunk is dispatched before any result is fetched: the host pads the
        # next chunk while the device runs the last one.
        chunks = [order[lo : lo + step] for lo in range(0, u, step)]
        outputs = [fn([prefixes[i] for i in idx]) for idx in chunks]
        for idx, (s, m) in zip(chunks, fetch(outputs), strict=True):
            scores[idx], mass[idx] = s[: len(idx)], m[: len(idx)]
        return scores, mass

    def warm_up(self, rows: int, max_tokens: int | None = None) -> tuple[int, float]:
        """Compiles the scoring program ahead of time for every length bucket up to
        the one holding `max_tokens` (context + candidate, all if None), at one batch
        size, so that a training loop judging up to `rows` candidates per call
        compiles nothing after its first step. Returns (programs, seconds).

        Without it each length bucket compiles the first time a batch needs it
        (mid-training, at whichever step first needs it), and a call with
        fewer unique candidates (identical completions are judged once) would pick
        a smaller batch bucket and compile again; after it every call pads to the
        same batch. Compile only (`lower().compile()`): nothing runs. Expected mode
        only; generate mode compiles through its sampler.
        """
        if self.config.mode != "expected":
            return 0, 0.0
        t0 = time.perf_counter()
        self._fixed_batch = self.warm_batch(rows)
        head = list(self.builder.head_ids)
        buckets = self.config.length_buckets
        if max_tokens is not None:
            top = self.length_bucket(min(max_tokens, buckets[-1]))
            buckets = [b for b in buckets if b <= top]
        n = 0
        for length in buckets:
            if self.config.prefix_sharing:
                self._shared([head + [self.pad_id] * length], compile_only=True)
            else:
                suffix = max(map(len, self.builder.suffix_ids))
                if length < suffix + 1:
                    continue
                self._naive([[self.pad_id] * (length - suffix)], compile_only=True)
            n += 1
        return n, time.perf_counter() - t0

    # ------------------------------------------------------------------ buckets
    def warm_batch(self, rows: int) -> int:
        """The batch every call pads to after `warm_up(rows)`."""
        return min(self.batch_bucket(rows), self.batch_bucket(self.config.max_batch))

    def batch_bucket(self, n: int) -> int:
        return pow2_bucket(n, self._batch_multiple)

    def length_bucket(self, n: int) -> int:
        return bucket_length(n, self.config.length_buckets, "a judge prompt of", ConfigError)

    def _input_sharding(self, shape):
        if self.mesh is None:
            return None
        spec = logical_to_spec(("batch", "length"), self.rules, self.mesh, shape, "judge input")
        return jax.sharding.NamedSharding(self.mesh, spec)

    def scoring_program(self, chunk, batch: int | None = None) -> tuple[Program, tuple]:
        """The shared-prefix scoring program of `chunk` (prompt prefixes, each starting
        with the rubric head) at its (batch, length) bucket, every static setting bound,
        and its host arguments after (graphdef, params): the one builder behind the
        scoring calls, `warm_up` and compile-check. `batch` overrides the batch bucket."""
        head = self.builder.head_ids
        c = len(head)
        if any(tuple(x[:c]) != head or len(x) == c for x in chunk):
            raise ConfigError("prompt prefixes must start with this judge's rubric head")
        b = batch or self._fixed_batch or self.batch_bucket(len(chunk))
        p = self.length_bucket(max(len(x) - c for x in chunk))
        ids, mask = pad_left([x[c:] for x in chunk], p, self.pad_id, b)
        mc = self.model_config
        slots = c + p + self._suffix_ids.shape[1]
        program = Program(
            scoring.score_shared,
            dict(
                cache_dtype=default_cache_dtype(mc.dtype, mc.kernels),
                sharding=cache_sharding(self.mesh, self.rules, mc, b, slots),
                input_sharding=self._input_sharding((b, p)),
            ),
        )
        head = np.asarray(head, np.int32)
        return program, (head, ids, mask, self._suffix_ids, self._suffix_last, self._score_ids)

    def _shared(self, chunk, compile_only: bool = False):
        program, args = self.scoring_program(chunk)
        if compile_only:
            return program.lower(self.graphdef, self.params, *args).compile()
        return program(self.graphdef, self.params, *(jax.device_put(a) for a in args))

    def _naive(self, chunk, compile_only: bool = False):
        b = self._fixed_batch or self.batch_bucket(len(chunk))
        t = self.length_bucket(max(map(len, chunk)) + max(map(len, self.builder.suffix_ids)))
        padded = [  # [5][2] x [B, T]: each dimension's full prompts, left-padded
            pad_left([list(x) + s for x in chunk], t, self.pad_id, b)
            for s in self.builder.suffix_ids
        ]
        ids, mask = np.stack([p[0] for p in padded]), np.stack([p[1] for p in padded])
        fn = scoring.score_naive.lower if compile_only else scoring.score_naive
        out = fn(
            self.graphdef,
            self.params,
            jax.device_put(ids),
            jax.device_put(mask),
            jax.device_put(self._score_ids),
            input_sharding=self._input_sharding((b, t)),
        )
        return out.compile() if compile_only else out


# Prompts `RubricJudge.check` renders: a template that fails, fails on the first.
PREFLIGHT_CONTEXTS = 16
# A well-formed four-span completion, built into a prompt by `RubricJudge.check`.
PREFLIGHT_COMPLETION = "".join(
    f"{marker(name, 'begin', 'special')}{text}{marker(name, 'end', 'special')}"
    for name, text in zip(
        SPAN_NAMES,
        ("They feel alone.", "Acknowledge it first.", "lonely", "That sounds hard."),
        strict=True,
    )
)


def _prompt_builder(tokenizer, model_config, rubric: Rubric, config: JudgeConfig):
    if len(tokenizer) > model_config.vocab_size:
        raise ConfigError(
            f"judge tokenizer has {len(tokenizer)} tokens, its model only "
            f"{model_config.vocab_size} embeddings"
        )
    limits = dataclasses.replace(config.limits, max_prompt_tokens=config.length_buckets[-1])
    return PromptBuilder(
        tokenizer,
        rubric,
        show_reasoning=config.show_reasoning,
        limits=limits,
        chat_template_kwargs=dict(config.chat_template_kwargs),
    )


def _load_tokenizer(path: str):
    from kardia_jax.data.tokenizer import read_tokenizer

    return read_tokenizer(path, "judge's tokenizer")
