"""The host side of the sampler: bucketing, padding, stop ids, compaction, and the
results.

`Sampler` turns lists of token ids into the fixed shapes of the compiled
programs in `loop.py`: batch, prompt length and generation budget are each
rounded up to a bucket, so a run compiles at most one prefill and one decode
program per (batch, prompt, budget) bucket, whatever the lengths it sees; with
compaction, one more decode and one gather program per smaller row bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kardia_jax.data.pipeline import bucket_length, pad_left, pow2_bucket
from kardia_jax.errors import ConfigError
from kardia_jax.sampling import loop
from kardia_jax.sampling.methods import SamplingConfig
from kardia_jax.sampling.state import (
    REASONS,
    cache_sharding,
    default_cache_dtype,
)
from kardia_jax.sharding import DEFAULT_RULES, Rules, batch_shards, fetch

_GREEDY = SamplingConfig()
# Powers of two: log2(max/min) + 1 programs at most per axis.
PROMPT_BUCKETS = tuple(2**i for i in range(4, 18))  # 16 .. 131072 tokens
BUDGET_BUCKETS = tuple(2**i for i in range(4, 18))
_STOP_SLOTS = 8  # stop-id arrays are padded to a multiple of this (no recompiles per set)


def row_buckets(width: int, multiple: int = 1) -> tuple[int, ...]:
    """The batch widths a decode of `width` rows compacts into, largest first: the
    sizes 2^k and 3 * 2^(k-1) below `width` that divide over `multiple` data shards.
    Consecutive sizes differ by at most a third, so rows that finished cost at most
    ~1/3 of a segment's row-steps. Never below 2 rows: a batch of one makes XLA:CPU
    copy the whole cache at every step (see `Sampler.prefill`)."""
    sizes = {s for k in range(1, width.bit_length() + 1) for s in (2**k, 3 * 2 ** (k - 1))}
    return tuple(sorted((s for s in sizes if 2 <= s < width and s % multiple == 0), reverse=True))


def _id_array(ids: Sequence[int]) -> np.ndarray:
    ids = sorted({int(i) for i in ids})
    if any(i < 0 for i in ids):
        raise ConfigError(f"stop ids must be >= 0, got {ids}")
    size = _STOP_SLOTS * max(1, -(-len(ids) // _STOP_SLOTS))
    return np.asarray(ids + [-1] * (size - len(ids)), np.int32)


@dataclasses.dataclass(frozen=True)
class Program:
    """A jitted program with its static settings bound (see `Sampler.programs`);
    `lower` compiles it ahead of time."""

    fn: Callable
    static: dict

    def __call__(self, *args):
        return self.fn(*args, **self.static)

    def lower(self, *args):
        return self.fn.lower(*args, **self.static)


@dataclasses.dataclass
class Completions:
    """Sampled completions, one row per (prompt, sample): row i * G + g. Arrays are
    host numpy, cut to `max_new_tokens` columns."""

    tokens: np.ndarray  # [B*G, N] int32; pad_id after a row's end
    logprobs: np.ndarray  # [B*G, N] f32 log-probs at the sampling temperature; 0 after end
    mask: np.ndarray  # [B*G, N] bool: completion tokens (the stop token included)
    lengths: np.ndarray  # [B*G] int32
    finish_reason: list[str]  # per row: "eos", "stop" or "length"
    group_size: int

    def ids(self, row: int) -> list[int]:
        return self.tokens[row, : self.lengths[row]].tolist()

    def row_logprobs(self, row: int) -> list[float]:
        return self.logprobs[row, : self.lengths[row]].tolist()


@dataclasses.dataclass(frozen=True)
class Completion:
    """One completion of `generate`: its token ids, their log-probs, and why it ended."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class Sampler:
    """Generates from a `Transformer` with a KV cache, in two compiled programs.

    `eos_ids` (default: the checkpoint's generation config) end a row with reason
    "eos", `stop_ids` (e.g. `<|response_end|>`) with reason "stop"; an empty
    `eos_ids` never stops early. With a `mesh`, the parameters should already be
    placed on it (`load_hf_model(..., mesh=mesh)`); the cache is sharded by the
    same rules table (batch rows x kv heads).

    `unroll_layers` decodes a scanned model through unrolled layers, from one copy
    of its layer weights made here: a layer scan slices (copies) every layer's
    weights and cache at every step, which costs most where decoding is
    memory-bound (CPU, batch 1).

    `compact` (`__call__` only): when enough rows have finished to fit the next
    smaller row bucket (`row_buckets`), the decode stops, the finished rows go to
    the host and the live ones continue in a state of that bucket, so finished rows
    stop costing decode steps. A batch shape's first call compiles every row
    bucket's programs, so later calls compile nothing whatever their lengths.
    `last_stats` holds the last call's work: `decode_row_steps` (rows computed at
    each step, padding and finished rows included, the first token's included),
    `kept_tokens` (completion tokens returned), `segments` (decode calls), `steps`
    (the step each segment ended at) and `widths` (the row buckets visited).
    """

    def __init__(
        self,
        model,
        *,
        eos_ids: Sequence[int] | None = None,
        stop_ids: Sequence[int] = (),
        pad_id: int | None = None,
        mesh=None,
        rules: Rules = DEFAULT_RULES,
        prompt_buckets: Sequence[int] = PROMPT_BUCKETS,
        budget_buckets: Sequence[int] = BUDGET_BUCKETS,
        cache_dtype: str | None = None,
        unroll_layers: bool = False,
        compact: bool = True,
    ):
        self.unroll_layers = unroll_layers
        self.compact = compact
        self.last_stats: dict = {}
        self._ladders_built: set = set()
        self.update(model)
        self.eos_ids = tuple(self.config.eos_ids if eos_ids is None else eos_ids)
        self.stop_ids = tuple(stop_ids)
        pad = self.config.pad_token_id if pad_id is None else pad_id
        self.pad_id = int(pad if pad is not None else 0)
        self.mesh, self.rules = mesh, rules
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self.budget_buckets = tuple(sorted(budget_buckets))
        cfg = self.config
        self.cache_dtype = cache_dtype or default_cache_dtype(cfg.dtype, cfg.kernels)
        self._batch_multiple = batch_shards(mesh, rules)

    def update(self, model) -> None:
        """Takes `model`'s current weights (e.g. after a GRPO step). The same
        architecture reuses the compiled programs: only the arrays change."""
        if self.unroll_layers and model.config.scan_layers:
            model = unstack_layers(model)
        self.config = model.config
        self.graphdef, self.params = nnx.split(model)

    # ------------------------------------------------------------------ shapes
    def _cache_sharding(self, rows: int, slots: int):
        return cache_sharding(self.mesh, self.rules, self.config, rows, slots)

    def shapes(self, prompts: Sequence[Sequence[int]], max_new_tokens: int):
        """(batch, prompt length, budget) buckets a call compiles for (the cache holds
        batch * group_size rows of prompt + budget slots)."""
        b = pow2_bucket(len(prompts), self._batch_multiple)
        p = bucket_length(
            max(len(x) for x in prompts), self.prompt_buckets, "a prompt of", ConfigError
        )
        n = bucket_length(max_new_tokens, self.budget_buckets, "max_new_tokens of", ConfigError)
        return b, p, n

    def _check(self, prompts, max_new_tokens, group_size):
        if not prompts:
            raise ConfigError("no prompts")
        if max_new_tokens < 1 or group_size < 1:
            raise ConfigError(
                f"max_new_tokens={max_new_tokens}, group_size={group_size}: need >= 1"
            )
        v = self.config.vocab_size
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ConfigError(f"prompt {i} is empty")
            if min(p) < 0 or max(p) >= v:
                raise ConfigError(f"prompt {i} has token ids outside [0, {v})")
        longest = max(map(len, prompts)) + max_new_tokens
        if longest > self.config.max_position_embeddings:
            raise ConfigError(
                f"prompt + max_new_tokens = {longest} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )

    def prefill(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingConfig = _GREEDY,
        *,
        group_size: int = 1,
        seed: int = 0,
        eos_ids: Sequence[int] | None = None,
        stop_ids: Sequence[int] | None = None,
    ):
        """The first compiled program: runs the prompts once, copies each prompt's
        cache to its `group_size` rows and draws their first tokens. Returns the
        `SamplingState` that `decode` continues (with the same `sampling`)."""
        self._check(prompts, max_new_tokens, group_size)
        b, p, n = self.shapes(prompts, max_new_tokens)
        # Left padding: every row ends at column p-1; batch-padding rows get one dummy
        # token and are never decoded.
        ids, mask = pad_left(prompts, p, self.pad_id, b)
        # A single row decodes as two (the second a finished dummy): with a batch of 1
        # XLA:CPU fuses each cache write into two consumers and copies the whole
        # cache at every step; an idle extra row costs next to nothing when decoding.
        group = 2 if b * group_size == 1 else group_size
        valid = np.repeat(np.arange(b) < len(prompts), group)
        valid[len(prompts) * group_size :] = False
        eos = self.eos_ids if eos_ids is None else tuple(eos_ids)
        stop = self.stop_ids if stop_ids is None else tuple(stop_ids)
        prefill, _ = self.programs(b, p, n, sampling, group=group)
        return prefill(
            self.graphdef,
            self.params,
            jnp.asarray(ids),
            jnp.asarray(mask),
            jnp.asarray(valid),
            jnp.asarray(_id_array(eos)),
            jnp.asarray(_id_array(stop)),
            jax.random.key(seed),
            max_new_tokens,
        )

    def decode(
        self,
        state,
        sampling: SamplingConfig = _GREEDY,
        until: int | None = None,
        min_live: int = 0,
    ):
        """The second compiled program: decodes until at most `min_live` rows are
        still running (0: every row has finished), or until `state.step` reaches
        `until` (default: the budget). `state` is donated: use only the returned one."""
        rows, budget = state.tokens.shape
        _, decode = self.programs(rows, state.cache.num_slots - budget, budget, sampling)
        return decode(
            self.graphdef,
            self.params,
            state,
            jnp.int32(budget if until is None else until),
            jnp.int32(min_live),
        )

    def compact_rows(self, state, index: np.ndarray, valid: np.ndarray):
        """The third compiled program: the rows `index` of `state` as a state of
        len(index) rows, those with `valid` False finished padding (`loop.compact`)."""
        budget = state.tokens.shape[1]
        gather = self.compact_program(len(index), state.cache.num_slots - budget, budget)
        # Cast on the host: jnp.asarray(int64 array, int32) compiles a conversion program.
        index, valid = np.asarray(index, np.int32), np.asarray(valid, bool)
        return gather(state, jnp.asarray(index), jnp.asarray(valid))

    def compact_program(self, rows: int, prompt_len: int, budget: int) -> Program:
        """`loop.compact` into `rows` rows of `prompt_len + budget` slots, its cache
        laid out on the mesh for that many rows: `gather(state, index, valid)`."""
        sharding = self._cache_sharding(rows, prompt_len + budget)
        return Program(loop.compact, dict(sharding=sharding))

    def programs(
        self, batch: int, prompt_len: int, budget: int, sampling=_GREEDY, *, group: int = 1
    ) -> tuple[Program, Program]:
        """The two compiled programs of one bucket (`batch` prompts of `prompt_len`
        tokens, each cached on `group` rows of `prompt_len + budget` slots), every static
        setting bound: the one builder of `prefill` and `decode`, for this class and any
        caller that compiles them ahead of time. `prefill(graphdef, params, ids, mask,
        valid, eos, stop, key, max_new)`; `decode(graphdef, params, state, until)`, the
        state donated."""
        slots = prompt_len + budget
        sharding = self._cache_sharding(batch * group, slots)
        prefill = Program(
            loop.prefill,
            dict(
                cfg=sampling,
                group=group,
                budget=budget,
                cache_len=slots,
                pad_id=self.pad_id,
                cache_dtype=self.cache_dtype,
                sharding=sharding,
            ),
        )
        decode = Program(loop.decode, dict(cfg=sampling, pad_id=self.pad_id, sharding=sharding))
        return prefill, decode

    # --------------------------------------------------------------------- API
    def __call__(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingConfig = _GREEDY,
        *,
        group_size: int = 1,
        seed: int = 0,
        eos_ids: Sequence[int] | None = None,
        stop_ids: Sequence[int] | None = None,
    ) -> Completions:
        """Samples `group_size` completions per prompt (one prefill per prompt)."""
        state = self.prefill(
            prompts,
            max_new_tokens,
            sampling,
            group_size=group_size,
            seed=seed,
            eos_ids=eos_ids,
            stop_ids=stop_ids,
        )
        width = state.tokens.shape[0]
        if self.compact and row_buckets(width, self._batch_multiple):
            return self._decode_compacting(
                state, sampling, len(prompts), max_new_tokens, group_size
            )
        state = self.decode(state, sampling)
        out = self.completions(state, len(prompts), max_new_tokens, group_size)
        steps = int(fetch(state.step))  # already computed: no wait
        self.last_stats = dict(
            decode_row_steps=width * steps,
            kept_tokens=int(out.lengths.sum()),
            segments=1,
            steps=[steps],
            widths=[width],
        )
        return out

    def _ladder_key(self, state, sampling):
        """Everything the row buckets' programs are keyed on: the model, the sampling
        config and every shape of the prefilled state (the stop-id arrays' included)."""
        leaves, treedef = jax.tree.flatten(state)
        return (self.graphdef, sampling, treedef, tuple((x.shape, x.dtype) for x in leaves))

    def _build_rest_of_ladder(self, state, sampling) -> None:
        """Compiles the decode and gather programs of the row buckets below `state`'s
        width (those a call ending there did not reach) by running them on its
        finished rows: each decode stops before its first step. Compaction goes one
        bucket at a time, so the buckets a call visited are the ladder's first ones,
        and after this a later call compiles nothing, whichever buckets its lengths
        reach. Run at the end of a call, when only the small final cache is held."""
        for w in row_buckets(state.tokens.shape[0], self._batch_multiple):
            state = self.compact_rows(state, np.zeros(w, np.int32), np.zeros(w, bool))
            state = self.decode(state, sampling, until=0)

    def _decode_compacting(self, state, sampling, num_prompts, max_new_tokens, group_size):
        """`__call__`'s decode with compaction (see the class docstring): decode
        segments, each ending when the live rows fit the next row bucket; then the
        finished rows' results are copied to the host, and the live rows gathered into
        that bucket. The results come back in the call's row order."""
        ladder_key = self._ladder_key(state, sampling)
        n_rows = num_prompts * group_size
        width, budget = state.tokens.shape
        tokens = np.full((n_rows, budget), self.pad_id, np.int32)
        logprobs = np.zeros((n_rows, budget), np.float32)
        lengths = np.zeros(n_rows, np.int32)
        reason = np.zeros(n_rows, np.int32)
        # Output row of each state row; -1 for padding and rows already written.
        slot = np.where(np.arange(width) < n_rows, np.arange(width), -1)
        row_steps, step, widths, steps = width, 1, [width], []  # prefill drew step 0
        while True:
            ladder = row_buckets(width, self._batch_multiple)
            state = self.decode(state, sampling, min_live=ladder[0] if ladder else 0)
            # The segment's one sync: which rows finished, and their results.
            s_tokens, s_logprobs, s_lengths, s_reason, done, s_step = fetch(
                (state.tokens, state.logprobs, state.lengths, state.reason, state.done, state.step)
            )
            row_steps += width * (int(s_step) - step)
            step = int(s_step)
            steps.append(step)
            out = done & (slot >= 0)
            tokens[slot[out]], logprobs[slot[out]] = s_tokens[out], s_logprobs[out]
            lengths[slot[out]], reason[slot[out]] = s_lengths[out], s_reason[out]
            slot = np.where(done, -1, slot)
            live = np.flatnonzero(~done)
            if live.size == 0:
                break
            # One bucket down at a time (one gather program per bucket); several steps
            # only when many rows finished at the same step.
            while ladder and live.size <= ladder[0]:
                w = ladder[0]
                index = np.concatenate([live, np.full(w - live.size, live[0])])
                valid = np.arange(w) < live.size
                state = self.compact_rows(state, index, valid)
                slot = np.where(valid, slot[index], -1)
                live, width = np.arange(live.size), w
                widths.append(w)
                ladder = ladder[1:]
        if ladder_key not in self._ladders_built:
            self._build_rest_of_ladder(state, sampling)
            self._ladders_built.add(ladder_key)
        self.last_stats = dict(
            decode_row_steps=row_steps,
            kept_tokens=int(lengths.sum()),
            segments=len(steps),
            steps=steps,
            widths=widths,
        )
        return self._results(tokens, logprobs, lengths, reason, max_new_tokens, group_size)

    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingConfig = _GREEDY,
        *,
        chunk: int = 4,
        seed: int = 0,
        eos_ids: Sequence[int] | None = None,
        stop_ids: Sequence[int] | None = None,
    ) -> Iterator[list[list[int]]]:
        """Yields each prompt's new tokens every `chunk` steps (same programs as
        `__call__`: the step limit is a traced argument), until all have finished."""
        state = self.prefill(
            prompts, max_new_tokens, sampling, seed=seed, eos_ids=eos_ids, stop_ids=stop_ids
        )
        rows = len(prompts)
        shown = np.zeros(rows, np.int64)
        while True:
            lengths = np.asarray(state.lengths)[:rows]
            tokens = np.asarray(state.tokens)[:rows]
            yield [tokens[i, shown[i] : lengths[i]].tolist() for i in range(rows)]
            shown = lengths
            if bool(np.all(np.asarray(state.done)[:rows])):
                return
            state = self.decode(state, sampling, until=int(state.step) + chunk)

    def completions(self, state, num_prompts, max_new_tokens, group_size=1) -> Completions:
        """Fetches a finished state's results to the host."""
        rows = num_prompts * group_size
        # On a pod the rows are spread over every host's devices: each host gets all.
        tokens, logprobs, lengths, reason = fetch(
            (state.tokens, state.logprobs, state.lengths, state.reason)
        )
        return self._results(
            tokens[:rows], logprobs[:rows], lengths[:rows], reason[:rows], max_new_tokens,
            group_size,
        )  # fmt: skip

    @staticmethod
    def _results(tokens, logprobs, lengths, reason, max_new_tokens, group_size) -> Completions:
        cut = (slice(None), slice(0, max_new_tokens))
        return Completions(
            tokens=tokens[cut],
            logprobs=logprobs[cut],
            mask=np.arange(max_new_tokens)[None, :] < lengths[:, None],
            lengths=lengths,
            finish_reason=[REASONS[int(r)] for r in reason],
            group_size=group_size,
        )


def generate(
    model,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_ids: Sequence[int] | None = None,
    *,
    min_p: float = 0.0,
    stop_ids: Sequence[int] = (),
) -> list[Completion]:
    """One call: per prompt, the completion ids and their log-probs (at `temperature`,
    before top-k / top-p filtering). `eos_ids=None` uses the checkpoint's generation
    config; `[]` never stops early. Stop tokens are included in the completion."""
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    out = Sampler(model, eos_ids=eos_ids, stop_ids=stop_ids)(
        prompt_ids, max_new_tokens, sampling, seed=seed
    )
    return [
        Completion(out.ids(i), out.row_logprobs(i), out.finish_reason[i])
        for i in range(len(prompt_ids))
    ]


def unstack_layers(model):
    """The unrolled twin of a scanned `Transformer`: layer i's weights are row i of
    the stacked ones (copied once; the model itself is untouched)."""
    from kardia_jax.models import abstract_model

    cfg = model.config.replace(scan_layers=False)
    graphdef = nnx.graphdef(abstract_model(cfg))
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        if path[0] != "layers":
            flat.append((path, var))
            continue
        meta = dict(var.get_metadata())
        if meta.get("out_sharding"):
            meta["out_sharding"] = tuple(meta["out_sharding"])[1:]  # drop "layers"
        stacked = var.get_value()
        for i in range(cfg.num_layers):
            flat.append((("layers", i, *path[1:]), type(var)(stacked[i], **meta)))
    unrolled = nnx.merge(graphdef, nnx.from_flat_state(flat))
    # A fresh graphdef drops the placement.
    unrolled.constrain_activations(model.activation_sharding, model.head_axes)
    return unrolled
