"""The report as a reader sees it: headless Chromium renders a page offline and the
checks below read what came out (tests and bench/render_report.py share this; the
Chromium flags live here only).

One Chromium run gives three things: a PNG screenshot, the DOM as Chromium parsed it
(`--dump-dom`) and a network log (`--log-net-log`). Every host name resolves to
nothing (`--host-resolver-rules`), so a stray load cannot leave the machine, but it
still shows in the log. The checks return problems as sentences (an empty list is a
pass), so a failing test says what it saw:

- `blank_problems`: the screenshot is not empty (many colours, enough ink);
- `chart_problems`: the inline SVG charts are in the DOM and drew: thin strokes in
  the chart palette (kardia_jax/eval/svg.py PALETTE), not only legend squares;
- `offline_problems`: nothing can run or load: no <script>, on* handler or
  javascript: URL in the parsed DOM, no reference to anything outside the page, and
  no request made by the page in the network log.

The PNG is decoded here (zlib and the five PNG row filters), for 8-bit RGB / RGBA
non-interlaced images, which is what Chromium writes: no imaging library needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser

import numpy as np

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    # Nothing leaves the machine: every host name fails to resolve (the attempt is
    # still in the network log).
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
INSTALL_HINT = "apt-get install -y chromium"
REQUIRE_ENV = "KARDIA_JAX_REQUIRE_BROWSER"
NO_BROWSER = f"no chromium on PATH ({INSTALL_HINT}); {REQUIRE_ENV}=1 makes this a failure"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def chromium_or_fail() -> str | None:
    """Chromium's path; None where it is missing, or a test failure naming the
    install command when KARDIA_JAX_REQUIRE_BROWSER is set (CI installs Chromium
    and sets it)."""
    path = find_chromium()
    if path is None and browser_required():
        import pytest

        pytest.fail(f"{REQUIRE_ENV} is set but there is no chromium on PATH ({INSTALL_HINT})")
    return path


def chromium_or_skip() -> str:
    """Chromium's path for a test; without one the test skips (with the reason), or
    fails when KARDIA_JAX_REQUIRE_BROWSER is set."""
    path = chromium_or_fail()
    if path is None:
        import pytest

        pytest.skip(reason=NO_BROWSER)
    return path


# ---------------------------------------------------------------------------- render


@dataclasses.dataclass
class Rendered:
    png: str  # screenshot path
    dom: str  # the page as Chromium parsed it
    page_requests: list[str]  # URLs the page asked for (should be none)
    browser_requests: list[str]  # Chromium's own background requests (not the page's)

    @property
    def image(self) -> np.ndarray:
        with open(self.png, "rb") as f:
            return decode_png(f.read())


def render(
    html: str,
    out_png: str,
    *,
    width: int = 1200,
    height: int = 3000,
    chromium: str | None = None,
    timeout: float = 120,
) -> Rendered:
    """Renders `html` (a file) offline with a throwaway profile; screenshot to `out_png`."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError(f"no chromium on PATH ({INSTALL_HINT})")
    out_png = os.path.abspath(out_png)
    if os.path.exists(out_png):
        os.remove(out_png)
    with tempfile.TemporaryDirectory(prefix="kardia-chromium-") as profile:
        netlog = os.path.join(profile, "netlog.json")
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={os.path.join(profile, 'user')}",
            f"--log-net-log={netlog}",
            f"--screenshot={out_png}",
            f"--window-size={width},{height}",
            "--dump-dom",
            "file://" + os.path.abspath(html),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(out_png):
            raise RuntimeError(f"chromium failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        page, browser = read_netlog(netlog)
    return Rendered(out_png, proc.stdout, page, browser)


def read_netlog(path: str) -> tuple[list[str], list[str]]:
    """(page's requests, browser's own) from a --log-net-log file. A file:// page is
    not a URL request; what it loads is, with the page's (null) origin as initiator;
    Chromium's background requests say "not an origin"."""
    with open(path, encoding="utf-8") as f:
        log = json.load(f)
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    page, browser = [], []
    for e in log["events"]:
        p = e.get("params") or {}
        if names.get(e["type"]) != "URL_REQUEST_START_JOB" or "url" not in p:
            continue
        own = p.get("initiator") == "not an origin" and "file:" not in p.get(
            "network_isolation_key", ""
        )
        (browser if own else page).append(p["url"])
    return page, browser


# ------------------------------------------------------------------------------- PNG


def decode_png(data: bytes) -> np.ndarray:
    """(height, width, 3) uint8 RGB from an 8-bit RGB or RGBA non-interlaced PNG
    (alpha dropped: screenshots are opaque)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, head = 8, [], None
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if head is None:
        raise ValueError("PNG without IHDR")
    w, h, depth, ctype, _, _, interlace = head
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"PNG not 8-bit RGB/RGBA non-interlaced: {depth=} {ctype=} {interlace=}")
    bpp = 3 if ctype == 2 else 4
    stride = w * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, stride + 1)
    out = np.empty((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = raw[y, 0], raw[y, 1:]
        if kind == 0:  # None
            cur = line
        elif kind == 1:  # Sub: running sum along the row, per channel
            cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(stride)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            cur = _unfilter_row(kind, bytearray(line.tobytes()), prev.tobytes(), bpp)
        else:
            raise ValueError(f"PNG row {y}: unknown filter {kind}")
        out[y] = cur
        prev = out[y]
    return out.reshape(h, w, bpp)[:, :, :3]


def _unfilter_row(kind: int, cur: bytearray, up: bytes, bpp: int) -> np.ndarray:
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = up[i]
        if kind == 3:
            cur[i] = (cur[i] + ((a + b) >> 1)) & 255
            continue
        c = up[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return np.frombuffer(bytes(cur), np.uint8)


# ---------------------------------------------------------------------------- checks


def _palette() -> tuple[str, ...]:
    """The chart colours, less greys (antialiased text is grey too)."""
    from kardia_jax.eval.svg import PALETTE

    return tuple(c for c in PALETTE if len(set(c.lstrip("#")[i : i + 2] for i in (0, 2, 4))) > 1)


def _rgb(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) for i in (0, 2, 4)], np.float32)


def blank_problems(img: np.ndarray, *, min_colours: int = 64, min_ink: float = 0.01) -> list[str]:
    """A drawn page has many distinct colours (text antialiasing alone gives dozens)
    and some share of pixels that differ from the background (the commonest colour)."""
    flat = img.reshape(-1, 3).astype(np.uint32)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    ink = 1.0 - counts.max() / codes.size
    problems = []
    if len(values) < min_colours:
        problems.append(f"blank: only {len(values)} distinct colours (want >= {min_colours})")
    if ink < min_ink:
        problems.append(
            f"blank: {ink:.2%} of pixels differ from the background (want >= {min_ink:.0%})"
        )
    return problems


def _spread(img: np.ndarray) -> np.ndarray:
    """Per pixel, largest minus smallest channel (0 for greys)."""
    r, g, b = (img[:, :, i].astype(np.int16) for i in range(3))
    return np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)


def palette_pixels(
    img: np.ndarray, colour: str, *, min_alpha: float = 0.5, spread: np.ndarray | None = None
) -> np.ndarray:
    """Mask of pixels that are `colour` laid over white at some opacity >= min_alpha
    (antialiased strokes are exactly that): the same opacity on all three channels."""
    c = _rgb(colour)
    mask = np.zeros(img.shape[:2], bool)
    # Only pixels as colourful as the colour at min_alpha can match (most are grey).
    spread = _spread(img) if spread is None else spread
    ys, xs = np.nonzero(spread >= int(min_alpha * (c.max() - c.min())) - 2)
    alpha = (255.0 - img[ys, xs].astype(np.float32)) / np.maximum(255.0 - c, 1.0)
    hit = (alpha.min(-1) >= min_alpha) & (alpha.max(-1) - alpha.min(-1) <= 0.05)
    mask[ys[hit], xs[hit]] = True
    return mask


def _shifts(mask: np.ndarray, op) -> np.ndarray:
    h, w = mask.shape
    pad = np.pad(mask, 1, constant_values=False)
    acc = pad[1 : h + 1, 1 : w + 1].copy()
    for dy in range(3):
        for dx in range(3):
            op(acc, pad[dy : dy + h, dx : dx + w], out=acc)
    return acc


def thin_part(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` in no 3x3 square of it: strokes, not filled shapes (legend
    squares, bars, heat-map cells). Mask minus its morphological opening."""
    solid = _shifts(_shifts(mask, np.logical_and), np.logical_or)
    return mask & ~solid


def chart_strokes(img: np.ndarray) -> dict[str, tuple[int, int]]:
    """Per palette colour: (stroke pixels, filled pixels) in the screenshot."""
    out, spread = {}, _spread(img)
    for colour in _palette():
        mask = palette_pixels(img, colour, spread=spread)
        thin = int(thin_part(mask).sum())
        out[colour] = (thin, int(mask.sum()) - thin)
    return out


def chart_problems(
    img: np.ndarray, dom: str | None = None, *, min_stroke_px: int = 300
) -> list[str]:
    """The charts drew: the DOM (when given) holds inline <svg> with <polyline>s, and
    the screenshot holds >= min_stroke_px thin palette-coloured pixels (the curves;
    legend squares and bars are filled shapes and do not count)."""
    problems = []
    if dom is not None:
        n_svg, n_line = len(re.findall(r"<svg\b", dom)), len(re.findall(r"<polyline\b", dom))
        if n_svg == 0:
            problems.append("charts: no <svg> in the rendered DOM")
        elif n_line == 0:
            problems.append(f"charts: {n_svg} <svg> in the DOM but no <polyline> curve")
    strokes = chart_strokes(img)
    total = sum(s for s, _ in strokes.values())
    if total < min_stroke_px:
        seen = ", ".join(f"{c} {s}/{f}" for c, (s, f) in strokes.items())
        problems.append(
            f"charts: {total} stroke pixels in the chart colours (want >= {min_stroke_px}; "
            f"per colour stroke/filled: {seen})"
        )
    return problems


# Attributes that load something (a link's href does not, until clicked): anything but
# a data: URL or a fragment is a load.
_URL_ATTRS = {
    "src",
    "href",
    "xlink:href",
    "srcset",
    "action",
    "formaction",
    "data",
    "poster",
    "background",
    "codebase",
    "manifest",
    "ping",
}
_ACTIVE_TAGS = {"script", "iframe", "frame", "object", "embed", "applet", "base", "portal"}


class _DomScan(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        if tag in _ACTIVE_TAGS:
            self.problems.append(f"DOM has <{tag}>")
        if tag == "meta" and any(
            k == "http-equiv" and (v or "").lower() == "refresh" for k, v in attrs
        ):
            self.problems.append("DOM has <meta http-equiv=refresh>")
        self._in_style = tag == "style"
        for k, v in attrs:
            v = (v or "").strip()
            if k.startswith("on"):
                self.problems.append(f"<{tag}> has an event handler {k}={v[:60]!r}")
            elif re.match(r"\s*javascript:", v, re.I):
                self.problems.append(f"<{tag}> has a javascript: URL in {k}")
            elif (
                k in _URL_ATTRS
                and v
                and not v.startswith(("data:", "#"))
                and not (
                    tag in ("a", "area") and k in ("href", "xlink:href")  # a link loads nothing
                )
            ):
                self.problems.append(f"<{tag} {k}={v[:80]!r}> refers outside the page")
            elif k == "style":
                self._css(v, f"<{tag} style>")

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self._css(data, "<style>")

    def _css(self, css: str, where: str) -> None:
        for url in re.findall(r"url\(\s*['\"]?([^'\")]*)", css, re.I):
            if not url.strip().startswith("data:"):
                self.problems.append(f"{where} loads url({url[:80]})")
        if re.search(r"@import", css, re.I):
            self.problems.append(f"{where} has @import")


def dom_problems(dom: str) -> list[str]:
    scan = _DomScan()
    scan.feed(dom)
    scan.close()
    return scan.problems


def offline_problems(page: Rendered) -> list[str]:
    """Nothing in the page can run, and nothing was or could be fetched."""
    problems = dom_problems(page.dom)
    problems += [f"the page requested {u}" for u in page.page_requests]
    return problems


def page_problems(page: Rendered, *, charts: bool = True) -> list[str]:
    img = page.image
    problems = blank_problems(img) + offline_problems(page)
    if charts:
        problems += chart_problems(img, page.dom)
    return problems


# --------------------------------------------------------------- test page variants


def strip_charts(html: str) -> str:
    """The same page with every inline <svg>...</svg> chart removed."""
    return re.sub(r"<svg\b.*?</svg>", "", html, flags=re.S)


def inject(html: str, snippet: str, *, drop_csp: bool = False) -> str:
    """`snippet` added at the top of the body; `drop_csp` also removes the page's
    Content-Security-Policy (so a load is attempted and shows in the network log)."""
    if drop_csp:
        html, n = re.subn(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
        if n != 1:
            raise ValueError("no Content-Security-Policy meta to drop")
    if "<body>" not in html:
        raise ValueError("no <body> to inject into")
    return html.replace("<body>", "<body>" + snippet, 1)
