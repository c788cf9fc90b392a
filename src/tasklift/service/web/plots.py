"""SVG drawn on the server: percent-done bars, the job-duration histogram, convergence plots.

Every function returns markup that is safe to inline (all text is escaped); colours come from
CSS classes (``monitor.css``), so a plot follows the page's palette.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from markupsafe import Markup, escape

__all__ = ["ConvergencePoint", "convergence_svg", "histogram_svg", "nice_ticks", "progress_svg"]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks: list[float] = []
    i = first
    while i * step <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(i * step, 12) + 0.0)
        i += 1
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.6g}" if abs(value) >= 1 else f"{value:.3g}"


def _fmt_seconds(value: float) -> str:
    if value == 0:
        return "0"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    if value < 120:
        return f"{value:.3g} s"
    return f"{value / 60:.3g} min"


def progress_svg(finished: int, failed: int, cancelled: int, total: int) -> Markup:
    """A small stacked bar: finished, failed and cancelled shares of ``total`` jobs."""
    width, height = 120.0, 12.0
    parts = [("finished", finished), ("failed", failed), ("cancelled", cancelled)]
    done = finished + failed + cancelled
    percent = 100.0 * done / total if total else 100.0
    label = (
        f"{percent:.0f}% done: {finished} finished, {failed} failed, {cancelled} cancelled "
        f"of {total} jobs"
    )
    out = [
        f'<svg class="bar" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
        f'height="{height:.0f}" role="img" aria-label="{escape(label)}">',
        f'<rect class="bar-bg" x="0" y="0" width="{width:.0f}" height="{height:.0f}" rx="2"/>',
    ]
    x = 0.0
    for name, count in parts:
        if total and count:
            w = width * count / total
            out.append(
                f'<rect class="bar-{name}" x="{x:.2f}" y="0" width="{w:.2f}" '
                f'height="{height:.0f}"/>'
            )
            x += w
    out.append("</svg>")
    return Markup("".join(out))


def _tick(
    text: str, line_class: str, line: tuple[object, ...], at: tuple[object, ...], anchor: str
) -> list[str]:
    """An axis tick (or grid line) from ``line`` = (x1, y1, x2, y2), and its label at ``at``."""
    x1, y1, x2, y2 = line
    return [
        f'<line class="{line_class}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}"/>',
        f'<text class="tick-label" x="{at[0]}" y="{at[1]}" text-anchor="{anchor}">'
        f"{escape(text)}</text>",
    ]


@dataclass(frozen=True)
class _Frame:
    """Plot area inside an SVG of ``width`` x ``height`` with data ranges mapped onto it."""

    width: float
    height: float
    x0: float
    x1: float
    y0: float
    y1: float
    left: float = 64.0
    right: float = 16.0
    top: float = 14.0
    bottom: float = 42.0

    def x(self, value: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return self.left + (value - self.x0) / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return (
            self.height
            - self.bottom
            - (value - self.y0) / span * (self.height - self.top - self.bottom)
        )

    def axes(self, xticks: list[tuple[float, str]], yticks: list[tuple[float, str]]) -> list[str]:
        bottom, right = self.height - self.bottom, self.width - self.right
        out = [
            f'<line class="axis" x1="{self.left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
            f'<line class="axis" x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{bottom}"/>',
        ]
        for value, text in xticks:
            px = f"{self.x(value):.1f}"
            out += _tick(text, "tick", (px, bottom, px, bottom + 4), (px, bottom + 16), "middle")
        for value, text in yticks:
            py = self.y(value)
            line = (self.left, f"{py:.1f}", right, f"{py:.1f}")
            out += _tick(text, "grid", line, (self.left - 6, f"{py + 4:.1f}"), "end")
        return out

    def xlabel(self, text: str) -> str:
        mid = (self.left + self.width - self.right) / 2
        return (
            f'<text class="axis-label" x="{mid:.1f}" y="{self.height - 6}" '
            f'text-anchor="middle">{escape(text)}</text>'
        )

    def ylabel(self, text: str) -> str:
        mid = (self.top + self.height - self.bottom) / 2
        return (
            f'<text class="axis-label" transform="translate(14 {mid:.1f}) rotate(-90)" '
            f'text-anchor="middle">{escape(text)}</text>'
        )


def _open(width: float, height: float, title: str, css: str) -> str:
    return (
        f'<svg class="plot {css}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">'
        f"<title>{escape(title)}</title>"
    )


def histogram_svg(
    values: Sequence[float], *, title: str, width: float = 640, height: float = 220
) -> Markup:
    """A histogram of durations in seconds (about 20 bins, each bar with a tooltip)."""
    clean = [v for v in values if math.isfinite(v)]
    if not clean:
        return Markup('<p class="muted">No durations yet.</p>')
    lo, hi = min(clean), max(clean)
    if hi - lo < 1e-9:
        lo, hi = max(0.0, lo - 0.5), hi + 0.5
    n_bins = max(5, min(24, round(math.sqrt(len(clean)))))
    step = (hi - lo) / n_bins
    counts = [0] * n_bins
    for v in clean:
        counts[min(n_bins - 1, int((v - lo) / step))] += 1
    top = max(counts)
    frame = _Frame(width, height, lo, hi, 0.0, top * 1.05)
    xticks = [(t, _fmt_seconds(t)) for t in nice_ticks(lo, hi, 6) if lo <= t <= hi]
    yticks = [(t, f"{t:.0f}") for t in nice_ticks(0, top, 4) if t == int(t)]
    out = [_open(width, height, title, "histogram"), *frame.axes(xticks, yticks)]
    for i, count in enumerate(counts):
        if not count:
            continue
        a, b = lo + i * step, lo + (i + 1) * step
        x, y = frame.x(a), frame.y(count)
        w = max(1.0, frame.x(b) - x - 1)
        tip = f"{_fmt_seconds(a)} to {_fmt_seconds(b)}: {count} jobs"
        out.append(
            f'<rect class="hist-bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
            f'height="{frame.y(0) - y:.1f}"><title>{escape(tip)}</title></rect>'
        )
    out.append(frame.xlabel("job duration"))
    out.append(frame.ylabel("jobs"))
    out.append("</svg>")
    return Markup("".join(out))


class ConvergencePoint(NamedTuple):
    """One job's value: its position in the workflow, value and iteration (work)."""

    x: int
    value: float
    iteration: int
    label: str


def convergence_svg(
    points: Sequence[ConvergencePoint],
    best: Sequence[tuple[int, int, float]],
    *,
    title: str,
    value_label: str,
    width: float = 760,
    height: float = 320,
) -> Markup:
    """Values per job (dots) and the best so far per iteration (a step line).

    Args:
        points: one per job, in workflow order.
        best: ``(first x, last x, best so far)`` per iteration.
        title: the accessible title of the plot.
        value_label: the y axis label.
        width: SVG width in user units.
        height: SVG height in user units.
    """
    if not points:
        return Markup('<p class="muted">No numeric results yet.</p>')
    ys = [p.value for p in points]
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 0.5)
    x0, x1 = points[0].x - 0.5, points[-1].x + 0.5
    frame = _Frame(width, height, x0, x1, lo - pad, hi + pad)
    xticks = [(t, f"{t:.0f}") for t in nice_ticks(x0, x1, 8) if t == int(t) and x0 <= t <= x1]
    yticks = [(t, _fmt(t)) for t in nice_ticks(lo - pad, hi + pad, 5)]
    out = [_open(width, height, title, "convergence"), *frame.axes(xticks, yticks)]
    if len(best) <= 60:
        for first, _last, _value in best[1:]:
            px = frame.x(first - 0.5)
            out.append(
                f'<line class="iter-line" x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" '
                f'y2="{frame.y(lo - pad):.1f}"/>'
            )
    for p in points:
        tip = f"{p.label}: {_fmt(p.value)}"
        out.append(
            f'<circle class="pt it-{p.iteration % 2}" cx="{frame.x(p.x):.1f}" '
            f'cy="{frame.y(p.value):.1f}" r="2.6"><title>{escape(tip)}</title></circle>'
        )
    path: list[str] = []
    for first, last, value in best:
        py = frame.y(value)
        cmd = "M" if not path else "L"
        path.append(f"{cmd}{frame.x(first - 0.5):.1f},{py:.1f} L{frame.x(last + 0.5):.1f},{py:.1f}")
    out.append(f'<path class="best-line" d="{" ".join(path)}"/>')
    for first, last, value in best:
        tip = f"best so far after jobs {first} to {last}: {_fmt(value)}"
        out.append(
            f'<circle class="best-pt" cx="{frame.x(last + 0.5):.1f}" cy="{frame.y(value):.1f}" '
            f'r="3.5"><title>{escape(tip)}</title></circle>'
        )
    out.append(frame.xlabel("job (in submission order)"))
    out.append(frame.ylabel(value_label))
    out.append("</svg>")
    return Markup("".join(out))
