"""results.md: our figures in the layout of the paper's Table 2 (Emotion Accuracy and
the five rubric dimensions), with the paper's published numbers beside them, the
confidence intervals, the format-failure rate and per-emotion accuracy."""

from __future__ import annotations

from kardia_jax.rewards.rubric import DIMENSIONS

DIMENSION_TITLES = {
    "relevance": "Relevance",
    "fluency": "Fluency",
    "empathy": "Empathy",
    "persona_consistency": "Persona",
    "safety": "Safety",
}

# Published test-split figures (Kardia-R1, arXiv 2512.01282, Table 2 as summarised
# in the project's notes; Qwen2.5-3B-Instruct backbone, GPT-5-mini as evaluation
# judge). None: not in our notes, shown as "n/a", never filled in.
PAPER_SOURCE = "Kardia-R1 (arXiv 2512.01282), Table 2, test split, GPT-5-mini judge"
PAPER_ROWS: tuple[dict, ...] = (
    {
        "system": "Kardia-R1 (Qwen2.5-3B)",
        "emotion_accuracy": 65.78,
        "relevance": None,
        "fluency": None,
        "empathy": 3.650,
        "persona_consistency": 4.406,
        "safety": 4.653,
    },
    {
        "system": "GPT-4o",
        "emotion_accuracy": 15.14,
        "relevance": None,
        "fluency": None,
        "empathy": 3.291,
        "persona_consistency": 4.304,
        "safety": 4.910,
    },
    {
        "system": "ReflectDiffu (specialised)",
        "emotion_accuracy": 30.43,
        "relevance": None,
        "fluency": None,
        "empathy": 1.813,
        "persona_consistency": 1.157,
        "safety": 3.620,
    },
)
CAVEAT = (
    "Ours and the paper's rows are not comparable as equals: ours come from a "
    "different model, at a different scale, on {data} ({n} examples), {judged}. "
    "Paper rows are copied from the publication, not re-run."
)


def caveat(results: dict) -> str:
    judge = (results.get("rubric") or {}).get("judge")
    judged = (
        f"with rubric scores from a different judge ({judge}) and our own rubric text "
        "(the paper's was never published)"
        if judge
        else "without rubric scores (no evaluation judge)"
    )
    return CAVEAT.format(
        data=results.get("data", "?"), n=results["counts"]["examples"], judged=judged
    )


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


def fmt_score(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def ours_row(results: dict) -> dict:
    """Our figures in the paper rows' shape (None where not scored)."""
    row = {"emotion_accuracy": results["emotion_accuracy"]["value"]}
    rubric = results.get("rubric") or {}
    for d in DIMENSIONS:
        row[d] = rubric["dimensions"][d]["mean"] if rubric.get("scored") else None
    return row


def _ci(lo_hi, fmt) -> str:
    return f"[{fmt(lo_hi[0])}, {fmt(lo_hi[1])}]"


def markdown_table(results: dict) -> str:
    """The Table 2 layout: one row per system, our row first."""
    head = ["System", "Emotion Acc"] + [DIMENSION_TITLES[d] for d in DIMENSIONS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ours = ours_row(results)
    rubric_note = "" if results.get("rubric", {}).get("scored") else "not scored"
    cells = [f"**ours** ({results.get('label', 'kardia-jax')})", fmt_pct(ours["emotion_accuracy"])]
    cells += [rubric_note or fmt_score(ours[d]) for d in DIMENSIONS]
    lines.append("| " + " | ".join(cells) + " |")
    for row in PAPER_ROWS:
        cells = [f"paper: {row['system']}", fmt_pct(row["emotion_accuracy"])]
        cells += [fmt_score(row[d]) for d in DIMENSIONS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(results: dict) -> str:
    c = results["counts"]
    acc, ff = results["emotion_accuracy"], results["format_failure_rate"]
    boot = results["bootstrap"]
    rubric = results.get("rubric") or {}
    out = [
        "# Evaluation results",
        "",
        f"Model: `{results.get('model', '?')}`  ",
        f"Data: `{results.get('data', '?')}`: {c['examples']} examples from "
        f"{c['dialogues']} dialogues  ",
        f"Judge: {rubric.get('judge') or 'none'}",
        "",
        "## Table 2 layout: ours beside the paper's published numbers",
        "",
        markdown_table(results),
        "",
        "> " + caveat(results),
        f"> Paper source: {PAPER_SOURCE}. n/a: not reported in our source.",
        "",
        f"## Our figures with bootstrap 95% intervals ({boot['method']}, "
        f"{boot['resamples']} resamples of {boot['unit']}s, seed {boot['seed']})",
        "",
        "| Metric | Value | 95% CI | Count |",
        "|---|---|---|---|",
        f"| Emotion Accuracy | {fmt_pct(acc['value'])} | {_ci(acc['ci95'], fmt_pct)} "
        f"| {acc['correct']}/{acc['n']} |",
        f"| Format failures | {fmt_pct(ff['value'])} | {_ci(ff['ci95'], fmt_pct)} "
        f"| {ff['count']}/{ff['n']} |",
    ]
    if rubric.get("scored"):
        for d in DIMENSIONS:
            s = rubric["dimensions"][d]
            out.append(
                f"| {DIMENSION_TITLES[d]} (1-5) | {fmt_score(s['mean'])} | "
                f"{_ci(s['ci95'], fmt_score)} | {s['n']} |"
            )
    else:
        out.append(f"| Rubric (1-5) | not scored | | {rubric.get('reason', 'no judge')} |")
    if ff["reasons"]:
        out += ["", "Format failures by reason: "]
        out[-1] += ", ".join(f"{k} {v}" for k, v in ff["reasons"].items())
    out += ["", "## Per-emotion accuracy", "", "| Gold emotion | n | Correct | Accuracy |"]
    out.append("|---|---|---|---|")
    for label, e in results["per_emotion"].items():
        out.append(f"| {label} | {e['n']} | {e['correct']} | {fmt_pct(e['accuracy'])} |")
    return "\n".join(out) + "\n"
