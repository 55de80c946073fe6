"""The browser checks of tests/browser.py: the PNG decoder against every row filter,
the pixel checks on drawn images, and, in headless Chromium, a report with a script,
an event handler or an external load is caught (the page's own CSP blocks those
loads, so the parsed DOM must catch them; without the CSP the network log does);
and the rows report (Base, SFT, final policy) is drawn with each sample turn's
answers side by side. The real report (tiny pipeline) is rendered in
tests/pipeline/test_pipeline.py."""

import importlib.util
import os
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from .. import browser
from .conftest import REPO
from .test_report import ROWS, SFT_EVAL_LOG, SFT_LOG, grpo_logs, log, make_rows_dir


def encode_png(img: np.ndarray, filters) -> bytes:
    """8-bit RGB / RGBA PNG with the given row filter per row (0-4)."""
    h, w, bpp = img.shape
    x = img.reshape(h, w * bpp).astype(np.int32)
    rows = []
    for y in range(h):
        cur = x[y]
        b = x[y - 1] if y else np.zeros_like(cur)
        a = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int32), b[:-bpp]])
        f = filters[y % len(filters)]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = (np.zeros_like(cur), a, b, (a + b) // 2, paeth)[f]
        rows.append(bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes())

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    head = struct.pack(">IIBBBBB", w, h, 8, {3: 2, 4: 6}[bpp], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [4, 1, 3, 0, 2]])
def test_png_decoder_reads_every_row_filter(channels, filters):
    rng = np.random.default_rng(channels * 10 + len(filters))
    img = rng.integers(0, 256, (9, 13, channels), dtype=np.uint8)
    img[3:6] = img[3:6] // 64 * 64  # runs of equal bytes too, not only noise
    assert np.array_equal(browser.decode_png(encode_png(img, filters)), img[:, :, :3])
    with pytest.raises(ValueError, match="not a PNG"):
        browser.decode_png(b"GIF89a")


def test_pixel_checks_on_drawn_images():
    white = np.full((200, 600, 3), 255, np.uint8)
    assert len(browser.blank_problems(white)) == 2  # one colour, no ink
    assert browser.chart_problems(white)[0].startswith("charts: 0 stroke pixels")

    blue = browser._rgb("#3b6fb6").astype(np.uint8)
    lines = white.copy()
    # A curve 1.6 pixels wide across two rows: antialiased, over white.
    for row, alpha in ((49, 0.3), (50, 1.0), (51, 0.8), (52, 0.1)):
        lines[row, 20:580] = np.round(blue * alpha + 255 * (1 - alpha)).astype(np.uint8)
    assert browser.chart_problems(lines) == []
    assert browser.chart_strokes(lines)["#3b6fb6"] == (2 * 560, 0)  # opacity >= 0.5 counts

    squares = white.copy()
    squares[20:60, 20:580] = blue  # filled: a bar or legend squares, not a curve
    squares[100:110, 20:30] = blue
    problems = browser.chart_problems(squares)
    assert problems and "#3b6fb6 0/22500" in problems[0]


def _render_script():
    spec = importlib.util.spec_from_file_location(
        "render_report", os.path.join(REPO, "bench", "render_report.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """A report from fabricated records (bench/render_report.py --demo): every section,
    with hostile model text that must show as text."""
    browser.chromium_or_skip()
    path = _render_script().demo(str(tmp_path_factory.mktemp("demo")))
    with open(path, encoding="utf-8") as f:
        return f.read()


# (name, snippet, drop the page's CSP, the problem that must be reported)
HOSTILE_PAGES = [
    ("script", "<script>document.title='ran'</script>", False, "DOM has <script>"),
    ("handler", '<img src="data:," onerror="document.title=1">', False, "event handler onerror"),
    (
        "external image",
        '<img src="http://example.com/x.png">',
        False,
        "<img src='http://example.com/x.png'> refers outside the page",
    ),
    (
        "external image, no CSP",
        '<img src="http://example.com/x.png">',
        True,
        "the page requested http://example.com/x.png",
    ),
    (
        "css url, no CSP",
        '<p style="background:url(https://example.org/bg.png)">x</p>',
        True,
        "the page requested https://example.org/bg.png",
    ),
]


@pytest.mark.parametrize(
    "snippet,drop_csp,expected", [p[1:] for p in HOSTILE_PAGES], ids=[p[0] for p in HOSTILE_PAGES]
)
def test_a_report_that_runs_or_loads_something_is_caught(
    demo_report, tmp_path, snippet, drop_csp, expected
):
    chromium = browser.chromium_or_skip()
    page = tmp_path / "report.html"
    page.write_text(browser.inject(demo_report, snippet, drop_csp=drop_csp))
    shot = browser.render(str(page), str(tmp_path / "shot.png"), height=400, chromium=chromium)
    problems = browser.offline_problems(shot)
    assert any(expected in p for p in problems), problems
    # The escaped hostile model text in the demo report is text, never an element.
    assert not any("alert" in p for p in problems), problems


def test_curves_that_do_not_draw_fail_the_chart_check(demo_report, tmp_path):
    """The chart check counts curves, not legend squares or bars: with every curve's
    points emptied (the <svg> and <polyline> elements still there) it fails."""
    chromium = browser.chromium_or_skip()
    clean, empty = tmp_path / "clean.html", tmp_path / "no-curves.html"
    clean.write_text(demo_report)
    empty.write_text(re.sub(r'<polyline points="[^"]*"', '<polyline points=""', demo_report))

    def shoot(html):  # 2000 pixels high: the bar chart and the curves are in view
        png = str(html.with_suffix(".png"))
        return browser.render(str(html), png, height=2000, chromium=chromium)

    with ThreadPoolExecutor(2) as pool:
        ok, bad = pool.map(shoot, [clean, empty])
    assert browser.chart_problems(ok.image, ok.dom) == []
    problems = browser.chart_problems(bad.image, bad.dom)
    # (a few heat-map pixels pass for the green; far from a curve's worth)
    assert len(problems) == 1 and "stroke pixels in the chart colours" in problems[0], problems
    assert "#3b6fb6 0/" in problems[0]  # the legend squares and bars are there, filled


ANSWER_BORDER = "#4f6d9a"  # report.py's .answer top border: in no chart's palette


def side_by_side(img: np.ndarray) -> list[tuple[int, int]]:
    """The horizontal runs (>= 100 pixels) of the answer border's colour on the first
    screen row that has any: one per answer column drawn next to each other."""
    mask = np.all(img == browser._rgb(ANSWER_BORDER).astype(np.uint8), axis=-1)
    ys = np.nonzero(mask.any(axis=1))[0]
    assert len(ys), "no answer border drawn"
    edges = np.diff(np.concatenate([[0], mask[ys[0]].astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b - a >= 100]


def test_rows_report_in_the_browser(tmp_path):
    """The rows report is drawn, its charts show, nothing runs or loads, and each
    sample turn's three answers stand in three columns; the same page with the
    columns stacked fails that check."""
    from kardia_jax.eval.report import write_report

    chromium = browser.chromium_or_skip()
    make_rows_dir(tmp_path / "rows")
    log(
        str(tmp_path / "sft"),
        {SFT_LOG: {"loss": [4.0, 3.0, 2.5, 2.0]}, SFT_EVAL_LOG: {"loss": [3.2, 2.4]}},
    )
    log(str(tmp_path / "grpo"), grpo_logs([0.1, 0.2, 0.4]))
    page = tmp_path / "report.html"
    runs = {"sft": str(tmp_path / "sft"), "grpo": str(tmp_path / "grpo")}
    write_report(str(page), str(tmp_path / "rows"), run_dirs=runs, samples=2)
    stacked = tmp_path / "stacked.html"
    stacked.write_text(
        page.read_text().replace("</style>", ".cols{display:block !important}</style>", 1)
    )

    def shoot(html):  # 2600 pixels high: the first sample's answers are in view
        return browser.render(
            str(html), str(html.with_suffix(".png")), height=2600, chromium=chromium
        )

    with ThreadPoolExecutor(2) as pool:
        ok, bad = pool.map(shoot, [page, stacked])
    assert browser.page_problems(ok) == [], ok.png
    assert ok.dom.count('<tr class="ours">') == len(ROWS)
    runs = side_by_side(ok.image)
    assert len(runs) == len(ROWS), runs  # three columns on one screen row
    widths = [b - a for a, b in runs]
    assert max(widths) - min(widths) <= 2 and min(widths) > 250, runs  # equal columns
    assert len(side_by_side(bad.image)) == 1
