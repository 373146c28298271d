"""Charts as inline SVG, drawn in Python: no JavaScript library, no network, opens from disk.

Built with ``xml.etree`` so every label is escaped by the serializer; the result is marked safe
for the HTML template only because it was built here.

- ``pit_histogram``: PIT values in bins against the uniform line, with a ±2σ binomial band.
  A correct sampler gives a flat histogram; a too-hot one picks tokens the reference ranks low
  (PIT piles up near 1), a too-cold one tokens it ranks high (near 0).
- ``qq_plot``: sorted PIT against uniform quantiles, with the 95% KS band.
- ``temperature_profile``: total log-likelihood over the temperature grid, the requested and the
  effective temperature with its 95% interval.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
from markupsafe import Markup

W, H = 300, 190
LEFT, RIGHT, TOP, BOTTOM = 42, 10, 22, 30


def _svg(title: str, cls: str) -> ET.Element:
    svg = ET.Element("svg", {"xmlns": "http://www.w3.org/2000/svg", "class": f"chart {cls}",
                             "viewBox": f"0 0 {W} {H}", "width": str(W), "height": str(H),
                             "role": "img"})
    ET.SubElement(svg, "title").text = title
    t = ET.SubElement(svg, "text", {"x": str(W / 2), "y": "14", "class": "ct"})
    t.text = title
    return svg


def _line(parent: ET.Element, x1: float, y1: float, x2: float, y2: float, cls: str) -> None:
    ET.SubElement(parent, "line", {"x1": f"{x1:.1f}", "y1": f"{y1:.1f}", "x2": f"{x2:.1f}",
                                   "y2": f"{y2:.1f}", "class": cls})


def _text(parent: ET.Element, x: float, y: float, text: str, cls: str = "cl",
          anchor: str = "middle") -> None:
    t = ET.SubElement(parent, "text", {"x": f"{x:.1f}", "y": f"{y:.1f}", "class": cls,
                                       "text-anchor": anchor})
    t.text = text


class _Frame:
    """Linear axes inside the plot area."""

    def __init__(self, svg: ET.Element, x0: float, x1: float, y0: float, y1: float) -> None:
        self.svg, self.x0, self.x1, self.y0, self.y1 = svg, x0, x1, y0, y1
        _line(svg, LEFT, H - BOTTOM, W - RIGHT, H - BOTTOM, "axis")
        _line(svg, LEFT, TOP, LEFT, H - BOTTOM, "axis")

    def x(self, v: float) -> float:
        return LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def ticks(self, xs: list[tuple[float, str]], ys: list[tuple[float, str]]) -> None:
        for v, label in xs:
            _text(self.svg, self.x(v), H - BOTTOM + 12, label)
        for v, label in ys:
            _text(self.svg, LEFT - 4, self.y(v) + 3, label, anchor="end")

    def labels(self, x: str, y: str) -> None:
        _text(self.svg, (LEFT + W - RIGHT) / 2, H - 4, x)
        t = ET.SubElement(self.svg, "text", {"x": "10", "y": f"{(TOP + H - BOTTOM) / 2:.1f}",
                                             "class": "cl", "text-anchor": "middle",
                                             "transform": f"rotate(-90 10 {(TOP + H - BOTTOM) / 2:.1f})"})
        t.text = y


def _done(svg: ET.Element) -> Markup:
    # safe: built above by the serializer, which escapes every label
    return Markup(ET.tostring(svg, encoding="unicode"))


def pit_histogram(pit: np.ndarray, title: str, bins: int = 10) -> Markup:
    n = len(pit)
    counts = np.histogram(pit, bins=bins, range=(0.0, 1.0))[0]
    density = counts * bins / max(n, 1)
    band = 2 * np.sqrt(bins * (1 - 1 / bins) / max(n, 1))  # ±2σ of a bin's density under H0
    top = max(2.0, float(density.max(initial=0)) * 1.1, 1 + band * 1.1)
    svg = _svg(title, "pit")
    f = _Frame(svg, 0, 1, 0, top)
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
    _line(svg, f.x(0), f.y(1), f.x(1), f.y(1), "ref")
    f.ticks([(0, "0"), (0.5, "0.5"), (1, "1")], [(0, "0"), (1, "1"), (round(top, 1), f"{top:.1f}")])
    f.labels(f"PIT (n={n} tokens)", "density")
    return _done(svg)


def qq_plot(pit: np.ndarray, title: str) -> Markup:
    n = len(pit)
    svg = _svg(title, "qq")
    f = _Frame(svg, 0, 1, 0, 1)
    d = 1.358 / np.sqrt(max(n, 1))  # 95% KS band (asymptotic)
    band = [(0, d), (1 - d, 1), (1, 1), (1, 1 - d), (d, 0), (0, 0)]
    ET.SubElement(svg, "polygon", {"points": " ".join(f"{f.x(max(0, min(1, a))):.1f},"
                                                      f"{f.y(max(0, min(1, b))):.1f}"
                                                      for a, b in band), "class": "band"})
    _line(svg, f.x(0), f.y(0), f.x(1), f.y(1), "ref")
    xs = np.sort(pit)
    step = max(1, n // 200)  # at most ~200 points: the shape is what matters
    theory = (np.arange(n) + 0.5) / max(n, 1)
    pts = " ".join(f"{f.x(t):.1f},{f.y(v):.1f}" for t, v in zip(theory[::step], xs[::step],
                                                                strict=True))
    ET.SubElement(svg, "polyline", {"points": pts, "class": "data"})
    f.ticks([(0, "0"), (0.5, "0.5"), (1, "1")], [(0, "0"), (0.5, "0.5"), (1, "1")])
    f.labels("uniform quantile", "PIT quantile")
    return _done(svg)


def temperature_profile(temps: np.ndarray, loglik: np.ndarray, requested: float, estimate: float,
                        low: float, high: float, title: str) -> Markup:
    """``loglik[g]`` is the total log-likelihood at temperature ``temps[g]``; x on a log scale."""
    svg = _svg(title, "temp")
    ok = loglik > -1e8
    rel = loglik - loglik[ok].max() if ok.any() else np.zeros_like(loglik)
    floor = max(-20.0, float(rel[ok].min()) if ok.any() else -1.0)
    lx = np.log(temps)
    f = _Frame(svg, float(lx[0]), float(lx[-1]), floor, 0.5)
    ET.SubElement(svg, "rect", {"x": f"{f.x(np.log(low)):.1f}", "y": str(TOP),
                                "width": f"{max(1.0, f.x(np.log(high)) - f.x(np.log(low))):.1f}",
                                "height": str(H - TOP - BOTTOM), "class": "band"})
    pts = " ".join(f"{f.x(x):.1f},{f.y(max(floor, y)):.1f}" for x, y in zip(lx, rel, strict=True)
                   if y > -1e8)
    ET.SubElement(svg, "polyline", {"points": pts, "class": "data"})
    _line(svg, f.x(np.log(requested)), TOP, f.x(np.log(requested)), H - BOTTOM, "req")
    _line(svg, f.x(np.log(estimate)), TOP, f.x(np.log(estimate)), H - BOTTOM, "est")
    for value, y, text, cls in ((requested, TOP + 10, f"requested {requested:g}", "cl req-l"),
                                (estimate, TOP + 22, f"effective {estimate:.2f}", "cl est-l")):
        x = f.x(np.log(value))
        right = x < W * 0.6  # label on the side with room
        _text(svg, x + 3 if right else x - 3, y, text, cls, "start" if right else "end")
    picks = [float(temps[0]), requested, float(temps[-1])]
    f.ticks([(float(np.log(t)), f"{t:.2g}") for t in picks], [(0, "0"), (floor, f"{floor:.0f}")])
    f.labels("temperature (log scale)", "Δ log-likelihood")
    return _done(svg)
