"""Runs the stages in order, each into its own folder of the workdir, and records a
stage as done only once its outputs are complete. A rerun skips done stages and
re-enters the interrupted one, whose own checkpoints (SFT, GRPO) or append-only
files (eval) make it resume rather than restart.

    WORKDIR/split/     easy.jsonl, hard.jsonl, difficulty.json (with split.enabled)
    WORKDIR/sft/       data.json, SFT checkpoints, logs, hf/ (the SFT policy)
    WORKDIR/grpo/      data.json, GRPO checkpoints, logs, rollout ledger, hf/ (the
                       best checkpoint: the final policy), last/hf/
    WORKDIR/eval/      one folder per Table 2 row (Base, SFT, Kardia-R1: completions,
                       scores, data.json), results.json, results.md
    WORKDIR/report.html
    WORKDIR/pipeline/  one <stage>.json per finished stage (its summary)

On several processes (a pod) every process runs every stage over one mesh of all the
devices, and the workdir is one folder they all see. Process 0 alone writes each
shared file; the processes agree at the preflight and at the end of each stage, so
an error that any of them meets there stops them all with its message
(kardia_jax/train/distributed.py: `agreed`, and what happens to an error inside a
stage).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from kardia_jax.checks import stage as check_stage
from kardia_jax.checks import writable_dir
from kardia_jax.errors import ConfigError
from kardia_jax.eval.compare import check_rows, evaluate_rows
from kardia_jax.eval.run import load_eval_tokenizer
from kardia_jax.host import release_freed_memory
from kardia_jax.jsonio import write_json
from kardia_jax.models import check_hf_checkpoint, gemma3_270m_checkpoint, smollm2_checkpoint
from kardia_jax.rl.difficulty import EASY_FILE, HARD_FILE, SIGNALS
from kardia_jax.rl.grpo import prepare_grpo, run_grpo
from kardia_jax.train.distributed import agreed, gather, is_main
from kardia_jax.train.sft import prepare_sft, run_sft

STAGES = ("validate", "split", "sft", "grpo", "eval", "report")
API_PREFIX = "openai:"  # an evaluation judge served over the OpenAI chat-completions API
# Names users type for the real models that pip packages ship as GGUF files, imported
# once and cached (kardia_jax/models/gguf.py): name -> the function that returns the dir.
NAMED_CHECKPOINTS = {"smollm2": smollm2_checkpoint, "gemma3-270m": gemma3_270m_checkpoint}


def resolve_checkpoint(spec: str, field: str) -> str | None:
    """ "" -> None, a name of NAMED_CHECKPOINTS -> its imported dir, else an existing HF
    dir."""
    if not spec:
        return None
    if spec in NAMED_CHECKPOINTS:
        return str(NAMED_CHECKPOINTS[spec]())
    if not (Path(spec) / "config.json").is_file():
        raise ConfigError(f"{field}={spec!r}: not a Hugging Face checkpoint dir (no config.json)")
    return spec


class Pipeline:
    def __init__(self, config: ConfigDict, workdir: str, log: Callable[[str], None] = print):
        self.c = config
        self.workdir = workdir
        self.log = log
        self.main = is_main()
        self.marks = os.path.join(workdir, "pipeline")
        self.stages: tuple[str, ...] = STAGES

    # -- bookkeeping -------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def done(self, stage: str) -> dict | None:
        try:
            with open(os.path.join(self.marks, f"{stage}.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None  # a torn marker: the stage is rerun (and resumes)

    def mark(self, stage: str, summary: dict) -> None:
        if not self.main:
            return
        os.makedirs(self.marks, exist_ok=True)
        write_json(os.path.join(self.marks, f"{stage}.json"), summary, indent=1)

    # -- settings shared by the stages -------------------------------------------
    def policy(self) -> str | None:
        return resolve_checkpoint(self.c.policy, "policy")

    def judge(self, for_eval: bool = False) -> str | None:
        if for_eval and self.c.eval_judge:
            if self.c.eval_judge.startswith(API_PREFIX):  # an endpoint, not a dir
                return self.c.eval_judge
            return resolve_checkpoint(self.c.eval_judge, "eval_judge")
        return resolve_checkpoint(self.c.judge, "judge")

    def judge_warning(self) -> str | None:
        """Said loudly when the evaluation judge is the training judge."""
        train, ev = self.judge(), self.judge(for_eval=True)
        if not ev or not train:
            return None
        if os.path.abspath(ev) != os.path.abspath(train):
            return None
        return (
            f"the evaluation judge is the training judge ({ev}): the policy is graded by "
            "the judge it was trained to please, and rubric scores overstate it; set "
            "eval_judge to another checkpoint or openai:MODEL (the paper: GPT-5-mini)"
        )

    def tokenizer(self) -> str:
        return self.c.tokenizer or self.policy() or ""

    def data(self, stage: str) -> str:
        """A stage's data source: the curriculum's easy (SFT) or hard (GRPO) file of the
        train split when it ran, else the source itself (each stage reads its split)."""
        split = self.done("split")
        if split and not split.get("skipped") and stage in ("sft", "grpo"):
            name = EASY_FILE if stage == "sft" else HARD_FILE
            return self.path("split", name) + ":train"
        return self.c.data_path

    def read_splits(self) -> dict:
        """Both splits of the source, validated, with the profiles they share (an
        error in strict mode)."""
        from kardia_jax.data.splits import check_profile_overlap
        from kardia_jax.data.validate import load_dialogues

        base, mode = self.c.data_path or "sample", self.c.sft.data.mode
        summary, dialogues = {}, {}
        for split in ("train", "test"):
            dialogues[split], report = load_dialogues(base, mode=mode, split=split)
            summary[split] = {
                "files": report.files,
                "dialogues": report.dialogues,
                "profiles": len({d.profile_key for d in dialogues[split]}),
                "skipped": dict(report.skipped),
            }
        summary["overlap"] = check_profile_overlap(
            dialogues["train"], dialogues["test"], mode, base
        )
        return summary

    # -- stages ------------------------------------------------------------------
    def validate(self) -> dict:
        summary = self.read_splits()
        for split in ("train", "test"):
            v = summary[split]
            self.log(
                f"  {split}: {v['dialogues']} dialogues, {v['profiles']} profiles, "
                f"{sum(v['skipped'].values())} skipped ({', '.join(v['files'])})"
            )
        shared = summary["overlap"]["shared_profiles"]
        self.log(f"  profiles in both splits: {shared}" + ("  <-- WARNING" if shared else ""))
        return summary

    def split(self) -> dict:
        if not self.c.split.enabled:
            return {"skipped": True}
        s = self.c.split
        if s.signal == "reward":
            from kardia_jax.rl.difficulty import DifficultySettings, split_difficulty

            return split_difficulty(
                self.policy(),
                self.c.data_path or "sample",
                self.path("split"),
                DifficultySettings(
                    samples=s.samples, threshold=s.threshold, max_new_tokens=s.max_new_tokens
                ),
                tokenizer_dir=self.tokenizer() or None,
                judge_dir=self.judge(),
                judge_dtype=self.c.grpo.reward.judge_dtype,
                dtype=self.c.sft.model.param_dtype,
                max_length=self.c.grpo.data.max_length,
                mode=self.c.sft.data.mode,
                split="train",
            )
        from kardia_jax.rl.difficulty import curriculum
        from kardia_jax.train.setup import mesh_and_rules

        mesh, rules = mesh_and_rules(self.c.sft)
        result = curriculum(
            self.policy(),
            self.c.data_path or "sample",
            self.path("split"),
            signal=s.signal,
            easy_fraction=s.easy_fraction,
            turns=s.turns,
            batch_size=s.batch_size,
            tokenizer_dir=self.tokenizer() or None,
            dtype=self.c.sft.model.param_dtype,
            max_length=self.c.sft.data.max_length,
            buckets=tuple(self.c.sft.data.buckets),
            mode=self.c.sft.data.mode,
            mesh=mesh,
            rules=rules,
            log=self.log,
        )
        n = result["counts"]
        self.log(
            f"  {result['signal']}: {n['easy']} easy (SFT), {n['hard']} hard (GRPO) of "
            f"{n['dialogues']} dialogues; report {result['files']['report']}"
        )
        return result

    def sft_config(self) -> ConfigDict:
        cfg = copy.deepcopy(self.c.sft)
        cfg.model.path = self.policy() or cfg.model.path
        cfg.data.path = self.data("sft")
        cfg.data.tokenizer = self.tokenizer()
        cfg.export_hf = True
        return cfg

    def grpo_config(self) -> ConfigDict:
        cfg = copy.deepcopy(self.c.grpo)
        cfg.model.path = self.path("sft", "hf")
        cfg.grpo.reference_path = ""  # the SFT policy is the reference
        cfg.data.path = self.data("grpo")
        cfg.data.tokenizer = self.path("sft", "hf")  # with the span markers SFT added
        cfg.reward.judge_path = self.judge() or ""
        cfg.export_hf = True
        return cfg

    def sft(self) -> dict:
        result = run_sft(self.sft_config(), self.path("sft"))
        self.log(f"  step {result['step']}: loss {result['loss']:.3f}")
        return {k: v for k, v in result.items() if k != "data_report"}

    def grpo(self) -> dict:
        return run_grpo(self.grpo_config(), self.path("grpo"))

    def rows(self, stages: tuple[str, ...] = STAGES) -> list[tuple[str, str]]:
        """Table 2's rows: the base policy (when there is one), the SFT policy, and the
        final policy (GRPO's best checkpoint) when GRPO runs or ran."""
        rows = [("Base", self.policy())] if self.policy() else []
        rows.append(("SFT", self.path("sft", "hf")))
        if "grpo" in stages or self.done("grpo"):
            rows.append(("Kardia-R1", self.path("grpo", "hf")))
        return rows

    def eval(self) -> dict:
        warning = self.judge_warning()
        if warning:
            self.log(f"WARNING: {warning}")
        results = evaluate_rows(
            self.c.eval,
            self.rows(self.stages),
            self.path("eval"),
            data_path=self.c.data_path or None,
            judge_dir=self.judge(for_eval=True),
            log=self.log,
            report=False,  # the report stage adds the training curves
            warnings=[warning] if warning else [],
        )
        summary = {"results": self.path("eval", "results.json"), "rows": {}}
        for row in results["rows"]:
            summary["rows"][row["name"]] = {
                k: row[k] for k in ("emotion_accuracy", "format_failure_rate", "rubric")
            }
        if warning:
            summary["judge_warning"] = warning
        return summary

    def report(self) -> dict:
        from kardia_jax.eval.report import write_report

        out = self.path("report.html")
        if self.main:
            write_report(
                out,
                self.path("eval"),
                run_dirs={"sft": self.path("sft"), "grpo": self.path("grpo")},
            )
        return {"report": out}

    def check_shared_workdir(self) -> None:
        """Every process sees the same stages done: else the workdir is not one folder
        that all of them see, and they would run different stages."""
        seen = gather(np.asarray([self.done(s) is not None for s in STAGES], np.uint8))
        if (seen != seen[0]).any():
            per = "; ".join(
                f"process {p}: {[s for s, d in zip(STAGES, row, strict=True) if d] or 'none'}"
                for p, row in enumerate(seen)
            )
            raise ConfigError(
                f"--workdir {self.workdir}: the processes see different stages done ({per}); "
                "the workdir must be one folder that every host sees (gcsfuse, NFS)"
            )

    # -- preflight ---------------------------------------------------------------
    def preflight(self, stages: tuple[str, ...]) -> None:
        """Every check a stage still to run would make, before the first one runs:
        a later stage never fails for a reason that could be seen now. Stages whose
        inputs an earlier one writes are checked against what it will write (the SFT
        policy's config and tokenizer)."""
        with check_stage("pipeline"):
            writable_dir(self.workdir, "--workdir")
        todo = [s for s in stages if self.done(s) is None]
        if not todo:
            return
        with check_stage("pipeline"):
            policy, judge, eval_judge = self.policy(), self.judge(), self.judge(for_eval=True)
            if policy:
                check_hf_checkpoint(policy)
        if any(s in todo for s in ("validate", "split", "sft", "grpo", "eval")):
            with check_stage("validate"):
                self.read_splits()  # both splits resolve; no profile in both (strict)
        if "split" in todo and self.c.split.enabled:
            with check_stage("split"):
                if self.c.split.signal not in SIGNALS:
                    raise ConfigError(
                        f"split.signal={self.c.split.signal!r}: expected one of {SIGNALS}"
                    )
                if policy is None:
                    raise ConfigError(
                        "split.enabled scores the train split with the base policy: set policy=DIR"
                    )
                if judge and self.c.split.signal == "reward":
                    check_hf_checkpoint(judge)
        # What the SFT policy will be, for the stages that start from it. Data errors
        # surface here too: each stage loads and validates its data in its check.
        sft_hf = self.path("sft", "hf")
        upstream: dict = {}  # {} once SFT is done: the export itself is read
        if "sft" in todo:
            with check_stage("sft"):
                inputs = prepare_sft(self.sft_config(), self.path("sft"))
                upstream = {"tokenizer": inputs.tokenizer, "model_config": inputs.model_config}
        elif any(s in todo for s in ("grpo", "eval")) and not self.done("sft"):
            with check_stage("grpo" if "grpo" in todo else "eval"):
                raise ConfigError(
                    f"needs the SFT policy {sft_hf}, not written yet: add sft to --stages"
                )
        if "grpo" in todo:
            with check_stage("grpo"):
                g = self.c.grpo.reward
                if g.rubric and not g.get("fn", "") and not judge:
                    raise ConfigError(
                        f"grpo.reward.rubric={g.rubric} needs a judge: set judge=DIR (or "
                        "grpo.reward.rubric=0)"
                    )
                prepare_grpo(self.grpo_config(), self.path("grpo"), **upstream)
        if "eval" in todo:
            with check_stage("eval"):
                # Policies not written yet will have the SFT policy's shape.
                if not upstream:  # SFT ran earlier: its export is read
                    upstream = {
                        "tokenizer": load_eval_tokenizer(self.c.eval, sft_hf),
                        "model_config": check_hf_checkpoint(sft_hf),
                    }
                later = {
                    name: upstream
                    for name, model in self.rows(stages)
                    if name != "Base" and not os.path.isfile(os.path.join(model, "config.json"))
                }
                check_rows(
                    self.c.eval,
                    self.rows(stages),
                    self.path("eval"),
                    data_path=self.c.data_path or None,
                    judge_dir=eval_judge,
                    upstream=later,
                )

    # -- driver ------------------------------------------------------------------
    def run(self, stages: tuple[str, ...] = STAGES) -> dict:
        self.stages = stages
        t0 = time.perf_counter()
        with agreed():  # identical on every process, or all stop with one error
            self.preflight(stages)
        self.check_shared_workdir()  # raises on every process alike
        self.log(f"== preflight: every stage's inputs check out ({time.perf_counter() - t0:.1f} s)")
        warning = self.judge_warning() if "eval" in stages and not self.done("eval") else None
        if warning:  # the run goes on, said before hours of training, and again at eval
            self.log(f"WARNING: {warning}")
        summaries = {}
        for stage in stages:
            prior = self.done(stage)
            if prior is not None:
                self.log(f"== {stage}: done earlier, skipped")
                summaries[stage] = prior
                continue
            self.log(f"== {stage}")
            t0 = time.perf_counter()
            summary = getattr(self, stage)()
            # Stages run one after another in this process: drop the last stage's
            # models, optimizer state and compiled programs before the next loads its own.
            gc.collect()
            jax.clear_caches()
            release_freed_memory()  # and give their memory back (kardia_jax/host.py)
            summary = {**summary, "seconds": round(time.perf_counter() - t0, 1)}
            with agreed():  # process 0 marks the stage done; no process goes on before
                self.mark(stage, summary)
            summaries[stage] = summary
            self.log(f"   ({summary['seconds']} s)")
            if stage == "eval":
                self.log("   " + json.dumps({k: v for k, v in summary.items() if k != "results"}))
        return summaries


def run_pipeline(config: ConfigDict, workdir: str, stages=STAGES, log=print) -> dict:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return Pipeline(config, workdir, log).run(tuple(stages))
