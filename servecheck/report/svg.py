"""Charts as inline SVG, drawn in Python: no JavaScript library, no network, opens from disk.

Built with ``xml.etree`` so every label is escaped by the serializer; the result is marked safe
for the HTML template only because it was built here.

- ``pit_histogram``: PIT values in bins against the uniform line, with a ±2σ binomial band.
  A correct sampler gives a flat histogram; a too-hot one picks tokens the reference ranks low
  (PIT piles up near 1), a too-cold one tokens it ranks high (near 0).
- ``qq_plot``: sorted PIT against uniform quantiles, with the 95% KS band.
- ``temperature_profile``: total log-likelihood over the temperature grid, the requested and the
  effective temperature with its simultaneous interval (the check's own level, 1 − α/m).

Sizing: a chart has a ``viewBox`` and ``width="100%"``, so it fills its grid cell; the report's
CSS never makes a cell narrower than ``W`` px on a laptop screen, so the font sizes below (in
user units) render at least as large in CSS pixels. Labels are placed, not just drawn: every
text's box is estimated (``text_box``) and a label that would overlap one already placed moves
(a marker label to the other side of its line or a row down; a tick label is dropped), because
requested and effective temperatures are often close and their labels used to print over each
other.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Literal

import numpy as np
from markupsafe import Markup

from servecheck.checks.core.results import GroupEvidence, TemperatureProfile

W, H = 360, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 28, 44
FONT, TITLE_FONT = 12, 13
"""Font sizes in user units (= CSS px when the chart is drawn ``W`` px wide, the narrowest
the report's grid makes it at laptop widths)."""
EM = 0.62
"""Estimated advance per character, in em: DejaVu Sans (Chromium's Linux default) averages
about 0.6 for digits and lower case; a little generous, so estimated boxes hold the real ones."""
ASCENT, DESCENT = 0.93, 0.24
GAP = 4.0
"""Pixels kept between two labels, and between a marker line and its label."""

Anchor = Literal["start", "middle", "end"]
Box = tuple[float, float, float, float]
"""x0, y0, x1, y1 in user units."""


def text_width(text: str, size: float = FONT) -> float:
    return len(text) * EM * size


def text_box(x: float, y: float, text: str, anchor: Anchor = "middle", size: float = FONT
             ) -> Box:
    """The estimated box of a text whose baseline starts (``start``), centres (``middle``) or
    ends (``end``) at (x, y)."""
    w = text_width(text, size)
    x0 = x - {"start": 0.0, "middle": w / 2, "end": w}[anchor]
    return x0, y - ASCENT * size, x0 + w, y + DESCENT * size


def overlaps(a: Box, b: Box, gap: float = 0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


class _Chart:
    """An SVG element and the boxes of the texts placed in it so far."""

    def __init__(self, title: str, cls: str) -> None:
        self.svg = ET.Element("svg", {"xmlns": "http://www.w3.org/2000/svg",
                                      "class": f"chart {cls}", "viewBox": f"0 0 {W} {H}",
                                      "width": "100%", "preserveAspectRatio": "xMidYMid meet",
                                      "role": "img"})
        ET.SubElement(self.svg, "title").text = title
        self.boxes: list[Box] = []
        attrs = {}
        if text_width(title, TITLE_FONT) > W - 8:
            # a long group label: squeeze the title into the chart rather than clip it
            attrs = {"textLength": str(W - 8), "lengthAdjust": "spacingAndGlyphs"}
        self.text(W / 2, 18, title, "ct", size=TITLE_FONT, **attrs)

    def free(self, box: Box, gap: float = GAP) -> bool:
        return not any(overlaps(box, b, gap) for b in self.boxes)

    def text(self, x: float, y: float, text: str, cls: str = "cl", anchor: Anchor = "middle",
             size: float = FONT, **attrs: str) -> None:
        t = ET.SubElement(self.svg, "text", {"x": f"{x:.1f}", "y": f"{y:.1f}", "class": cls,
                                             "text-anchor": anchor, **attrs})
        t.text = text
        box = text_box(x, y, text, anchor, size)
        if "textLength" in attrs:
            box = (x - (W - 8) / 2, box[1], x + (W - 8) / 2, box[3])
        self.boxes.append(box)

    def line(self, x1: float, y1: float, x2: float, y2: float, cls: str) -> None:
        ET.SubElement(self.svg, "line", {"x1": f"{x1:.1f}", "y1": f"{y1:.1f}", "x2": f"{x2:.1f}",
                                         "y2": f"{y2:.1f}", "class": cls})

    def done(self) -> Markup:
        # safe: built above by the serializer, which escapes every label
        return Markup(ET.tostring(self.svg, encoding="unicode"))


class _Frame:
    """Linear axes inside the plot area."""

    def __init__(self, chart: _Chart, x0: float, x1: float, y0: float, y1: float) -> None:
        self.chart, self.svg = chart, chart.svg
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1
        chart.line(LEFT, H - BOTTOM, W - RIGHT, H - BOTTOM, "axis")
        chart.line(LEFT, TOP, LEFT, H - BOTTOM, "axis")

    def x(self, v: float) -> float:
        return LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def ticks(self, xs: list[tuple[float, str]], ys: list[tuple[float, str]]) -> None:
        """Tick labels in order of importance: one that would overlap an earlier one is left out
        (its value is on the axis anyway, and two numbers printed over each other say nothing)."""
        c = self.chart
        for v, label in xs:
            half = text_width(label) / 2  # an end tick's label stays inside the chart
            x, y = min(max(self.x(v), half + 1), W - 1 - half), H - BOTTOM + 20
            if c.free(text_box(x, y, label), 1):
                c.text(x, y, label)
        for v, label in ys:
            x, y = LEFT - 6, self.y(v) + 4
            if c.free(text_box(x, y, label, "end"), 1):
                c.text(x, y, label, anchor="end")

    def labels(self, x: str, y: str) -> None:
        c = self.chart
        c.text((LEFT + W - RIGHT) / 2, H - 8, x)
        mid = (TOP + H - BOTTOM) / 2
        t = ET.SubElement(c.svg, "text", {"x": "16", "y": f"{mid:.1f}", "class": "cl",
                                          "text-anchor": "middle",
                                          "transform": f"rotate(-90 16 {mid:.1f})"})
        t.text = y
        half = text_width(y) / 2
        c.boxes.append((16 - ASCENT * FONT, mid - half, 16 + DESCENT * FONT, mid + half))


def marker_labels(marks: list[tuple[float, str]], taken: list[Box] | None = None
                  ) -> list[tuple[float, float, Anchor]]:
    """Where to write the label of each vertical marker line at x: (x, baseline y, anchor).

    Each label goes beside its line on the side away from its nearest neighbour, so two close
    lines get their labels on opposite sides; where that side leaves the plot or meets a label
    already placed (or one of ``taken``), the other side; then the next row down.
    """
    order = sorted(range(len(marks)), key=lambda k: (marks[k][0], k))
    placed: list[Box] = list(taken or [])
    out: dict[int, tuple[float, float, Anchor]] = {}
    for rank, k in enumerate(order):
        x, text = marks[k]
        others = [marks[j][0] for j in order if j != k]
        nearest = min(others, key=lambda o: abs(o - x)) if others else None
        left_first = nearest is not None and (nearest > x or (nearest == x and rank == 0))
        sides: list[Anchor] = ["end", "start"] if left_first else ["start", "end"]
        choice: tuple[float, float, Anchor] | None = None
        for row in range(len(marks) + 1):
            y = TOP + FONT + 4 + row * round(FONT * 1.35)
            for anchor in sides:
                lx = x - GAP if anchor == "end" else x + GAP
                box = text_box(lx, y, text, anchor)
                inside = box[0] >= LEFT + 2 and box[2] <= W - 2
                if inside and not any(overlaps(box, b, GAP) for b in placed):
                    choice = (lx, y, anchor)
                    break
            if choice:
                break
        if choice is None:  # nowhere free: a row of its own, kept inside the chart
            y = TOP + FONT + 4 + len(marks) * round(FONT * 1.35)
            w = text_width(text)
            choice = (min(max(x - w / 2, LEFT + 2), W - 2 - w), y, "start")
        placed.append(text_box(*choice[:2], text, choice[2]))
        out[k] = choice
    return [out[k] for k in range(len(marks))]


def pit_histogram(g: GroupEvidence, title: str) -> Markup:
    n, counts, bins = g.tokens, np.asarray(g.pit_counts), len(g.pit_counts)
    density = counts * bins / max(n, 1)
    band = 2 * np.sqrt(bins * (1 - 1 / bins) / max(n, 1))  # ±2σ of a bin's density under H0
    top = max(2.0, float(density.max(initial=0)) * 1.1, 1 + band * 1.1)
    c = _Chart(title, "pit")
    svg = c.svg
    f = _Frame(c, 0, 1, 0, top)
    ET.SubElement(svg, "rect", {"x": f"{f.x(0):.1f}", "y": f"{f.y(1 + band):.1f}",
                                "width": f"{f.x(1) - f.x(0):.1f}",
                                "height": f"{f.y(max(0, 1 - band)) - f.y(1 + band):.1f}",
                                "class": "band"})
    for b, d in enumerate(density):
        x0, x1 = f.x(b / bins), f.x((b + 1) / bins)
        bar = ET.SubElement(svg, "rect", {"x": f"{x0 + 1:.1f}", "y": f"{f.y(d):.1f}",
                                          "width": f"{x1 - x0 - 2:.1f}",
                                          "height": f"{f.y(0) - f.y(d):.1f}", "class": "bar"})
        ET.SubElement(bar, "title").text = (f"PIT {b / bins:.1f}–{(b + 1) / bins:.1f}: "
                                            f"{counts[b]} tokens (density {d:.2f})")
    c.line(f.x(0), f.y(1), f.x(1), f.y(1), "ref")
    f.ticks([(0, "0"), (0.5, "0.5"), (1, "1")],
            [(0, "0"), (round(top, 1), f"{top:.1f}"), (1, "1")])
    f.labels(f"PIT (n={n} tokens)", "density")
    return c.done()


def qq_plot(g: GroupEvidence, title: str) -> Markup:
    n = g.tokens
    c = _Chart(title, "qq")
    svg = c.svg
    f = _Frame(c, 0, 1, 0, 1)
    d = 1.358 / np.sqrt(max(n, 1))  # 95% KS band (asymptotic)
    band = [(0, d), (1 - d, 1), (1, 1), (1, 1 - d), (d, 0), (0, 0)]
    ET.SubElement(svg, "polygon", {"points": " ".join(f"{f.x(max(0, min(1, a))):.1f},"
                                                      f"{f.y(max(0, min(1, b))):.1f}"
                                                      for a, b in band), "class": "band"})
    c.line(f.x(0), f.y(0), f.x(1), f.y(1), "ref")
    pts = " ".join(f"{f.x(t):.1f},{f.y(v):.1f}" for t, v in g.pit_quantiles)
    ET.SubElement(svg, "polyline", {"points": pts, "class": "data"})
    f.ticks([(0, "0"), (0.5, "0.5"), (1, "1")], [(0, "0"), (0.5, "0.5"), (1, "1")])
    f.labels("uniform quantile", "PIT quantile")
    return c.done()


def temperature_profile(p: TemperatureProfile, title: str) -> Markup:
    """The profile log-likelihood over the temperature grid, as the test read it; x on a log
    scale."""
    temps, loglik = np.asarray(p.temperatures), np.asarray(p.loglik)
    requested, estimate, low, high = p.requested, p.estimate, p.low, p.high
    c = _Chart(title, "temp")
    svg = c.svg
    ok = loglik > -1e8
    rel = loglik - loglik[ok].max() if ok.any() else np.zeros_like(loglik)
    floor = max(-20.0, float(rel[ok].min()) if ok.any() else -1.0)
    lx = np.log(temps)
    f = _Frame(c, float(lx[0]), float(lx[-1]), floor, 0.5)
    ET.SubElement(svg, "rect", {"x": f"{f.x(np.log(low)):.1f}", "y": str(TOP),
                                "width": f"{max(1.0, f.x(np.log(high)) - f.x(np.log(low))):.1f}",
                                "height": str(H - TOP - BOTTOM), "class": "band"})
    pts = " ".join(f"{f.x(x):.1f},{f.y(max(floor, y)):.1f}" for x, y in zip(lx, rel, strict=True)
                   if y > -1e8)
    ET.SubElement(svg, "polyline", {"points": pts, "class": "data"})
    c.line(f.x(np.log(requested)), TOP, f.x(np.log(requested)), H - BOTTOM, "req")
    c.line(f.x(np.log(estimate)), TOP, f.x(np.log(estimate)), H - BOTTOM, "est")
    marks = [(f.x(np.log(requested)), f"requested {requested:g}", "cl mk req-l"),
             (f.x(np.log(estimate)), f"effective {estimate:.2f}", "cl mk est-l")]
    spots = marker_labels([(x, text) for x, text, _ in marks], c.boxes)
    for (x, y, anchor), (_, text, cls) in zip(spots, marks, strict=True):
        c.text(x, y, text, cls, anchor)
    picks = [requested, float(temps[0]), float(temps[-1])]
    f.ticks([(float(np.log(t)), f"{t:.2g}") for t in picks],
            [(0, "0"), (floor, f"{floor:.3g}")])
    f.labels("temperature (log scale)", "Δ log-likelihood")
    return c.done()
