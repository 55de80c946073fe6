"""Evaluation on the test split: generate with our sampler (greedy by default), parse
the four spans, score Emotion Accuracy and the five rubric dimensions from an
evaluation judge, and write results.json / results.md / report.html.

Resumable: completions and judge scores are appended to JSONL files in the workdir
batch by batch (flushed), and an example whose id is already there is never
generated or judged again; a complete completions file means the policy is never
even loaded.

On several processes every one runs the same batches over one mesh of all their
devices (the rows spread over every host) and gets every row back; process 0 alone
writes the workdir's files, and the others read them after a barrier, so the
workdir must be one folder that every host sees.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Sequence

from ml_collections import ConfigDict

from kardia_jax.checks import writable_dir
from kardia_jax.errors import ConfigError, DataError, Preempted
from kardia_jax.eval import store
from kardia_jax.eval.config import api_judge_settings, judge_settings, max_failure_fraction
from kardia_jax.eval.metrics import Record, compute_metrics
from kardia_jax.eval.table import PAPER_ROWS, PAPER_SOURCE, results_markdown
from kardia_jax.rewards.api_judge import is_api_spec
from kardia_jax.rewards.rubric import DIMENSIONS
from kardia_jax.train.distributed import agreed, barrier, is_main, same_everywhere
from kardia_jax.train.preemption import Preemption


@dataclasses.dataclass(frozen=True)
class EvalItem:
    id: str  # "<file>:<line>#<turn>": stable across runs and machines
    example: object  # data.TokenizedExample (prompt only), with its dialogue

    @property
    def dialogue_id(self) -> str:
        return self.id.rsplit("#", 1)[0]


def example_id(example) -> str:
    # The file's base name, not its path: a workdir resumed from another mount or
    # machine must find the same ids.
    return f"{os.path.basename(example.location)}#{example.turn}"


def _subset(items: list[EvalItem], limit: int, seed: int) -> list[EvalItem]:
    """A seeded random subset in file order. Ranked by a hash of the id, so a larger
    limit keeps every example of a smaller one (a run can be extended)."""
    if limit <= 0 or limit >= len(items):
        return items

    def rank(it):
        return hashlib.sha256(f"{seed}:{it.id}".encode()).digest()

    keep = {it.id for it in sorted(items, key=rank)[:limit]}
    return [it for it in items if it.id in keep]


def load_eval_examples(config: ConfigDict, tokenizer, data_path: str | None = None):
    """(items, data path, validation report): every assistant turn of the test
    split as a generation prompt, or `eval.limit` of them."""
    from kardia_jax.data.examples import build_examples
    from kardia_jax.data.reader import sample_path
    from kardia_jax.data.validate import load_dialogues

    path = data_path or config.data.path or str(sample_path("test"))
    dialogues, report = load_dialogues(path, mode=config.data.mode, split=config.data.split)
    examples = build_examples(
        dialogues,
        tokenizer,
        max_length=int(config.data.max_length),
        include_target=False,
        report=report,
    )
    items, seen = [], set()
    for ex in examples:
        item = EvalItem(example_id(ex), ex)
        if item.id in seen:
            raise DataError(f"{path}: two test examples share the id {item.id}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise DataError(f"{path}: no test examples")
    return _subset(items, int(config.eval.limit), int(config.eval.seed)), path, report


def load_eval_tokenizer(config: ConfigDict, model_dir: str):
    """data.tokenizer when set (the training tokenizer), else the policy dir's own
    (an SFT export saves it), else the built-in Qwen2.5 one."""
    if config.data.tokenizer:
        from kardia_jax.data.tokenizer import load_tokenizer

        return load_tokenizer(config.data.tokenizer)
    from kardia_jax.sampling.tokens import load_tokenizer_for

    return load_tokenizer_for(model_dir)


def _mesh(config: ConfigDict):
    import jax

    from kardia_jax.sharding import DEFAULT_RULES

    if not config.sharding:
        if jax.process_count() == 1:
            return None, DEFAULT_RULES
        # "" means the model fits one device; on several processes the rows are then
        # spread over every device of every host, each device holding the whole model.
        config = copy.deepcopy(config)
        config.sharding = "dp"
    from kardia_jax.train.setup import mesh_and_rules

    return mesh_and_rules(config)


def resume_rows(path: str) -> list[dict]:
    """The rows of one of the workdir's append-only files, the same on every process:
    process 0 reads it first, cutting a torn last line, and the others after it."""
    main = is_main()
    with agreed():  # also the barrier: a corrupt file stops every process, not one
        rows = store.resume_jsonl(path) if main else []
    if not main:
        rows = store.read_jsonl(path)  # never edits the file
    same_everywhere(len(rows), f"the rows of {path}")
    return rows


def read_rows(path: str) -> list[dict]:
    """The rows of a file process 0 has been appending to, read by every process once
    it has finished."""
    barrier(f"eval: appended {os.path.basename(path)}")
    rows = store.read_jsonl(path)
    same_everywhere(len(rows), f"the rows of {path}")
    return rows


class _Policy:
    """The policy, its sampler and stop ids: loaded only when something is missing."""

    def __init__(self, config: ConfigDict, model_dir: str, tokenizer, mesh, rules):
        from kardia_jax.models import load_hf_model
        from kardia_jax.sampling import Sampler, SamplingConfig
        from kardia_jax.sampling.tokens import eos_ids_for

        m = config.model
        model = load_hf_model(
            model_dir, m.param_dtype, mesh, compute_dtype=m.compute_dtype, rules=rules
        )
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids_for(model.config, tokenizer)
        pad = tokenizer.pad_token_id
        self.sampler = Sampler(model, eos_ids=self.eos_ids, pad_id=pad or 0, mesh=mesh, rules=rules)
        e = config.eval
        self.sampling = SamplingConfig(
            temperature=float(e.temperature), top_k=int(e.top_k), top_p=float(e.top_p)
        )

    def generate(self, items: Sequence[EvalItem], max_new_tokens: int, seed: int) -> list[dict]:
        prompts = [it.example.prompt_ids.tolist() for it in items]
        out = self.sampler(prompts, max_new_tokens, self.sampling, seed=seed)
        rows = []
        for i, it in enumerate(items):
            ids = out.ids(i)
            if ids and ids[-1] in self.eos_ids:  # the end token is not part of the answer
                ids = ids[:-1]
            rows.append(
                {
                    "id": it.id,
                    "gold": it.example.emotion,
                    # The context shown beside the answer in report.html.
                    "situation": it.example.dialogue.situation,
                    "user": it.example.dialogue.messages[it.example.turn - 1].content,
                    "completion": self.tokenizer.decode(ids, skip_special_tokens=False),
                    "finish_reason": out.finish_reason[i],
                    "tokens": int(out.lengths[i]),
                }
            )
        return rows


def generate_missing(items, path: str, make_policy, config: ConfigDict) -> int:
    """Generates the items whose ids are not in `path` yet, appending each batch as
    it finishes; returns how many were generated."""
    done = {r["id"] for r in resume_rows(path)}  # cuts a torn last line
    todo = [it for it in items if it.id not in done]
    if not todo:
        return 0
    policy = make_policy()
    main = is_main()
    # Similar lengths together: less padding, and few (batch, length) buckets to compile.
    todo.sort(key=lambda it: len(it.example.prompt_ids))
    bs = int(config.eval.batch_size)  # >= 1: checked by prepare_eval
    t0 = time.perf_counter()
    with Preemption() as preempt:
        for k in range(0, len(todo), bs):
            batch = todo[k : k + bs]
            # The seed depends on the batch's first id, not its position, so a resumed
            # run samples what an uninterrupted one would for the same batch.
            seed = int(config.eval.seed) * 1_000_003 + int(
                hashlib.sha256(batch[0].id.encode()).hexdigest()[:7], 16
            )
            rows = policy.generate(batch, int(config.eval.max_new_tokens), seed)  # every host
            if main:
                store.append_jsonl(path, rows)
            n = min(k + bs, len(todo))
            print(
                f"eval: generated {n}/{len(todo)} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            # Every process stops after the same batch, its rows written (and flushed):
            # the rerun generates only the rest.
            if preempt.reached():
                raise Preempted("eval", k // bs + 1, f"wrote {n}/{len(todo)} completions")
    return len(todo)


def judge_identity(judge) -> str:
    """Names the judge and rubric a cached score came from."""
    name = getattr(judge, "name", "") or type(judge).__name__
    rubric = getattr(getattr(judge, "rubric", None), "id", "")
    cfg = getattr(judge, "config", None)
    extra = f"|{cfg.mode}|reasoning={cfg.show_reasoning}" if hasattr(cfg, "mode") else ""
    return f"{name}|{rubric}{extra}"


def judge_missing(items, completions: dict, judge, path: str, batch_size: int) -> int:
    """Scores the completions that have no cached score from this judge yet; returns
    how many got one. A row with a non-finite score (an API judge's failed item) is
    not written, so a rerun asks again. An API judge caches each reply itself as it
    arrives, so a kill mid-batch loses none of them."""
    ident = judge_identity(judge)
    done = {r["id"] for r in resume_rows(path) if r.get("judge") == ident}
    todo = [it for it in items if it.id not in done]
    t0, scored, main = time.perf_counter(), 0, is_main()
    api = hasattr(judge, "api_counts")
    if api and not main:
        # An API judge runs on the host: process 0 alone sends the requests.
        return 0
    with Preemption() as preempt:
        for k in range(0, len(todo), batch_size):
            scored += _judge_batch(judge, todo[k : k + batch_size], completions, path, ident)
            n = min(k + batch_size, len(todo))
            failed = f", {n - scored} without a score" if scored < n else ""
            print(
                f"eval: judged {n}/{len(todo)}{failed} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            # A checkpoint judge runs on every process, which stop after the same
            # batch; an API judge (process 0 alone) caches each reply, so a kill loses
            # nothing there.
            if not api and preempt.reached():
                raise Preempted("eval", k // batch_size + 1, f"wrote {n}/{len(todo)} scores")
    return scored


def _judge_batch(judge, batch, completions: dict, path: str, ident: str) -> int:
    """Scores one batch and appends its finite rows (process 0); returns how many."""
    from kardia_jax.rewards.prompt import JudgeContext

    contexts = [JudgeContext.from_example(it.example) for it in batch]
    result = judge.evaluate(contexts, [completions[it.id]["completion"] for it in batch])
    scores = result.scores
    if getattr(scores, "shape", None) != (len(batch), len(DIMENSIONS)):
        raise DataError(
            f"judge returned scores of shape {getattr(scores, 'shape', None)} for "
            f"{len(batch)} completions; expected ({len(batch)}, {len(DIMENSIONS)})"
        )
    ok = [i for i in range(len(batch)) if all(math.isfinite(x) for x in scores[i])]
    if is_main():
        store.append_jsonl(
            path,
            (
                {"id": batch[i].id, "judge": ident, "scores": [float(x) for x in scores[i]]}
                for i in ok
            ),
        )
    return len(ok)


# An API judge's replies, one JSON row per judged item (eval workdir), keyed by a hash
# of the exact request: a rerun sends nothing it has a reply for.
API_CACHE = "api_judge_cache.jsonl"


def api_judge(config: ConfigDict, spec: str, workdir: str):
    """The `ApiJudge` of `openai:MODEL` with `judge.api` settings, its replies cached
    in WORKDIR/api_judge_cache.jsonl (read now, appended per reply)."""
    from kardia_jax.rewards.api_judge import ApiJudge

    path = os.path.join(workdir, API_CACHE)
    if not is_main():  # never asked there (`judge_missing`): it only names the scores
        return ApiJudge.from_spec(
            spec, api_judge_settings(config.judge), cache_rows=[], record=lambda row: None
        )
    return ApiJudge.from_spec(
        spec,
        api_judge_settings(config.judge),
        cache_rows=store.resume_jsonl(path),
        record=lambda row: store.append_jsonl(path, [row]),
    )


def _check_unscored(config, items, scores: dict, judge, ident: str, workdir: str) -> None:
    """More examples without a score than judge.api.max_failure_fraction is an error:
    means over a large, unchosen remainder would not be the test split's."""
    n = sum(it.id not in scores for it in items)
    if n and n > (limit := max_failure_fraction(config.judge)) * len(items):
        counts = judge.api_counts() if hasattr(judge, "api_counts") else {}
        causes = ", ".join(f"{k} {v}" for k, v in counts.get("retries", {}).items() if v)
        raise DataError(
            f"judge {ident}: {n} of {len(items)} examples got no score, over "
            f"judge.api.max_failure_fraction={limit} (retries: {causes or 'none'}; each "
            f"failure's cause is in {os.path.join(workdir, API_CACHE)}); rerun to retry "
            "them, judged items are not sent again"
        )


def _api_line(results: dict) -> str:
    api = (results.get("rubric") or {}).get("api")
    if not api:
        return ""
    retries = sum(api["retries"].values())
    return (
        f"\nAPI judge: {api['requests']} requests, {retries} retries, {api['failures']} "
        f"failures ({results['rubric']['unscored']} examples without a score), "
        f"{api['cache_hits']} cache hits, {api['tokens']['prompt']} prompt + "
        f"{api['tokens']['completion']} completion tokens.\n"
    )


def _label(model_dir: str) -> str:
    # An SFT / GRPO export is WORKDIR/hf: "hf" alone would name nothing.
    parts = model_dir.rstrip("/").split("/")
    return "/".join(parts[-2:]) if parts[-1] == "hf" and len(parts) > 1 else parts[-1]


@dataclasses.dataclass
class EvalInputs:
    """Everything an evaluation needs before it generates, each piece checked."""

    model_dir: str
    tokenizer: object
    items: list
    data: str
    data_report: object
    mesh: object
    rules: tuple
    judge_dir: str | None
    manifest: dict  # the settings that determine the completions


def prepare_eval(
    config: ConfigDict,
    model_dir: str | None,
    workdir: str,
    data_path: str | None = None,
    judge_dir: str | None = None,
    *,
    tokenizer=None,
    model_config=None,
) -> EvalInputs:
    """The evaluation's preflight: workdir, processes, tokenizer, test data, the
    policy's and judge's configs and tensor headers (not their weights), judge prompts
    rendered through its chat template, the mesh, and the workdir's earlier settings.
    Raises a `KardiaError` naming the setting or file; takes seconds.

    A pipeline checks eval before the policy exists: it passes the `tokenizer` and
    `model_config` the policy will have, and `model_dir` is not read."""
    model_dir = model_dir or config.model.path
    if not model_dir:
        raise ConfigError("model: pass --model DIR (or set model.path)")
    model_dir = os.path.abspath(model_dir)
    writable_dir(workdir, "workdir")
    if tokenizer is None:
        tokenizer = load_eval_tokenizer(config, model_dir)
    if model_config is None:
        from kardia_jax.models import check_hf_checkpoint

        model_config = check_hf_checkpoint(model_dir)
    if len(tokenizer) > model_config.vocab_size:
        raise ConfigError(
            f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the model only "
            f"{model_config.vocab_size} embeddings (data.tokenizer={config.data.tokenizer!r})"
        )
    items, data, data_report = load_eval_examples(config, tokenizer, data_path)
    e = config.eval
    longest = max(len(it.example.prompt_ids) for it in items) + int(e.max_new_tokens)
    if longest > model_config.max_position_embeddings:
        raise ConfigError(
            f"{model_dir}: the longest test prompt + eval.max_new_tokens = {longest} tokens "
            f"exceeds the model's max_position_embeddings={model_config.max_position_embeddings}"
            f"; lower data.max_length={config.data.max_length} (older turns are dropped to fit)"
        )
    for name in ("eval.batch_size", "judge.batch_size"):
        section, field = name.split(".")
        if int(config[section][field]) < 1:
            raise ConfigError(f"{name}={config[section][field]}: need >= 1")
    judge_dir = judge_dir or config.judge.path or None
    if is_api_spec(judge_dir):
        import itertools

        from kardia_jax.rewards.api_judge import ApiJudge
        from kardia_jax.rewards.judge import PREFLIGHT_CONTEXTS
        from kardia_jax.rewards.prompt import JudgeContext

        max_failure_fraction(config.judge)
        contexts = (JudgeContext.from_example(it.example) for it in items)
        # The spec, the key's env var and the prompts: no request is sent.
        ApiJudge.check(
            judge_dir,
            api_judge_settings(config.judge),
            contexts=itertools.islice(contexts, PREFLIGHT_CONTEXTS),
        )
    elif judge_dir:
        from kardia_jax.rewards import RubricJudge
        from kardia_jax.rewards.prompt import JudgeContext

        RubricJudge.check(
            judge_dir,
            judge_settings(config.judge),
            dtype=config.judge.dtype,
            contexts=(JudgeContext.from_example(it.example) for it in items),
        )
    mesh, rules = _mesh(config)
    manifest = {
        "model": model_dir,
        "data": os.path.abspath(data) if os.path.exists(data) else data,
        "tokenizer": config.data.tokenizer or "(model dir)",
        "max_length": int(config.data.max_length),
        "max_new_tokens": int(e.max_new_tokens),
        "temperature": float(e.temperature),
        "top_p": float(e.top_p),
        "top_k": int(e.top_k),
        "seed": int(e.seed),
    }
    store.check_manifest(workdir, manifest, write=False)
    return EvalInputs(
        model_dir, tokenizer, items, data, data_report, mesh, rules, judge_dir, manifest
    )


def run_eval(
    config: ConfigDict,
    model_dir: str | None,
    workdir: str,
    data_path: str | None = None,
    judge_dir: str | None = None,
    *,
    judge=None,
    report: bool = True,
    inputs: EvalInputs | None = None,
) -> dict:
    """Generates, judges and writes results.json, results.md and (with `report`)
    report.html in `workdir`; returns the results. `judge` is an already-built object
    with `evaluate(contexts, completions) -> .scores [N, 5]` (tests, or a caller that
    holds one); else `judge_dir` or `config.judge.path` is loaded (a checkpoint dir, or
    `openai:MODEL`: an `ApiJudge` caching its replies in WORKDIR/api_judge_cache.jsonl);
    else the rubric is reported as not scored. Examples the judge gave no score (an
    API judge's failures) are left out of the rubric means and counted in
    `rubric.unscored`; more than `judge.api.max_failure_fraction` of them is an error."""
    t0 = time.perf_counter()
    inp = inputs or prepare_eval(config, model_dir, workdir, data_path, judge_dir)
    model_dir, tokenizer, items, data = inp.model_dir, inp.tokenizer, inp.items, inp.data
    mesh, rules, judge_dir = inp.mesh, inp.rules, inp.judge_dir
    store.check_manifest(workdir, inp.manifest, write=is_main())
    from kardia_jax.data.validate import data_record, write_data_record

    # Every test turn of the split, and the ones scored (eval.limit may take a subset).
    examples = [it.example for it in inp.items]
    write_data_record(workdir, data_record(inp.data_report, {"scored": examples}))
    e = config.eval

    comp_path = os.path.join(workdir, store.COMPLETIONS)
    generated = generate_missing(
        items,
        comp_path,
        lambda: _Policy(config, model_dir, tokenizer, mesh, rules),
        config,
    )
    completions = {r["id"]: r for r in read_rows(comp_path)}
    missing = [it.id for it in items if it.id not in completions]
    if missing:
        raise DataError(f"{comp_path}: no completion for {missing[0]} after generation")

    judged, ident, scores, own_api_judge = 0, None, {}, None
    if judge is None and is_api_spec(judge_dir):
        judge = own_api_judge = api_judge(config, judge_dir, workdir)
    elif judge is None and judge_dir:
        from kardia_jax.rewards import RubricJudge

        judge = RubricJudge.from_pretrained(
            os.path.abspath(judge_dir),  # its name keys the score cache: one spelling
            judge_settings(config.judge),
            dtype=config.judge.dtype,
            mesh=mesh,
            rules=rules,
        )
    if judge is not None:
        ident = judge_identity(judge)
        score_path = os.path.join(workdir, store.SCORES)
        try:
            judged = judge_missing(
                items, completions, judge, score_path, int(config.judge.batch_size)
            )
        finally:
            if own_api_judge is not None:
                own_api_judge.close()
        scores = {r["id"]: r["scores"] for r in read_rows(score_path) if r["judge"] == ident}
        _check_unscored(config, items, scores, judge, ident, workdir)

    records = [
        Record(
            id=it.id,
            dialogue=it.dialogue_id,
            gold=it.example.emotion,
            completion=completions[it.id]["completion"],
            scores=tuple(scores[it.id]) if it.id in scores else None,
        )
        for it in items
    ]
    boot = dict(resamples=int(e.bootstrap), seed=int(e.seed), unit=e.bootstrap_unit)
    scored = [r for r in records if r.scores is not None]
    if 0 < len(scored) < len(records):
        # Items an API judge failed on (within judge.api.max_failure_fraction) are left
        # out of the rubric means; everything else is over every example.
        results = compute_metrics([dataclasses.replace(r, scores=None) for r in records], **boot)
        results["rubric"] = compute_metrics(scored, **boot)["rubric"]
    else:
        results = compute_metrics(records, **boot)
    finish = [completions[it.id].get("finish_reason") for it in items]
    results["counts"].update(
        generated_this_run=generated,
        judged_this_run=judged,
        hit_token_limit=finish.count("length"),
        examples_skipped=sum(inp.data_report.examples_skipped.values()),
        prompts_truncated=inp.data_report.truncated,
    )
    if judge is None:
        results["rubric"] = {
            "scored": False,
            "reason": "no evaluation judge (pass --judge DIR or set judge.path)",
        }
    else:
        results.setdefault(
            "rubric", {"scored": False, "reason": "the judge gave no example a score"}
        )
        results["rubric"]["judge"] = ident
        results["rubric"]["unscored"] = len(records) - len(scored)
        if hasattr(judge, "api_counts"):
            results["rubric"]["api"] = judge.api_counts()
        if judge_dir and not is_api_spec(judge_dir) and os.path.abspath(judge_dir) == model_dir:
            results["rubric"]["warning"] = "the judge is the policy checkpoint itself"
    results.update(
        label=e.label or _label(model_dir),
        model=model_dir,
        data=data,
        settings=config.to_dict(),
        paper={"source": PAPER_SOURCE, "rows": list(PAPER_ROWS)},
        seconds=round(time.perf_counter() - t0, 1),
    )
    if is_main():
        store.write_json(os.path.join(workdir, store.RESULTS_JSON), results)
        store.write_text(
            os.path.join(workdir, store.RESULTS_MD), results_markdown(results) + _api_line(results)
        )
        if report:
            write_eval_report(config, workdir)
    barrier("eval: results written")  # no process returns before they are complete
    return results


def write_eval_report(config: ConfigDict, workdir: str) -> None:
    """WORKDIR/report.html of an eval workdir (one policy's or rows'), with the
    training curves of config.report's SFT / GRPO folders."""
    from kardia_jax.eval.report import write_report

    write_report(
        os.path.join(workdir, store.REPORT_HTML),
        workdir,
        run_dirs={"sft": config.report.sft, "grpo": config.report.grpo},
        samples=int(config.eval.samples_in_report),
        seed=int(config.eval.seed),
    )
