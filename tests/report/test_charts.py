"""The report's charts are readable on a laptop: they fill their cell, their text is ≥ 12 px,
and no two labels print over each other, even when the requested and the effective temperature
are close (users saw "requested 0.8" and "effective 0.81" written on top of each other).

Overlaps are checked twice: in Python, from the emitted coordinates and the same text-width
estimate ``svg.py`` places labels with (fast, always runs), and in headless Chromium, from the
boxes the browser really drew (``measure.js``; skips only where Chromium is absent). Sizes are
measured in the browser on a real report at 1366×768 and 1280×800.
"""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servecheck.checks.core.results import GroupEvidence, TemperatureProfile
from servecheck.reference.token_scores import TEMPERATURE_FACTORS
from servecheck.report import svg
from servecheck.report.pages import environment
from tests.report.browser import needs_browser

NS = {"s": "http://www.w3.org/2000/svg"}
MIN_PX = 12.0
LAPTOPS = [(1366, 768), (1280, 800)]

# (requested, effective): equal, a hair apart, close, either order, near either end of the grid
CLOSE = [(0.8, 0.8), (0.8, 0.801), (0.8, 0.81), (0.8, 0.78), (0.8, 0.85), (0.7, 0.49),
         (1.0, 0.41), (1.0, 0.45), (1.0, 2.4), (1.0, 2.1), (0.3, 0.31), (1.5, 3.7)]


def _profile(requested: float, effective: float) -> str:
    """A temperature chart whose log-likelihood peaks at ``effective``."""
    temps = requested * TEMPERATURE_FACTORS
    loglik = -40 * (np.log(temps) - np.log(effective)) ** 2
    profile = TemperatureProfile(tuple(temps.tolist()), tuple(loglik.tolist()), requested,
                                 effective, effective * 0.9, effective * 1.1)
    return str(svg.temperature_profile(profile, "temperature · T=0.8 top_p=0.9"))


def _boxes(chart: str) -> list[tuple[str, svg.Box]]:
    """Every text's estimated box, from its emitted x, y, anchor (and rotation)."""
    out = []
    for t in ET.fromstring(chart).iterfind(".//s:text", NS):
        x, y, text = float(t.get("x", 0)), float(t.get("y", 0)), t.text or ""
        size = svg.TITLE_FONT if t.get("class") == "ct" else svg.FONT
        box = svg.text_box(x, y, text, t.get("text-anchor", "middle"), size)  # type: ignore[arg-type]
        if t.get("textLength"):
            half = float(t.get("textLength", 0)) / 2
            box = (x - half, box[1], x + half, box[3])
        if "rotate(-90" in t.get("transform", ""):  # turned about (x, y): the box turns too
            half = svg.text_width(text, size) / 2
            box = (x - svg.ASCENT * size, y - half, x + svg.DESCENT * size, y + half)
        out.append((text, box))
    return out


def _overlapping(boxes: list[tuple[str, Any]], key: Any = None) -> list[tuple[str, str]]:
    get = key or (lambda b: b)
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2)
            if svg.overlaps(get(ba), get(bb))]


@pytest.mark.parametrize(("requested", "effective"), CLOSE)
def test_temperature_labels_do_not_overlap(requested: float, effective: float) -> None:
    boxes = _boxes(_profile(requested, effective))
    assert not _overlapping(boxes)
    for text, (x0, y0, x1, y1) in boxes:
        assert x0 >= 0 and x1 <= svg.W and y0 >= 0 and y1 <= svg.H, f"{text!r} leaves the chart"
    texts = [t for t, _ in boxes]
    assert f"requested {requested:g}" in texts and f"effective {effective:.2f}" in texts


def test_close_markers_label_on_opposite_sides_or_rows() -> None:
    x = 200.0
    (ax, ay, a), (bx, by, b) = svg.marker_labels([(x, "requested 0.8"), (x + 2, "effective 0.81")])
    assert (a, b) == ("end", "start") and ay == by and ax < x < x + 2 < bx  # apart, one row
    # at the right edge there is no room on the right: the second label goes a row down
    edge = svg.W - svg.RIGHT - 3
    (_, ay, _), (_, by, _) = svg.marker_labels([(edge - 2, "requested 2.4"),
                                               (edge, "effective 2.43")])
    assert by != ay


def test_tick_labels_that_would_collide_are_dropped() -> None:
    # a badly failing server: one PIT bin 20× too full squeezes the y ticks 0 and 1 together
    pit = np.concatenate([np.full(400, 0.95), np.linspace(0, 1, 20)])
    chart = str(svg.pit_histogram(GroupEvidence.of_pit("T=1", 1, pit), "PIT histogram · T=1"))
    assert not _overlapping(_boxes(chart))


def test_long_titles_are_squeezed_into_the_chart() -> None:
    chart = str(svg.qq_plot(GroupEvidence.of_pit("g", 1, np.linspace(0, 1, 50)),
                            "PIT QQ · " + "T=0.7 top_p=0.9 top_k=5 " * 3))
    title = ET.fromstring(chart).find("s:text", NS)
    assert title is not None and float(title.get("textLength", 0)) <= svg.W - 8


def test_charts_scale_with_their_container() -> None:
    nine = GroupEvidence.of_pit("g", 1, np.linspace(0, 1, 9))
    for chart in (_profile(0.8, 0.81), str(svg.qq_plot(nine, "qq")),
                  str(svg.pit_histogram(nine, "pit"))):
        root = ET.fromstring(chart)
        assert root.get("viewBox") == f"0 0 {svg.W} {svg.H}" and root.get("width") == "100%"
        assert root.get("height") is None  # the height follows the width (aspect ratio)
    css = (Path(svg.__file__).parent / "templates" / "_style.css").read_text()
    assert re.search(r"svg\.chart \{[^}]*width: 100%[^}]*max-width: \d+px", css)
    assert re.search(r"minmax\(min\(360px, 100%\), 1fr\)", css) and svg.W == 360


def _page(tmp_path: Path, charts: list[str], width: int) -> Path:
    """The charts in the report's stylesheet, each in a cell ``width`` px wide."""
    style = environment().get_template("_style.css").render()
    cells = "".join(f'<div style="width:{width}px">{c}</div>' for c in charts)
    page = tmp_path / f"charts-{width}.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><style>{style}</style>'
                    f'</head><body><div class="charts">{cells}</div></body></html>',
                    encoding="utf-8")
    return page


def _browser_overlaps(chart: dict[str, Any]) -> list[tuple[str, str]]:
    boxes = [(t["text"], t) for t in chart["texts"]]
    return _overlapping(boxes, lambda t: (t["x0"], t["y0"], t["x1"], t["y1"]))


@needs_browser
@pytest.mark.parametrize("width", [360, 600])
def test_browser_temperature_labels_do_not_overlap(tmp_path: Path, measure, width: int) -> None:
    """The real boxes, as Chromium drew them in its own fonts, at the narrowest cell the report
    makes at laptop widths and at the widest a chart grows to."""
    got = measure(_page(tmp_path, [_profile(r, e) for r, e in CLOSE], width), 1400, 900)
    assert len(got["charts"]) == len(CLOSE)
    for (requested, effective), chart in zip(CLOSE, got["charts"], strict=True):
        assert not _browser_overlaps(chart), (requested, effective)
        for t in chart["texts"]:
            assert t["px"] >= MIN_PX, t
            assert chart["x0"] <= t["x0"] and t["x1"] <= chart["x1"] + 0.5, t
    assert abs(got["charts"][0]["x1"] - got["charts"][0]["x0"] - width) < 1


@needs_browser
@pytest.mark.parametrize(("width", "height"), LAPTOPS)
def test_browser_report_charts_readable_on_a_laptop(lite_report: Path, measure, width: int,
                                                    height: int) -> None:
    got = measure(lite_report, width, height)
    assert got["viewport"][0] == width
    charts = got["charts"]
    assert len(charts) == 6  # PIT, QQ and temperature of the lite run's two groups
    for chart in charts:
        shown = chart["x1"] - chart["x0"]
        assert shown >= 360, f"{chart['cls']} only {shown:.0f} px wide at {width} px"
        assert shown <= 600.5
        small = [t for t in chart["texts"] if t["px"] < MIN_PX]
        assert not small, f"{chart['cls']}: text under {MIN_PX} px: {small}"
        assert not _browser_overlaps(chart), chart["cls"]
    # three charts of a group side by side, none spilling out of the window
    assert max(c["x1"] for c in charts) <= width
    assert len({round(c["y0"]) for c in charts}) == 2


def _png_rgb(data: bytes, right: int, bottom: int) -> np.ndarray:
    """The pixels left of ``right`` and above ``bottom`` of an 8-bit RGB(A) PNG (what Chromium
    writes), as (rows, columns, 3). No image library is a dependency, and the format is short
    (RFC 2083: chunks, zlib, a filter per row); a row's filters run left to right, so only the
    needed corner is decoded."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", b""
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            head = body
        elif kind == b"IDAT":
            idat += body
        pos += size + 12
    width, height = int.from_bytes(head[:4], "big"), int.from_bytes(head[4:8], "big")
    assert head[8] == 8 and head[9] in (2, 6) and head[12] == 0, "not 8-bit RGB(A), plain"
    bpp = 3 if head[9] == 2 else 4
    raw = zlib.decompress(idat)
    stride, n = 1 + width * bpp, min(right, width) * bpp
    prev, rows = [0] * n, []
    for r in range(min(bottom, height)):
        kind, line = raw[r * stride], raw[r * stride + 1:r * stride + 1 + n]
        row = [0] * n
        for i in range(n):
            a = row[i - bpp] if i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = prev[i]
            elif kind == 3:
                pred = (a + prev[i]) // 2
            else:
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            row[i] = (line[i] + pred) & 255
        rows.append(row)
        prev = row
    return np.array(rows, np.int32).reshape(len(rows), -1, bpp)[:, :, :3]


FRONT = "const g = document.querySelector('.groups'); document.querySelector('main').prepend(g);"
"""Puts the parameter groups at the top of the page: headless Chromium paints only the top of
a document into a screenshot (a scrolled page comes out blank), and the charts' layout does not
depend on what is above them."""


@needs_browser
def test_browser_screenshot_at_laptop_size(lite_report: Path, chromium_run, probe, measure,
                                           tmp_path: Path) -> None:
    """At 1366×768 the first group's three charts are on screen, side by side, each drawn at
    least 360 px wide: the bars of the PIT histogram span its width in the screenshot."""
    page = probe(lite_report, FRONT)
    shot = tmp_path / "laptop.png"
    chromium_run("--hide-scrollbars", "--virtual-time-budget=3000", f"--screenshot={shot}",
                 "--window-size=1366,768", page.as_uri())
    data = shot.read_bytes()
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (1366, 768)
    charts = measure(lite_report, 1366, 768, FRONT)["charts"]
    first = [c for c in charts if c["y1"] <= 768]
    assert [c["cls"] for c in first] == ["chart pit", "chart qq", "chart temp"]
    pit = first[0]
    x0, y0, x1, y1 = (round(pit[k]) for k in ("x0", "y0", "x1", "y1"))
    assert x1 - x0 >= 360
    pixels = _png_rgb(data, x1, y1)
    bars = np.all(np.abs(pixels[y0:y1, x0:x1] - (0x5C, 0x6B, 0xC0)) <= 6, axis=2)  # svg .bar
    columns = np.flatnonzero(bars.any(axis=0))
    assert len(columns) and columns[-1] - columns[0] >= 0.7 * (x1 - x0), "bars not drawn wide"
    dark = (pixels[y0:y1, x0:x1].max(axis=2) < 100).sum()  # text and axes
    assert dark > 500
