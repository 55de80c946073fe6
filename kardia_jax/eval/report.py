"""report.html: one self-contained page (inline CSS and SVG, no script, nothing
fetched) with the results table beside the paper's, a chart of the five rubric
dimensions, training curves from the runs' JSONL logs, the emotion confusion heat
map and sample dialogues. Model text is untrusted data: every string is escaped.

An eval workdir of one policy gives one row; a rows workdir (eval/compare.py: Base,
SFT and the final policy on the same test turns) gives every row in the table and
chart, and the rows' answers to each sample turn side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from html import escape

from kardia_jax.errors import DataError
from kardia_jax.eval import store
from kardia_jax.eval.metrics import Record, per_example_rows
from kardia_jax.eval.svg import bar_chart, line_chart
from kardia_jax.eval.table import (
    DIMENSION_TITLES,
    PAPER_ROWS,
    PAPER_SOURCE,
    ROWS_KEY,
    caveat,
    fmt_pct,
    fmt_score,
    ours_row,
)
from kardia_jax.rewards.emotion import extract_emotion
from kardia_jax.rewards.rubric import DIMENSIONS
from kardia_jax.rewards.sanitize import candidate_parts

# The JSONL logs the drivers write into their workdirs, process 0 only: the SFT
# driver (kardia_jax/train/sft.py) one row per step and one per held-out evaluation,
# the GRPO driver (kardia_jax/rl/grpo.py) one row per step and one per checkpoint
# selection scoring (rl/select.py's held-out reward). Named here, not imported: the
# report loads neither JAX nor a model.
SFT_LOG, SFT_EVAL_LOG = "train_log.jsonl", "eval_log.jsonl"
GRPO_LOG, SELECTION_LOG = "grpo_log.jsonl", "selection.jsonl"

# (panel title, stage, [(legend, log file, field)]).
CURVES: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("SFT loss", "sft", (("train", SFT_LOG, "loss"), ("held-out", SFT_EVAL_LOG, "loss"))),
    (
        "GRPO reward",
        "grpo",
        (
            ("total", GRPO_LOG, "reward/total"),
            ("format", GRPO_LOG, "reward/format"),
            ("emotion", GRPO_LOG, "reward/emotion"),
            ("rubric", GRPO_LOG, "reward/rubric"),
            ("held-out total", SELECTION_LOG, "reward/total"),
        ),
    ),
    (
        "GRPO rubric reward per dimension (1-5)",
        "grpo",
        tuple((DIMENSION_TITLES[d], GRPO_LOG, f"reward/rubric/{d}") for d in DIMENSIONS),
    ),
    ("GRPO KL to the reference", "grpo", (("kl", GRPO_LOG, "kl"),)),
    (
        "GRPO completion length (tokens)",
        "grpo",
        (
            ("mean", GRPO_LOG, "completion/length_mean"),
            ("max", GRPO_LOG, "completion/length_max"),
        ),
    ),
)


def read_log(path: str) -> dict[str, list[tuple[int, float]]]:
    """field -> [(step, value)] sorted by step, from a JSONL log's numeric fields. A
    step written twice (a run's final evaluation at a step it already evaluated)
    keeps the later row; a torn last line (a writer killed mid-line) is left out."""
    by_field: dict[str, dict[int, float]] = {}
    for row in store.read_jsonl(path):  # a reader never edits a run's logs
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        for k, v in row.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                by_field.setdefault(k, {})[step] = float(v)
    return {k: sorted(steps.items()) for k, steps in by_field.items()}


def resolve_run_dir(path: str | None) -> str | None:
    """A run's workdir, also when given as its tb/ folder (TensorBoard's logdir)."""
    if not path:
        return None
    path = os.path.normpath(path)
    logs = {log for _, _, series in CURVES for _, log, _ in series}
    here = any(os.path.exists(os.path.join(path, log)) for log in logs)
    return os.path.dirname(path) if os.path.basename(path) == "tb" and not here else path


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1120px;color:#1d1d1d;
 line-height:1.4;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:32px;
 border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px}.note{background:#fff7e0;border-left:4px solid #e0b040;
 padding:8px 12px;font-size:13px;margin:12px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.ours td{background:#eef4ff;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.heat td,.heat th{padding:2px 4px;font-size:11px;text-align:center;min-width:22px}
.heat th.rot{height:90px;vertical-align:bottom;white-space:nowrap}
.heat th.rot div{writing-mode:vertical-rl;transform:rotate(180deg)}
.heat td.diag{outline:2px solid #1d1d1d;outline-offset:-2px}
.sample{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0}
.sample h3{font-size:14px;margin:0 0 6px 0}
.span{margin:4px 0;font-size:13px;white-space:pre-wrap;word-break:break-word}
.span b{display:inline-block;min-width:118px;color:#555}
.ok{color:#1f7a3a;font-weight:600}.bad{color:#b02a37;font-weight:600}
.raw{background:#f6f6f6;padding:6px;font-size:12px;white-space:pre-wrap;
 word-break:break-word;max-height:220px;overflow:auto}
.scores{font-size:12px;color:#333}
.cols{display:grid;gap:10px;margin-top:8px}
.answer{border-top:3px solid #4f6d9a;padding-top:4px;min-width:0}
.answer .who{font-weight:600;font-size:13px;margin-bottom:4px}
.cols .span b{display:block;min-width:0}
"""


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (run `kardia-jax eval` first)") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


@dataclasses.dataclass(frozen=True)
class View:
    """One row of the report: its name in the table, its results, its eval folder."""

    name: str
    results: dict
    eval_dir: str


def load_views(eval_dir: str) -> tuple[list[View], dict | None]:
    """The rows an eval workdir holds, and a rows workdir's combined results (None for
    one policy's workdir)."""
    results = _load_json(os.path.join(eval_dir, store.RESULTS_JSON))
    if ROWS_KEY not in results:
        return [View(results.get("label", "kardia-jax"), results, eval_dir)], None
    views = []
    for row in results[ROWS_KEY]:
        path = os.path.join(eval_dir, row["results"])  # relative to the workdir
        views.append(View(row["name"], _load_json(path), os.path.dirname(path)))
    if not views:
        raise DataError(f"{os.path.join(eval_dir, store.RESULTS_JSON)}: no rows")
    return views, results


def _ci_text(ci, fmt) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _table_html(views: list[View]) -> str:
    # Several rows: each one's Emotion Accuracy interval beside it (the paper gives none).
    multi = len(views) > 1
    head = ["System", "Emotion Acc"] + (["95% CI"] if multi else [])
    head += [DIMENSION_TITLES[d] for d in DIMENSIONS]
    rows = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for v in views:
        ours = ours_row(v.results)
        scored = v.results.get("rubric", {}).get("scored")
        cells = [f"ours: {v.name}", fmt_pct(ours["emotion_accuracy"])]
        if multi:
            cells.append(_ci_text(v.results["emotion_accuracy"]["ci95"], fmt_pct))
        cells += [fmt_score(ours[d]) if scored else "not scored" for d in DIMENSIONS]
        rows.append('<tr class="ours">' + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    for r in PAPER_ROWS:
        cells = [f"paper: {r['system']}", fmt_pct(r["emotion_accuracy"])]
        cells += ["n/a"] if multi else []
        cells += [fmt_score(r[d]) for d in DIMENSIONS]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return "".join(rows) + "</table>"


def _ci_table(results: dict) -> str:
    acc, ff = results["emotion_accuracy"], results["format_failure_rate"]
    lines = [
        ("Emotion Accuracy", fmt_pct(acc["value"]), acc["ci95"], fmt_pct, acc["correct"]),
        ("Format failures", fmt_pct(ff["value"]), ff["ci95"], fmt_pct, ff["count"]),
    ]
    rubric = results.get("rubric", {})
    if rubric.get("scored"):
        for d in DIMENSIONS:
            s = rubric["dimensions"][d]
            lines.append((DIMENSION_TITLES[d], fmt_score(s["mean"]), s["ci95"], fmt_score, None))
    n = results["counts"]["examples"]
    out = ["<table><tr><th>Metric</th><th>Value</th><th>95% CI</th><th>Count</th></tr>"]
    for name, v, ci, f, count in lines:
        shown = f"{count}/{n}" if count is not None else str(n)
        out.append(
            f"<tr><td>{escape(name)}</td><td>{escape(v)}</td>"
            f"<td>[{escape(f(ci[0]))}, {escape(f(ci[1]))}]</td><td>{shown}</td></tr>"
        )
    return "".join(out) + "</table>"


def _rows_ci_table(views: list[View]) -> str:
    """Every row's figures side by side, each as value [95% interval]."""
    metrics = [
        ("Emotion Accuracy", lambda r: r["emotion_accuracy"], "value", fmt_pct),
        ("Format failures", lambda r: r["format_failure_rate"], "value", fmt_pct),
    ]
    metrics += [
        (DIMENSION_TITLES[d], lambda r, d=d: r["rubric"]["dimensions"][d], "mean", fmt_score)
        for d in DIMENSIONS
    ]
    head = "".join(f"<th>{escape(v.name)}</th>" for v in views)
    out = [f"<table><tr><th>Metric</th>{head}</tr>"]
    for title, get, key, fmt in metrics:
        cells = []
        for v in views:
            rubric = v.results.get("rubric", {})
            if fmt is fmt_score and not rubric.get("scored"):
                cells.append("not scored")
                continue
            m = get(v.results)
            cells.append(f"{fmt(m[key])} {_ci_text(m['ci95'], fmt)}")
        out.append(
            f"<tr><td>{escape(title)}</td>"
            + "".join(f"<td>{escape(c)}</td>" for c in cells)
            + "</tr>"
        )
    return "".join(out) + "</table>"


def _dimension_chart(views: list[View]) -> str:
    scored = [v for v in views if v.results.get("rubric", {}).get("scored")]
    if not scored:
        why = views[0].results.get("rubric", {}).get("reason", "no judge")
        return f'<p class="note">Rubric dimensions not scored: {escape(why)}.</p>'
    cats = [DIMENSION_TITLES[d] for d in DIMENSIONS]
    series = []
    for v in scored:
        dims = v.results["rubric"]["dimensions"]
        series.append(
            (
                f"ours ({v.name})",
                [dims[d]["mean"] for d in DIMENSIONS],
                [tuple(dims[d]["ci95"]) for d in DIMENSIONS],
            )
        )
    for r in PAPER_ROWS[:2]:
        series.append((f"paper: {r['system']}", [r[d] for d in DIMENSIONS], []))
    return bar_chart(
        cats,
        series,
        width=720 if len(series) <= 3 else 960,  # room for the bars and the legend
        height=320,
        title="Rubric dimensions (1-5), 95% CI whiskers",
    )


def _curves(run_dirs: dict[str, str | None]) -> str:
    logs: dict[str, dict[str, dict]] = {}  # stage -> log file -> field -> points
    notes = []
    for stage in ("sft", "grpo"):
        run = resolve_run_dir(run_dirs.get(stage))
        names = sorted({log for _, s, series in CURVES if s == stage for _, log, _ in series})
        if run is None:
            notes.append(f"{stage.upper()}: no log folder given")
            continue
        if not os.path.isdir(run):
            notes.append(f"{stage.upper()}: {run} does not exist")
            continue
        found = {}
        for name in names:
            try:
                found[name] = read_log(os.path.join(run, name))
            except DataError as e:  # a corrupt log loses its curves, not the report
                notes.append(f"{stage.upper()}: {e}")
        if any(found.values()):
            logs[stage] = found
        else:
            notes.append(f"{stage.upper()}: no {' or '.join(names)} rows in {run}")
    charts = []
    for title, stage, series in CURVES:
        if stage in logs:
            lines = [
                (name, logs[stage][log][field])
                for name, log, field in series
                if field in logs[stage].get(log, {})
            ]
            charts.append(line_chart(lines, title=title))
    out = ""
    if notes:
        out += '<p class="note">' + "<br>".join(escape(n) for n in notes) + "</p>"
    return out + '<div class="grid">' + "".join(charts) + "</div>"


def _heat(results: dict) -> str:
    conf = results["confusion"]
    gold, pred, m = conf["gold"], conf["predicted"], conf["matrix"]
    head = "".join(f'<th class="rot"><div>{escape(p)}</div></th>' for p in pred)
    rows = [f'<table class="heat"><tr><th>gold \\ predicted</th>{head}<th>n</th></tr>']
    for i, g in enumerate(gold):
        total = sum(m[i]) or 1
        cells = []
        for j, p in enumerate(pred):
            c = m[i][j]
            share = c / total
            # Correct cells in green, confusions in red; opacity = row share.
            rgb = "46,150,80" if p == g else "200,60,60"
            style = f"background:rgba({rgb},{0.08 + 0.85 * share:.2f})" if c else ""
            cls = ' class="diag"' if p == g else ""
            cells.append(f'<td{cls} style="{style}">{c if c else ""}</td>')
        rows.append(f"<tr><th>{escape(g)}</th>{''.join(cells)}<td>{sum(m[i])}</td></tr>")
    return "".join(rows) + "</table>"


def _per_emotion(results: dict) -> str:
    out = ["<table><tr><th>Gold emotion</th><th>n</th><th>Correct</th><th>Accuracy</th></tr>"]
    for label, e in results["per_emotion"].items():
        out.append(
            f"<tr><td>{escape(label)}</td><td>{e['n']}</td><td>{e['correct']}</td>"
            f"<td>{escape(fmt_pct(e['accuracy']))}</td></tr>"
        )
    return "".join(out) + "</table>"


def _rows_per_emotion(views: list[View]) -> str:
    """Per gold emotion, every row's accuracy (the rows share the test turns)."""
    head = "".join(f"<th>{escape(v.name)}</th>" for v in views)
    out = [f"<table><tr><th>Gold emotion</th><th>n</th>{head}</tr>"]
    for label, e in views[0].results["per_emotion"].items():
        cells = "".join(
            f"<td>{escape(fmt_pct(v.results['per_emotion'].get(label, {}).get('accuracy')))}</td>"
            for v in views
        )
        out.append(f"<tr><td>{escape(label)}</td><td>{e['n']}</td>{cells}</tr>")
    return "".join(out) + "</table>"


def _pick(ids: list[str], k: int, seed: int) -> list[str]:
    """k ids chosen by a seeded hash (stable whatever the file order), shown in id order."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    chosen = set(ranked[:k])
    return [i for i in ids if i in chosen]


def _read_answers(view: View) -> tuple[dict[str, dict], dict[str, list]]:
    """A row's completions by id, and its scores from the judge its results name."""
    comps = store.read_jsonl(os.path.join(view.eval_dir, store.COMPLETIONS))
    ident = view.results.get("rubric", {}).get("judge")
    scores = {}
    if ident:
        for r in store.read_jsonl(os.path.join(view.eval_dir, store.SCORES)):
            if r.get("judge") == ident:
                scores[r["id"]] = r["scores"]
    return {r["id"]: r for r in comps}, scores


def _answer(r: dict, c: dict, s: list | None) -> str:
    """One completion: its four spans, the emotion verdict, format, finish and scores."""
    text = r.get("completion", "")
    parts = candidate_parts(text)
    emotion = extract_emotion(text)
    spans = [
        ("understanding", parts.understanding),
        ("reasoning", parts.reasoning),
        ("emotion", emotion),
        ("response", parts.response if parts.source in ("spans", "lenient") else None),
    ]
    verdict = (
        f'<span class="ok">correct ({escape(c["gold"])})</span>'
        if c["correct"]
        else f'<span class="bad">wrong: predicted {escape(c["predicted"] or "no label")}, '
        f"gold {escape(c['gold'])}</span>"
    )
    fmt = (
        '<span class="ok">well formed</span>'
        if c["format_error"] is None
        else f'<span class="bad">format failure: {escape(c["format_error"])}</span>'
    )
    score_line = (
        " · ".join(f"{DIMENSION_TITLES[d]} {v:.2f}" for d, v in zip(DIMENSIONS, s, strict=True))
        if s
        else "rubric not scored"
    )
    body = "".join(
        f'<div class="span"><b>{name}</b>{escape(v) if v else "<i>(absent)</i>"}</div>'
        for name, v in spans
    )
    raw = (
        f'<details><summary>raw completion</summary><div class="raw">{escape(text)}</div></details>'
        if c["format_error"] is not None
        else ""
    )
    return (
        f'{body}<div class="scores">emotion: {verdict} · {fmt} · '
        f"finish: {escape(str(r.get('finish_reason', '?')))} · {escape(score_line)}</div>"
        f"{raw}"
    )


def _checks(rows: list[dict]) -> list[dict]:
    return per_example_rows([Record(r["id"], "", r["gold"], r.get("completion", "")) for r in rows])


def _samples(views: list[View], k: int, seed: int) -> str:
    """k test turns (seeded choice); with several rows, each turn shows every row's
    answer side by side, in the rows' order."""
    answers = [_read_answers(v) for v in views]
    by_id = answers[0][0]
    chosen_ids = _pick(list(by_id), k, seed)
    columns = []  # per row: (its completion rows for the chosen ids, their checks, scores)
    for comps, scores in answers:
        rows = [comps.get(i) or {"id": i, "gold": by_id[i]["gold"]} for i in chosen_ids]
        columns.append((rows, _checks(rows), scores))
    multi = len(views) > 1
    grid = f'<div class="cols" style="grid-template-columns:repeat({len(views)},minmax(0,1fr))">'
    out = []
    for n, i in enumerate(chosen_ids):
        r = by_id[i]
        answers_html = [
            _answer(rows[n], checks[n], scores.get(i))
            if "completion" in rows[n]
            else "<p><i>(no completion)</i></p>"
            for rows, checks, scores in columns
        ]
        if multi:
            body = (
                grid
                + "".join(
                    f'<div class="answer"><div class="who">{escape(v.name)}</div>{a}</div>'
                    for v, a in zip(views, answers_html, strict=True)
                )
                + "</div>"
            )
        else:
            body = "<hr>" + answers_html[0]
        out.append(
            f'<div class="sample"><h3>{escape(r["id"])}</h3>'
            f'<div class="span"><b>situation</b>{escape(r.get("situation", ""))}</div>'
            f'<div class="span"><b>user</b>{escape(r.get("user", ""))}</div>'
            f"{body}</div>"
        )
    if not out:
        return "<p>No completions.</p>"
    if multi:
        names = ", ".join(v.name for v in views)
        return (
            f"<p>{len(out)} of {len(by_id)} test turns (seeded choice), each with the answers "
            f"of {escape(names)}.</p>" + "".join(out)
        )
    return f"<p>{len(out)} of {len(by_id)} completions (seeded choice).</p>" + "".join(out)


def write_report(
    out_html: str,
    eval_dir: str,
    run_dirs: dict[str, str | None] | None = None,
    *,
    samples: int = 20,
    seed: int = 0,
    title: str = "kardia-jax evaluation report",
) -> str:
    """Writes the report from an eval workdir (results.json, completions.jsonl,
    judge_scores.jsonl; or a rows workdir of eval/compare.py, whose results.json
    names each row's folder) and the SFT / GRPO run folders, whose JSONL logs give the
    training curves (a run's workdir, or its tb/ folder); returns `out_html`."""
    views, combined = load_views(eval_dir)
    multi = len(views) > 1
    results = views[0].results  # data, counts, judge and bootstrap: the same for every row
    c = results["counts"]
    rubric = results.get("rubric", {})
    if multi:
        who = "rows " + " · ".join(f"{v.name} ({v.results.get('model', '?')})" for v in views)
    else:
        who = f"model {results.get('model', '?')}"
    warnings = [f"Warning: {w}" for w in (combined or {}).get("warnings", [])]
    warnings += [
        f"Warning{f' ({v.name})' if multi else ''}: {v.results['rubric']['warning']}"
        for v in views
        if v.results.get("rubric", {}).get("warning")
    ]
    limit_hits = (
        "completions that hit the token limit: "
        + ", ".join(f"{v.name} {v.results['counts'].get('hit_token_limit', 0)}" for v in views)
        if multi
        else f"{c.get('hit_token_limit', 0)} completions hit the token limit"
    )
    last = views[-1]
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(who)} · data '
        f"{escape(str(results.get('data', '?')))} · {c['examples']} examples from "
        f"{c['dialogues']} dialogues{', the same for every row' if multi else ''} · judge "
        f"{escape(str(rubric.get('judge') or 'none'))}</p>",
        f'<p class="note">{escape(caveat(results))}<br>Paper source: {escape(PAPER_SOURCE)}.</p>',
        "".join(f'<p class="note">{escape(w)}</p>' for w in warnings),
        "<h2>Results beside the paper (Table 2 layout)</h2>",
        _table_html(views),
        "<h2>Our figures with bootstrap 95% intervals</h2>",
        _rows_ci_table(views) if multi else _ci_table(results),
        f'<p class="meta">{results["bootstrap"]["resamples"]} percentile-bootstrap resamples '
        f"of {escape(results['bootstrap']['unit'])}s, seed {results['bootstrap']['seed']}; "
        f"{escape(limit_hits)}.</p>",
        "<h2>Rubric dimensions</h2>",
        _dimension_chart(views),
        "<h2>Training curves</h2>",
        _curves(run_dirs or {}),
        "<h2>Emotions</h2>",
        '<div class="grid"><div>',
        _rows_per_emotion(views) if multi else _per_emotion(results),
        "</div><div>",
        f'<p class="meta">Confusions of {escape(last.name)}</p>' if multi else "",
        _heat(last.results),
        "</div></div>",
        "<h2>Sample dialogues</h2>",
        _samples(views, samples, seed),
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        # No script may run and nothing may load, even if escaping were ever missed.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out_html)), exist_ok=True)
    store.write_text(out_html, page)
    return out_html
