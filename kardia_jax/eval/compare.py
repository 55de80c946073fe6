"""Table 2's rows: several policies (the base model, the SFT policy, the final GRPO
policy) evaluated on the same test turns with the same judge, each by `run_eval` into
WORKDIR/<row>/, and one results.json / results.md / report.html with every row beside
the paper's published ones.

    from kardia_jax.eval.compare import evaluate_rows
    evaluate_rows(config, [("Base", base), ("SFT", "sft/hf"), ("Kardia-R1", "grpo/hf")],
                  "eval_rows", judge_dir="/ckpt/Qwen3-8B")

Resumable like `run_eval`: each row keeps its own completions and judge scores, so a
row already complete is neither generated nor judged again, and then the judge is not
even loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import re
import time
from collections.abc import Callable, Sequence

from ml_collections import ConfigDict

from kardia_jax.checks import writable_dir
from kardia_jax.errors import ConfigError
from kardia_jax.eval import store
from kardia_jax.eval.config import judge_settings
from kardia_jax.eval.run import (
    EvalInputs,
    api_judge,
    judge_identity,
    prepare_eval,
    run_eval,
    write_eval_report,
)
from kardia_jax.eval.table import PAPER_ROWS, PAPER_SOURCE, ROWS_KEY, rows_results_markdown
from kardia_jax.rewards.api_judge import is_api_spec
from kardia_jax.rewards.rubric import DIMENSIONS
from kardia_jax.train.distributed import barrier, is_main


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # as the table shows it ("Base", "SFT", "Kardia-R1")
    model: str  # the policy's Hugging Face dir
    slug: str  # its sub-folder of the workdir


def row_slug(name: str) -> str:
    """A row's folder name: lower case, runs of anything but [a-z0-9_] as one "-"."""
    return re.sub(r"[^a-z0-9_]+", "-", name.strip().lower()).strip("-")


def parse_rows(rows: Sequence[tuple[str, str] | Row]) -> list[Row]:
    """(name, model_dir) pairs as `Row`s: at least one, every name with a model and a
    folder of its own."""
    out: list[Row] = []
    for r in rows:
        name, model = (r.name, r.model) if isinstance(r, Row) else r
        name = str(name).strip()
        slug = row_slug(name)
        if not slug:
            raise ConfigError(f"row {name!r}: a row name needs a letter or digit")
        if not model:
            raise ConfigError(f"row {name!r}: no model dir (give it as NAME=DIR)")
        clash = next((o for o in out if o.slug == slug), None)
        if clash is not None:
            raise ConfigError(
                f"rows {clash.name!r} and {name!r} would share the folder {slug!r}: "
                "give them different names"
            )
        out.append(Row(name, str(model), slug))
    if not out:
        raise ConfigError("no rows to evaluate: give at least one NAME=DIR")
    return out


def _same_turns(rows: list[Row], inputs: list[EvalInputs], config: ConfigDict) -> None:
    """Every row is scored on the same test turns, or their figures are not one table.
    With one data file, limit and seed, only the tokenizers can make them differ: a
    prompt that fits data.max_length with one tokenizer may not with another."""
    ref = [it.id for it in inputs[0].items]
    for row, inp in zip(rows[1:], inputs[1:], strict=True):
        ids = [it.id for it in inp.items]
        if ids == ref:
            continue
        theirs, ours = set(ids), set(ref)
        only = [(i, rows[0].name) for i in ref if i not in theirs][:1]
        only = only or [(i, row.name) for i in ids if i not in ours][:1]
        where = f"; e.g. {only[0][0]} only in {only[0][1]!r}" if only else ""
        raise ConfigError(
            f"rows {rows[0].name!r} and {row.name!r} get different test turns "
            f"({len(ref)} and {len(ids)}{where}): their tokenizers fit different prompts "
            f"into data.max_length={config.data.max_length} (data.tokenizer="
            f"{config.data.tokenizer!r}); set data.tokenizer to one tokenizer for every "
            "row, or raise data.max_length"
        )


def check_rows(
    config: ConfigDict,
    rows: Sequence[tuple[str, str] | Row],
    workdir: str,
    *,
    data_path: str | None = None,
    judge_dir: str | None = None,
    upstream: dict[str, dict] | None = None,
) -> list[EvalInputs]:
    """The rows' preflight: `prepare_eval` for each row (nothing generated or loaded
    beyond configs, tokenizers and tensor headers), and the check that every row gets
    the same test turns. A pipeline checks rows whose policy is not written yet:
    `upstream[name]` holds the `tokenizer` and `model_config` it will have."""
    rows = parse_rows(rows)
    writable_dir(workdir, "workdir")
    if os.path.exists(os.path.join(workdir, store.COMPLETIONS)):
        raise ConfigError(
            f"{workdir}: holds a single policy's evaluation ({store.COMPLETIONS}); "
            "evaluate rows into a new --workdir"
        )
    inputs = [
        prepare_eval(
            config,
            row.model,
            os.path.join(workdir, row.slug),
            data_path,
            judge_dir,
            **(upstream or {}).get(row.name, {}),
        )
        for row in rows
    ]
    _same_turns(rows, inputs, config)
    return inputs


class SharedJudge:
    """The one evaluation judge of every row, built on its first `evaluate`: a rerun
    whose rows are all scored never loads it. `name`, `rubric` and `config` (what
    `judge_identity` reads to key the score cache) are known before it is built, and
    checked against the built judge's."""

    def __init__(self, build: Callable[[], object], *, name: str, rubric, config):
        self._build, self._judge = build, None
        self.name, self.rubric, self.config = name, rubric, config
        self.builds = 0

    def evaluate(self, contexts, completions):
        if self._judge is None:
            self._judge = self._build()
            self.builds += 1
            if judge_identity(self._judge) != judge_identity(self):
                raise RuntimeError(
                    f"the judge built is {judge_identity(self._judge)!r}, but its scores "
                    f"would be cached as {judge_identity(self)!r}"
                )
        return self._judge.evaluate(contexts, completions)


def local_judge(config: ConfigDict, judge_dir: str, mesh, rules) -> SharedJudge:
    """A `RubricJudge` from a local checkpoint dir, loaded when first needed."""
    from kardia_jax.rewards.rubric import load_rubric

    settings = judge_settings(config.judge)
    path = os.path.abspath(judge_dir)  # its name keys the score cache: one spelling

    def build():
        from kardia_jax.rewards import RubricJudge

        return RubricJudge.from_pretrained(
            path, settings, dtype=config.judge.dtype, mesh=mesh, rules=rules
        )

    return SharedJudge(build, name=path, rubric=load_rubric(settings.rubric), config=settings)


def headline(results: dict) -> dict:
    """The figures of one row that the combined results.json repeats."""
    acc, rubric = results["emotion_accuracy"], results.get("rubric") or {}
    scored = bool(rubric.get("scored"))
    return {
        "examples": results["counts"]["examples"],
        "emotion_accuracy": acc["value"],
        "emotion_accuracy_ci95": acc["ci95"],
        "format_failure_rate": results["format_failure_rate"]["value"],
        "rubric": {d: rubric["dimensions"][d]["mean"] for d in DIMENSIONS} if scored else None,
        "generated_this_run": results["counts"].get("generated_this_run", 0),
        "judged_this_run": results["counts"].get("judged_this_run", 0),
    }


def rows_results(
    rows: list[Row],
    results: list[dict],
    *,
    seconds: float | None = None,
    warnings: Sequence[str] = (),
) -> dict:
    """The combined results of a rows workdir: each row's headline figures and its own
    results.json, by a path relative to the workdir so a moved workdir still reads."""
    first = results[0]
    out = {
        ROWS_KEY: [
            {
                "name": row.name,
                "model": r["model"],
                "results": os.path.join(row.slug, store.RESULTS_JSON),
                **headline(r),
            }
            for row, r in zip(rows, results, strict=True)
        ],
        "judge": (first.get("rubric") or {}).get("judge"),
        "data": first["data"],
        "counts": {
            "rows": len(rows),
            "examples": first["counts"]["examples"],
            "dialogues": first["counts"]["dialogues"],
            "generated_this_run": sum(r["counts"].get("generated_this_run", 0) for r in results),
            "judged_this_run": sum(r["counts"].get("judged_this_run", 0) for r in results),
        },
        "paper": {"source": PAPER_SOURCE, "rows": list(PAPER_ROWS)},
        "seconds": None if seconds is None else round(seconds, 1),
        "warnings": list(warnings),  # e.g. the evaluation judge is the training judge
    }
    return out


def write_rows(
    workdir: str,
    rows: list[Row],
    results: list[dict],
    *,
    seconds: float | None = None,
    warnings: Sequence[str] = (),
) -> dict:
    """Writes a rows workdir's results.json (`rows_results`) and results.md, from the
    rows' results; returns the combined results."""
    out = rows_results(rows, results, seconds=seconds, warnings=warnings)
    store.write_json(os.path.join(workdir, store.RESULTS_JSON), out)
    named = [(row.name, r) for row, r in zip(rows, results, strict=True)]
    details = [os.path.join(row.slug, store.RESULTS_MD) for row in rows]
    store.write_text(
        os.path.join(workdir, store.RESULTS_MD),
        rows_results_markdown(named, details, warnings=warnings),
    )
    return out


def evaluate_rows(
    config: ConfigDict,
    rows: Sequence[tuple[str, str] | Row],
    workdir: str,
    *,
    data_path: str | None = None,
    judge_dir: str | None = None,
    judge=None,
    log: Callable[[str], object] = print,
    report: bool = True,
    inputs: list[EvalInputs] | None = None,
    warnings: Sequence[str] = (),
) -> dict:
    """Evaluates each row with `run_eval` into WORKDIR/<slug>/ on the same test turns
    and with one judge (`judge`, else one built from `judge_dir` or config.judge.path,
    else the rubric is not scored), then writes WORKDIR/results.json, results.md and
    (with `report`) report.html; returns the combined results. `inputs`: what
    `check_rows` returned, when the caller ran it already."""
    t0 = time.perf_counter()
    rows = parse_rows(rows)
    if inputs is None:
        inputs = check_rows(config, rows, workdir, data_path=data_path, judge_dir=judge_dir)
    judge_dir, own = inputs[0].judge_dir, None
    if judge is None and is_api_spec(judge_dir):
        # One reply cache for every row, in the rows workdir: a request is keyed by its
        # exact text, so rows never share a reply they should not.
        judge = own = api_judge(config, judge_dir, workdir)
    elif judge is None and judge_dir:
        judge = local_judge(config, judge_dir, inputs[0].mesh, inputs[0].rules)

    results = []
    try:
        for row, inp in zip(rows, inputs, strict=True):
            row_dir = os.path.join(workdir, row.slug)
            log(f"eval: row {row.name}: {inp.model_dir} -> {row_dir}")
            row_config = copy.deepcopy(config)
            row_config.eval.label = row.name
            if hasattr(judge, "api_counts"):
                judge.totals.clear()  # each row's results count that row's requests only
            results.append(
                run_eval(row_config, inp.model_dir, row_dir, judge=judge, report=False, inputs=inp)
            )
            gc.collect()  # this row's policy goes before the next row loads its own
    finally:
        if own is not None:
            own.close()

    seconds = time.perf_counter() - t0
    if is_main():  # one writer; the others wait below until the files are complete
        out = write_rows(workdir, rows, results, seconds=seconds, warnings=warnings)
        if report:
            write_eval_report(config, workdir)
    else:
        out = rows_results(rows, results, seconds=seconds, warnings=warnings)
    barrier("eval: rows written")
    return out
