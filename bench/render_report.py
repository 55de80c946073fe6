"""Renders an eval report.html in headless Chromium and saves a screenshot, to look at
what a reader sees (charts drawn, tables laid out, model text escaped).

    python bench/render_report.py WORKDIR/report.html --out shot.png
    python bench/render_report.py --demo /tmp/report-demo --out shot.png

`--demo DIR` first writes a report from fabricated records (every dimension scored,
hostile model text, SFT and GRPO JSONL logs with every curve the report
draws), so the layout can be checked without a model. Chromium runs offline, with
a throwaway profile: `apt-get install -y chromium` (Debian) provides it. `--check`
also runs the tests' checks on the render (tests/browser.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

# The Chromium flags, the offline render and the page checks: tests/browser.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.browser import Rendered, page_problems, render  # noqa: E402


def screenshot(
    html: str, out_png: str, width: int = 1200, height: int = 3000, offset: int = 0
) -> Rendered:
    """`offset` > 0 shows the page from that many pixels down (a shifted copy is
    rendered: headless screenshots always start at the top), to look at one part
    at full resolution."""
    with tempfile.TemporaryDirectory() as tmp:
        if offset:
            with open(html, encoding="utf-8") as f:
                page = f.read()
            shift = f"<style>body{{margin-top:-{offset}px !important}}</style></head>"
            html = os.path.join(tmp, "shifted.html")
            with open(html, "w", encoding="utf-8") as f:
                f.write(page.replace("</head>", shift, 1))
        try:
            return render(html, out_png, width=width, height=height)
        except RuntimeError as e:
            raise SystemExit(str(e)) from None


def demo(workdir: str) -> str:
    """A report from fabricated records and logs (no model); returns its path."""
    import numpy as np

    from kardia_jax.data.emotions import EMOTIONS
    from kardia_jax.eval import store
    from kardia_jax.eval.metrics import Record, compute_metrics
    from kardia_jax.eval.report import (
        GRPO_LOG,
        SELECTION_LOG,
        SFT_EVAL_LOG,
        SFT_LOG,
        write_report,
    )
    from kardia_jax.rewards.rubric import DIMENSIONS

    rng = np.random.default_rng(0)
    os.makedirs(workdir, exist_ok=True)
    records, rows, scores = [], [], []
    golds = list(EMOTIONS[:10])
    for i in range(60):
        gold = golds[i % len(golds)]
        pred = gold if rng.random() < 0.6 else golds[rng.integers(len(golds))]
        if i % 11 == 3:  # hostile text: must show as text, never run
            text = "<script>alert('x')</script><b>bold?</b> & no spans"
        else:
            text = (
                f"<|understanding_begin|>They feel {gold} about it.<|understanding_end|>\n"
                f"<|reasoning_begin|>Because <i>something</i> happened.<|reasoning_end|>\n"
                f"<|emotion_begin|>{pred}<|emotion_end|>\n"
                f"<|response_begin|>That sounds hard; I'm here.<|response_end|>"
            )
        s = np.clip(rng.normal([3.6, 4.2, 3.4, 3.9, 4.6], 0.6), 1, 5).round(3).tolist()
        rid = f"test.jsonl:{i // 3 + 1}#{2 * (i % 3) + 2}"
        records.append(Record(rid, rid.split("#")[0], gold, text, tuple(s)))
        rows.append(
            {
                "id": rid,
                "gold": gold,
                "situation": 'My <neighbour> said "hi" & left.',
                "user": "I can't stop thinking about it.",
                "completion": text,
                "finish_reason": "eos",
                "tokens": 40,
            }
        )
        scores.append({"id": rid, "judge": "demo-judge", "scores": s})
    results = compute_metrics(records, resamples=1000, seed=0)
    results["rubric"]["judge"] = "demo-judge"
    results["counts"].update(hit_token_limit=2)
    results.update(label="demo (fabricated)", model="(none: fabricated)", data="(fabricated)")
    store.write_text(os.path.join(workdir, store.RESULTS_JSON), json.dumps(results))
    store.write_text(os.path.join(workdir, store.COMPLETIONS), "")
    store.append_jsonl(os.path.join(workdir, store.COMPLETIONS), rows)
    store.append_jsonl(os.path.join(workdir, store.SCORES), scores)
    logs = {name: [] for name in (SFT_LOG, SFT_EVAL_LOG, GRPO_LOG, SELECTION_LOG)}
    for t in range(1, 61):
        logs[SFT_LOG].append({"step": t, "loss": 6 * np.exp(-t / 15) + 0.8 + 0.05 * rng.random()})
        if t % 20 == 0:
            logs[SFT_EVAL_LOG].append({"step": t, "loss": 6 * np.exp(-t / 15) + 1.0})
    for t in range(1, 41):
        row = {"step": t}
        for k, base in (("total", 0.5), ("format", 0.8), ("emotion", 0.4), ("rubric", 0.6)):
            row[f"reward/{k}"] = base + 0.004 * t + 0.03 * rng.random()
        for j, d in enumerate(DIMENSIONS):
            row[f"reward/rubric/{d}"] = 3 + 0.2 * j + 0.01 * t
        row["kl"] = 0.001 * t * (1 + 0.2 * rng.random())
        row["completion/length_mean"] = 150 - t + 5 * rng.random()
        row["completion/length_max"] = 256
        logs[GRPO_LOG].append(row)
        if t % 10 == 0:
            logs[SELECTION_LOG].append({"step": t, "reward/total": 0.45 + 0.004 * t})
    for name, log_rows in logs.items():
        stage = "sft" if name in (SFT_LOG, SFT_EVAL_LOG) else "grpo"
        os.makedirs(os.path.join(workdir, stage), exist_ok=True)
        store.append_jsonl(os.path.join(workdir, stage, name), log_rows)
    return write_report(
        os.path.join(workdir, store.REPORT_HTML),
        workdir,
        run_dirs={"sft": os.path.join(workdir, "sft"), "grpo": os.path.join(workdir, "grpo")},
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", nargs="?", help="report.html to render")
    p.add_argument("--demo", metavar="DIR", help="write a fabricated report in DIR first")
    p.add_argument("--out", default="report.png")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--offset", type=int, default=0, help="start this many pixels down")
    p.add_argument(
        "--check",
        action="store_true",
        help="also check the render (tests/browser.py): not blank, charts drawn, nothing "
        "run or fetched; exit 1 on a problem",
    )
    a = p.parse_args(argv)
    html = demo(a.demo) if a.demo else a.html
    if not html:
        p.error("give a report.html or --demo DIR")
    shot = screenshot(html, a.out, a.width, a.height, a.offset)
    print(shot.png)
    if not a.check:
        return 0
    problems = page_problems(shot)
    for line in problems:
        print(f"problem: {line}")
    print(f"checked: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
