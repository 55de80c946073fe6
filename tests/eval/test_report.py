"""report.html: every section, training curves read back from the runs' JSONL logs
(a resumed step keeps its later row, a torn last line is left out, a corrupt log
loses its curves with a note), escaped model text, and nothing that could run or
load."""

import json
import os
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from kardia_jax.errors import DataError
from kardia_jax.eval import store
from kardia_jax.eval.metrics import Record, compute_metrics
from kardia_jax.eval.report import (
    CURVES,
    SFT_EVAL_LOG,
    SFT_LOG,
    read_log,
    resolve_run_dir,
    write_report,
)
from kardia_jax.eval.table import fmt_pct, fmt_score
from kardia_jax.rewards.rubric import DIMENSIONS

# Every element the report may contain: no script, image, frame, link or form.
SAFE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "br", "hr",
    "div", "span", "b", "i", "table", "tr", "th", "td", "details", "summary",
    "svg", "text", "line", "rect", "path", "polyline", "circle",
}  # fmt: skip
HOSTILE = "</div><script>alert('x')</script><img src=x onerror=alert(1)> & \"q\""


def elements(html: str) -> tuple[set[str], set[str]]:
    """The element names and attribute names in a page, as a browser parses it."""
    tags, attrs = set(), set()

    class P(HTMLParser):
        def handle_starttag(self, tag, a):
            tags.add(tag)
            attrs.update(k for k, _ in a)

    P().feed(html)
    return tags, attrs


def log(run_dir, logs: dict[str, dict[str, list[float]]], start: int = 1):
    """Appends rows to a run folder's JSONL logs as the drivers do: one row per step
    from `start`, {"step", field: value, ...}; the folder holds a tb/ as a run's does."""
    os.makedirs(os.path.join(run_dir, "tb"), exist_ok=True)
    for name, fields in logs.items():
        n = max(len(v) for v in fields.values())
        rows = [
            {"step": start + k, **{f: v[k] for f, v in fields.items() if k < len(v)}}
            for k in range(n)
        ]
        store.append_jsonl(os.path.join(run_dir, name), rows)


def grpo_logs(values: list[float]) -> dict[str, dict[str, list[float]]]:
    """Every GRPO log and field the report draws, each with `values`."""
    logs: dict[str, dict[str, list[float]]] = {}
    for _, stage, series in CURVES:
        for _, name, field in series:
            if stage == "grpo":
                logs.setdefault(name, {})[field] = values
    return logs


def test_logs_read_back_and_resumed_steps_keep_the_later_row(tmp_path):
    path = str(tmp_path / SFT_LOG)
    log(str(tmp_path), {SFT_LOG: {"loss": [3.0, 2.0, 1.5], "lr": [1e-4, 2e-4, 3e-4]}})
    log(str(tmp_path), {SFT_LOG: {"loss": [9.0, 1.0]}}, start=3)  # step 3 written again
    with open(path, "a", encoding="utf-8") as f:  # flags and text are no curves
        f.write(json.dumps({"step": 5, "loss": 0.5, "best": True, "note": "x"}) + "\n")
    logs = read_log(path)
    assert logs["loss"] == [(1, 3.0), (2, 2.0), (3, 9.0), (4, 1.0), (5, 0.5)]
    assert logs["lr"] == [(1, 1e-4), (2, 2e-4), (3, 3e-4)]
    assert set(logs) == {"loss", "lr"}
    # A line cut mid-write (killed writer) is left out, and the file is not repaired.
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 6, "loss": 0.')
    size = os.path.getsize(path)
    assert read_log(path)["loss"][-1] == (5, 0.5)
    assert os.path.getsize(path) == size
    assert read_log(str(tmp_path / "missing.jsonl")) == {}


def test_run_folder_or_its_tb_folder(tmp_path):
    run = str(tmp_path / "sft")
    log(run, {SFT_LOG: {"loss": [1.0]}})
    assert resolve_run_dir(run) == run
    assert resolve_run_dir(os.path.join(run, "tb")) == run
    assert resolve_run_dir(os.path.join(run, "tb") + os.sep) == run
    assert resolve_run_dir(None) is None and resolve_run_dir("") is None
    # A workdir that happens to be named tb/ and holds the logs is itself the run.
    named_tb = str(tmp_path / "tb")
    log(named_tb, {SFT_LOG: {"loss": [1.0]}})
    assert resolve_run_dir(named_tb) == named_tb


def test_a_corrupt_log_loses_its_curves_not_the_report(tmp_path):
    make_eval_dir(tmp_path / "eval")
    log(str(tmp_path / "sft"), {SFT_LOG: {"loss": [4.0, 3.0]}, SFT_EVAL_LOG: {"loss": [3.5, 3.2]}})
    with open(tmp_path / "sft" / SFT_LOG, "r+b") as f:
        f.seek(1)
        f.write(b"#")  # the first of two lines: corruption, not a torn write
    html = Path(
        write_report(
            str(tmp_path / "r.html"),
            str(tmp_path / "eval"),
            run_dirs={"sft": str(tmp_path / "sft")},
        )
    ).read_text("utf-8")
    assert f"SFT: {tmp_path / 'sft' / SFT_LOG}:1: not a JSON object" in html
    assert "GRPO: no log folder given" in html
    panel = html.split('aria-label="SFT loss"')[1].split("</svg>")[0]
    assert panel.count("<polyline") == 1 and ">held-out (last 3.2)<" in panel
    assert ">train (" not in panel
    # An existing run folder without any of the logs says which files it looked for.
    os.makedirs(tmp_path / "grpo")
    html = Path(
        write_report(
            str(tmp_path / "r.html"),
            str(tmp_path / "eval"),
            run_dirs={"grpo": str(tmp_path / "grpo")},
        )
    ).read_text("utf-8")
    assert f"GRPO: no grpo_log.jsonl or selection.jsonl rows in {tmp_path / 'grpo'}" in html
    assert 'aria-label="GRPO reward"' not in html


def make_eval_dir(path, n=24, *, miss=4, seed=0, label="lab<el>"):
    """An eval workdir of fabricated records: every `miss`-th prediction wrong, judge
    scores drawn with `seed`; the label is in every answer's reply."""
    rng = np.random.default_rng(seed)
    records, rows, scores = [], [], []
    golds = ["sad", "proud", "afraid"]
    for i in range(n):
        gold = golds[i % 3]
        pred = gold if i % miss else "angry"
        text = (
            f"<|understanding_begin|>u{i}<|understanding_end|>"
            f"<|reasoning_begin|>r<|reasoning_end|><|emotion_begin|>{pred}<|emotion_end|>"
            f"<|response_begin|>reply {label} {i} {HOSTILE}<|response_end|>"
        )
        s = [float(x) for x in rng.integers(1, 6, len(DIMENSIONS))]
        rid = f"t.jsonl:{i // 2 + 1}#{2 * (i % 2) + 2}"
        records.append(Record(rid, rid.split("#")[0], gold, text, tuple(s)))
        rows.append({"id": rid, "gold": gold, "completion": text, "user": HOSTILE, "situation": ""})
        scores.append({"id": rid, "judge": "j", "scores": s})
    results = compute_metrics(records, resamples=100)
    results["rubric"]["judge"] = "j"
    results.update(label=label, model=f"m/{label}", data="d")
    os.makedirs(path, exist_ok=True)
    store.write_text(os.path.join(path, store.RESULTS_JSON), json.dumps(results))
    store.append_jsonl(os.path.join(path, store.COMPLETIONS), rows)
    store.append_jsonl(os.path.join(path, store.SCORES), scores)
    return results


def test_report_has_every_section_and_escapes_model_text(tmp_path):
    make_eval_dir(tmp_path / "eval")
    log(str(tmp_path / "sft"), {SFT_LOG: {"loss": [4.0, 3.0, 2.5]}, SFT_EVAL_LOG: {"loss": [3.2]}})
    log(str(tmp_path / "grpo"), grpo_logs([0.1, 0.2, 0.4]))
    out = write_report(
        str(tmp_path / "r.html"),
        str(tmp_path / "eval"),
        run_dirs={"sft": str(tmp_path / "sft"), "grpo": str(tmp_path / "grpo" / "tb")},
        samples=20,
    )
    html = Path(out).read_text(encoding="utf-8")
    for heading in (
        "Results beside the paper (Table 2 layout)",
        "Our figures with bootstrap 95% intervals",
        "Rubric dimensions",
        "Training curves",
        "Emotions",
        "Sample dialogues",
    ):
        assert f"<h2>{heading}</h2>" in html
    for title, _, _ in CURVES:  # every curve panel drawn, each with data
        assert f'aria-label="{title}"' in html.replace("&#x27;", "'")
    assert html.count("<polyline") >= sum(len(t) for _, _, t in CURVES) - 1  # eval/loss: a dot
    assert html.count('<div class="sample">') == 20
    assert "20 of 24 completions" in html
    # Escaped, so the page shows the text and nothing runs or loads.
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "lab&lt;el&gt;" in html
    tags, attrs = elements(html)
    assert tags <= SAFE_TAGS, tags - SAFE_TAGS
    assert not {a for a in attrs if a.startswith("on") or a in ("src", "href")}
    assert "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html
    assert "65.78%" in html and "not comparable as equals" in html
    assert 'class="heat"' in html and 'class="diag"' in html


def test_report_without_logs_or_judge_says_so(tmp_path):
    results = make_eval_dir(tmp_path)
    results.pop("rubric")
    results["rubric"] = {"scored": False, "reason": "no evaluation judge"}
    store.write_text(str(tmp_path / store.RESULTS_JSON), json.dumps(results))
    html = Path(write_report(str(tmp_path / "r.html"), str(tmp_path))).read_text("utf-8")
    assert "Rubric dimensions not scored: no evaluation judge" in html
    assert "SFT: no log folder given" in html and "rubric not scored" in html
    with pytest.raises(DataError, match="results.json: no such file"):
        write_report(str(tmp_path / "x.html"), str(tmp_path / "missing"))


ROWS = (("Base", 1), ("SFT", 3), ("Kardia-R1 <final>", 5))  # (name, every miss-th wrong)


def make_rows_dir(path, n=24):
    """A rows workdir (eval/compare.py) of three fabricated rows on the same ids."""
    from kardia_jax.eval.compare import parse_rows, write_rows

    rows = parse_rows([(name, f"m/{name}") for name, _ in ROWS])
    results = [
        make_eval_dir(os.path.join(path, row.slug), n, miss=miss, seed=k, label=row.name)
        for k, (row, (_, miss)) in enumerate(zip(rows, ROWS, strict=True))
    ]
    write_rows(str(path), rows, results)
    return rows, results


def test_rows_report_shows_every_row_and_their_answers_side_by_side(tmp_path):
    rows, results = make_rows_dir(tmp_path / "rows")
    html = Path(write_report(str(tmp_path / "r.html"), str(tmp_path / "rows"))).read_text()
    tags, attrs = elements(html)
    assert tags <= SAFE_TAGS, tags - SAFE_TAGS
    assert not {a for a in attrs if a.startswith("on") or a in ("src", "href")}
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<final>" not in html and "Kardia-R1 &lt;final&gt;" in html

    # Table 2: our three rows, each with its interval, then the paper's rows (no interval).
    table = html.split("<h2>Results beside the paper (Table 2 layout)</h2>")[1].split("<h2>")[0]
    assert "<th>95% CI</th>" in table
    for row, r in zip(rows, results, strict=True):
        acc = r["emotion_accuracy"]
        dims = "".join(
            f"<td>{fmt_score(r['rubric']['dimensions'][d]['mean'])}</td>" for d in DIMENSIONS
        )
        cells = (
            f"<td>ours: {escape(row.name)}</td><td>{fmt_pct(acc['value'])}</td>"
            f"<td>[{fmt_pct(acc['ci95'][0])}, {fmt_pct(acc['ci95'][1])}]</td>{dims}"
        )
        assert f'<tr class="ours">{cells}</tr>' in table
    assert table.count('<tr class="ours">') == 3
    assert "<td>paper: GPT-4o</td><td>15.14%</td><td>n/a</td><td>n/a</td><td>n/a</td>" in table
    # Accuracies differ by construction: every 1st, 3rd and 5th answer is wrong.
    assert [r["emotion_accuracy"]["correct"] for r in results] == [0, 16, 19]
    for name in ("ours (Base)", "ours (SFT)", "ours (Kardia-R1 &lt;final&gt;)"):
        assert name in html  # the dimension chart's legend

    # Every sample turn shows the three rows' answers, in the rows' order, side by side.
    samples = html.split('<div class="sample">')[1:]
    assert len(samples) == 20 and "20 of 24 test turns" in html
    for sample in samples:
        rid = sample.split("<h3>")[1].split("</h3>")[0]
        i = [r["id"] for r in read_rows(tmp_path / "rows" / "base")].index(rid)
        answers = sample.split('<div class="answer">')[1:]
        assert len(answers) == 3
        for row, a in zip(rows, answers, strict=True):
            assert a.startswith(f'<div class="who">{escape(row.name)}</div>')
            assert f"reply {escape(row.name)} {i} " in a
    with pytest.raises(DataError, match="sft/results.json: no such file"):
        os.remove(tmp_path / "rows" / "sft" / store.RESULTS_JSON)
        write_report(str(tmp_path / "x.html"), str(tmp_path / "rows"))


def read_rows(path):
    return store.read_jsonl(os.path.join(path, store.COMPLETIONS))
