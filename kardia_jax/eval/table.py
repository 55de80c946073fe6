"""results.md: our figures in the layout of the paper's Table 2 (Emotion Accuracy and
the five rubric dimensions), with the paper's published numbers beside them, the
confidence intervals, the format-failure rate and per-emotion accuracy."""

from __future__ import annotations

from collections.abc import Sequence

from kardia_jax.rewards.rubric import DIMENSIONS

DIMENSION_TITLES = {
    "relevance": "Relevance",
    "fluency": "Fluency",
    "empathy": "Empathy",
    "persona_consistency": "Persona",
    "safety": "Safety",
}

# A rows workdir's results.json lists its rows under this key (Base, SFT, the final
# policy: eval/compare.py); a single policy's results.json has no such key.
ROWS_KEY = "rows"

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


def rows_markdown_table(named: list[tuple[str, dict]]) -> str:
    """The Table 2 layout for several of our rows (Base, SFT, the final policy), each
    with its Emotion Accuracy interval, then the paper's rows ("n/a" where the paper
    gives no figure, never filled in)."""
    head = ["System", "Emotion Acc", "Emotion Acc 95% CI"]
    head += [DIMENSION_TITLES[d] for d in DIMENSIONS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, results in named:
        ours, acc = ours_row(results), results["emotion_accuracy"]
        scored = (results.get("rubric") or {}).get("scored")
        cells = [f"**ours** ({name})", fmt_pct(ours["emotion_accuracy"]), _ci(acc["ci95"], fmt_pct)]
        cells += [fmt_score(ours[d]) if scored else "not scored" for d in DIMENSIONS]
        lines.append("| " + " | ".join(cells) + " |")
    for row in PAPER_ROWS:
        cells = [f"paper: {row['system']}", fmt_pct(row["emotion_accuracy"]), "n/a"]
        cells += [fmt_score(row[d]) for d in DIMENSIONS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ci_markdown(results: dict) -> list[str]:
    """One policy's figures with their bootstrap intervals and counts."""
    acc, ff = results["emotion_accuracy"], results["format_failure_rate"]
    rubric = results.get("rubric") or {}
    out = [
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
    return out


def _bootstrap_heading(results: dict, what: str) -> str:
    boot = results["bootstrap"]
    return (
        f"## {what} with bootstrap 95% intervals ({boot['method']}, "
        f"{boot['resamples']} resamples of {boot['unit']}s, seed {boot['seed']})"
    )


def results_markdown(results: dict) -> str:
    c = results["counts"]
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
        _bootstrap_heading(results, "Our figures"),
        "",
        *ci_markdown(results),
    ]
    out += ["", "## Per-emotion accuracy", "", "| Gold emotion | n | Correct | Accuracy |"]
    out.append("|---|---|---|---|")
    for label, e in results["per_emotion"].items():
        out.append(f"| {label} | {e['n']} | {e['correct']} | {fmt_pct(e['accuracy'])} |")
    return "\n".join(out) + "\n"


def rows_results_markdown(
    named: list[tuple[str, dict]], details: list[str], warnings: Sequence[str] = ()
) -> str:
    """results.md of a rows workdir (Base, SFT, the final policy, all on the same test
    turns with the same judge): one Table 2 block with every row beside the paper's,
    per-emotion accuracy side by side, then each row's intervals. `details`: each
    row's own results.md, as a path relative to this file."""
    first = named[0][1]
    c = first["counts"]
    judge = (first.get("rubric") or {}).get("judge")
    out = [
        "# Evaluation results: " + ", ".join(name for name, _ in named),
        "",
        f"Data: `{first.get('data', '?')}`: {c['examples']} examples from "
        f"{c['dialogues']} dialogues, the same test turns for every row  ",
        f"Judge: {judge or 'none'} (the same for every row)",
        "",
        *(f"> **Warning:** {w}\n" for w in warnings),
        "| Row | Model | Details |",
        "|---|---|---|",
    ]
    for (name, r), link in zip(named, details, strict=True):
        out.append(f"| {name} | `{r.get('model', '?')}` | [{link}]({link}) |")
    out += [
        "",
        "## Table 2 layout: our rows beside the paper's published numbers",
        "",
        rows_markdown_table(named),
        "",
        "> " + caveat(first),
        f"> Paper source: {PAPER_SOURCE}. n/a: not reported in our source.",
        "",
        "## Per-emotion accuracy",
        "",
        "| Gold emotion | n | " + " | ".join(name for name, _ in named) + " |",
        "|" + "---|" * (2 + len(named)),
    ]
    for label, e in first["per_emotion"].items():
        cells = [fmt_pct(r["per_emotion"].get(label, {}).get("accuracy")) for _, r in named]
        out.append(f"| {label} | {e['n']} | " + " | ".join(cells) + " |")
    for name, r in named:
        out += ["", _bootstrap_heading(r, name), "", *ci_markdown(r)]
    return "\n".join(out) + "\n"
