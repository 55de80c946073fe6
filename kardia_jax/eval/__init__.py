"""Evaluation on the test split (Emotion Accuracy and the five rubric dimensions,
beside the paper's Table 2) and the self-contained HTML report.

    from kardia_jax.eval import run_eval
    results = run_eval(config, "sft/hf", "eval_out", judge_dir="/ckpt/Qwen3-8B")
    from kardia_jax.eval import evaluate_rows   # Table 2's rows, one judge
    evaluate_rows(config, [("Base", base), ("SFT", "sft/hf"), ("Kardia-R1", "grpo/hf")],
                  "rows_out", judge_dir="openai:gpt-5-mini")
    from kardia_jax.eval.report import write_report
    write_report("report.html", "eval_out", run_dirs={"sft": "sft", "grpo": "grpo"})

Names are imported lazily: the report needs neither JAX nor a model.
"""

from __future__ import annotations

from kardia_jax.lazy import lazy_exports

_EXPORTS = {
    "run_eval": "run",
    "evaluate_rows": "compare",
    "load_eval_examples": "run",
    "eval_config": "config",
    "compute_metrics": "metrics",
    "bootstrap_ci": "metrics",
    "Record": "metrics",
    "results_markdown": "table",
    "write_report": "report",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
