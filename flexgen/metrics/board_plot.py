"""The leaderboard's picture: cost (GMACs) against the metric, one panel per table that has costs, drawn with PIL
(no plotting dependency). `render_png` writes it; `flexgen.metrics.leaderboard` calls it.

Each panel plots its rows at their cost per sample when every row with a cost has one, else at their cost per
forward (the x-axis title says which), on a log axis when the costs span more than a factor 4. Rows with a 95%
interval get an error bar; the fewer-steps frontier (`flexgen.metrics.frontier`) is a polyline through its points;
the real-vs-real floor is a dashed line with its interval as a light band. The y axis covers the values, intervals
and floor, padded, and kept within the metric's natural bounds. Labels are placed greedily (`place_labels`) so that
they overlap neither each other nor the markers; a thin leader line joins a label set away from its point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexgen.files import atomic_write
from flexgen.metrics.frontier import Frontier, find_frontier
from flexgen.metrics.records import Record, Table

Box = tuple[float, float, float, float]         # left, top, right, bottom in pixels

MEASURED_COLOR = (31, 119, 180)
PUBLISHED_COLOR = (230, 120, 20)
FRONTIER_COLOR = (44, 160, 44)
FLOOR_COLOR = (148, 103, 189)
FLOOR_BAND = (234, 226, 244)
GRID_COLOR = (235, 235, 235)
TEXT_COLOR = (40, 40, 40)
LEADER_COLOR = (150, 150, 150)

MARKER = 6          # half the side of the box a marker occupies
LABEL_GAP = 8       # from a point to its label
LOG_SPAN = 4.0      # costs spanning more than this factor get a log x axis
LEGEND_HEIGHT = 30


# ---------------------------------------------------------------------------------------------------------------
# Ticks and axes
# ---------------------------------------------------------------------------------------------------------------

def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 × 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _decade_ticks(lo: float, hi: float, mantissas: Sequence[int]) -> list[float]:
    """Every m × 10^k (m in `mantissas`) within [lo, hi], written exactly (3e-1, not 0.30000000000000004)."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [float(f"{m}e{k}") for k in range(first, last + 1) for m in mantissas]
    return [t for t in ticks if lo <= t <= hi]


def log_ticks(lo: float, hi: float, max_count: int = 7) -> list[float]:
    """Tick values for a log axis over [lo, hi] (0 < lo < hi): 1-2-5 per decade, else 1-3, else decades (every
    n-th when there are too many), at most `max_count`; round linear ticks when the range holds too few."""
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        ticks = _decade_ticks(lo, hi, mantissas)
        if 2 <= len(ticks) <= max_count:
            return ticks
    if len(ticks) > max_count:
        return ticks[::math.ceil(len(ticks) / max_count)]
    return [t for t in nice_ticks(lo, hi, 3) if t > 0]


def tick_label(t: float) -> str:
    """A short tick label: 0.25, 40, 500, 2k, 1.5M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(t) >= scale:
            return f"{t / scale:g}{suffix}"
    return f"{t:g}"


@dataclass(frozen=True)
class Axis:
    """Maps data values in [lo, hi] to pixels from `start` to `end` (end < start for a y axis), linear or log."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def __call__(self, v: float) -> float:
        span = self._t(self.hi) - self._t(self.lo)
        return self.start + (self._t(v) - self._t(self.lo)) / span * (self.end - self.start)

    def ticks(self, max_count: int) -> list[float]:
        return log_ticks(self.lo, self.hi, max_count) if self.log else nice_ticks(self.lo, self.hi, max_count)


def x_range(costs: Sequence[float]) -> tuple[float, float, bool]:
    """(lo, hi, log) of the cost axis: log and padded by a factor when the costs span more than LOG_SPAN, else
    linear, padded, never below 0."""
    lo, hi = min(costs), max(costs)
    if lo > 0 and hi / lo > LOG_SPAN:
        factor = (hi / lo) ** 0.08
        return lo / factor, hi * factor, True
    pad = (hi - lo) * 0.12 if hi > lo else max(abs(lo) * 0.1, 1.0)
    return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad, False


def y_range(metric: str, values: Sequence[float]) -> tuple[float, float]:
    """The metric axis over `values` (values, interval ends, floor), padded; accuracies ("acc…") stay within
    [0, 1], and padding never takes a non-negative metric below 0 (only KID may be negative)."""
    lo, hi = min(values), max(values)
    name = metric.lower()
    share = name.startswith("acc")
    pad = (hi - lo) * 0.1 if hi > lo else max(abs(lo) * 0.1, 0.05 if share else 1.0)
    low, high = lo - pad, hi + pad
    if share:
        low, high = max(low, min(lo, 0.0)), min(high, max(hi, 1.0))
    elif not name.startswith("kid") and lo >= 0:
        low = max(low, 0.0)
    return low, high


def cost_field(rows: Sequence[Record]) -> tuple[str, str]:
    """(record field, axis title): cost per sample when every row with a cost has one, else cost per forward."""
    costed = [r for r in rows if not r.is_floor and (r.gflops_per_forward, r.gflops_per_sample) != (None, None)]
    if costed and all(r.gflops_per_sample is not None for r in costed):
        return "gflops_per_sample", "GMACs per sample (all steps)"
    return "gflops_per_forward", "GMACs per forward (one denoiser call)"


# ---------------------------------------------------------------------------------------------------------------
# Label placement
# ---------------------------------------------------------------------------------------------------------------

def overlap(a: Box, b: Box) -> float:
    """The area two boxes share (0 when they only touch or are apart)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _inside(a: Box, area: Box) -> bool:
    return a[0] >= area[0] and a[1] >= area[1] and a[2] <= area[2] and a[3] <= area[3]


def _clamped(a: Box, area: Box) -> Box:
    """`a` shifted to lie inside `area` where it fits."""
    dx = max(area[0] - a[0], 0.0) or min(area[2] - a[2], 0.0)
    dy = max(area[1] - a[1], 0.0) or min(area[3] - a[3], 0.0)
    return a[0] + dx, a[1] + dy, a[2] + dx, a[3] + dy


def _distance(point: tuple[float, float], a: Box) -> float:
    """From `point` to the nearest point of box `a` (0 inside it)."""
    dx = max(a[0] - point[0], 0.0, point[0] - a[2])
    dy = max(a[1] - point[1], 0.0, point[1] - a[3])
    return math.hypot(dx, dy)


def _candidates(point: tuple[float, float], size: tuple[float, float]) -> list[Box]:
    """Label boxes to try for one point, nearest first: right, left, above-right, below-right, above-left,
    below-left, then a grid of farther places (rows stacked above and below, columns farther out)."""
    x, y = point
    w, h = size
    g = LABEL_GAP
    near = [(x + g, y - h / 2), (x - g - w, y - h / 2), (x + g / 2, y - g - h), (x + g / 2, y + g),
            (x - g / 2 - w, y - g - h), (x - g / 2 - w, y + g)]
    step_x, step_y = max(w / 2, 20.0), h + 2
    columns = [x - w / 2] + [x + g + i * step_x for i in range(5)] + [x - g - w - i * step_x for i in range(5)]
    far = [(cx, y - h / 2 + j * step_y) for j in range(-8, 9) for cx in columns]
    far.sort(key=lambda c: _distance(point, (c[0], c[1], c[0] + w, c[1] + h)))
    return [(cx, cy, cx + w, cy + h) for cx, cy in near + far]


def _area_scan(point: tuple[float, float], size: tuple[float, float], box: Box) -> list[Box]:
    """Every label box on a grid over the whole of `box`, nearest to `point` first (for crowded plots: the label
    goes wherever there is room, joined to its point by a leader line)."""
    w, h = size
    xs = [box[0] + i * max(w / 4, 8.0) for i in range(int((box[2] - box[0] - w) // max(w / 4, 8.0)) + 1)]
    ys = [box[1] + j * (h / 2) for j in range(int((box[3] - box[1] - h) // (h / 2)) + 1)]
    boxes = [(x, y, x + w, y + h) for y in ys for x in xs]
    return sorted(boxes, key=lambda b: _distance(point, b))


def place_labels(points: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]], box: Box,
                 obstacles: Sequence[Box] = ()) -> list[Box]:
    """One label box (left, top, right, bottom) per point, placed greedily in order: the first candidate near the
    point (`_candidates`), else anywhere in `box` nearest first (`_area_scan`), that lies inside `box` and overlaps
    no placed label, no marker (the MARKER square around every point) and no obstacle; when none does, the nearby
    candidate (shifted inside `box`) with the least overlap."""
    markers = [(x - MARKER, y - MARKER, x + MARKER, y + MARKER) for x, y in points]
    taken: list[Box] = list(obstacles) + markers
    placed: list[Box] = []
    for point, size in zip(points, sizes, strict=True):
        def free(c: Box) -> bool:
            return _inside(c, box) and not any(overlap(c, t) for t in taken)

        candidates = _candidates(point, size)
        chosen = next(filter(free, candidates), None) or next(filter(free, _area_scan(point, size, box)), None)
        if chosen is None:
            chosen = min((_clamped(c, box) for c in candidates), key=lambda c: sum(overlap(c, t) for t in taken))
        placed.append(chosen)
        taken.append(chosen)
    return placed


# ---------------------------------------------------------------------------------------------------------------
# One panel
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mark:
    """One plotted row: its record, cost, style ("measured", "published", "frontier") and label."""

    record: Record
    cost: float
    kind: str
    label: str


def _label(record: Record, on_frontier: bool) -> str:
    """The model's name, then its method unless the name already says it ("… + FORA 2" with method "fora 2")."""
    said = record.method in ("", "baseline") or record.method.lower() in record.model_name.lower()
    name = record.model_name + ("" if said else f" {record.method}")
    return f"{name}, {record.steps} step{'' if record.steps == 1 else 's'}" if on_frontier else name


def panel_marks(table: Table, field: str, frontier: Frontier | None) -> list[Mark]:
    """The rows of `table` with a cost in `field`, the floor left out."""
    marks = []
    for r in table.rows:
        cost = getattr(r, field)
        if cost is None or r.is_floor:
            continue
        on_frontier = frontier is not None and frontier.holds(r)
        kind = "frontier" if on_frontier else ("published" if r.published else "measured")
        marks.append(Mark(r, cost, kind, _label(r, on_frontier)))
    return marks


def _floor(table: Table) -> Record | None:
    return next((r for r in table.rows if r.is_floor), None)


def _dashed_hline(draw: Any, x0: float, x1: float, y: float, color: tuple, dash: int = 6) -> None:
    for x in range(int(x0), int(x1), 2 * dash):
        draw.line((x, y, min(x + dash, x1), y), fill=color, width=2)


def _y_tick_count(top: float, bottom: float) -> int:
    """How many ticks the metric axis gets: one per 40 pixels, 2 to 6."""
    return max(2, min(6, int((bottom - top) // 40)))


def _draw_axes(draw: Any, area: Box, xaxis: Axis, yaxis: Axis, font: Any) -> None:
    left, top, right, bottom = area
    draw.rectangle(area, outline=(0, 0, 0))
    for t in xaxis.ticks(max(2, int((right - left) // 60))):
        x = xaxis(t)
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.text((x, bottom + 6), tick_label(t), fill=(0, 0, 0), font=font, anchor="mt")
    for t in yaxis.ticks(_y_tick_count(top, bottom)):
        y = yaxis(t)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.line((left + 1, y, right - 1, y), fill=GRID_COLOR)
        draw.text((left - 6, y), tick_label(t), fill=(0, 0, 0), font=font, anchor="rm")


def _floor_label_box(y: float, size: tuple[float, float], area: Box, markers: list[Box]) -> Box:
    """Where the floor's label goes: just above or below its line, at the left or right end, the first place
    inside the plot area that covers no marker (else the first inside the area)."""
    left, top, right, bottom = area
    w, h = size
    places = [(left + 4, y - h - 3), (right - 4 - w, y - h - 3), (left + 4, y + 3), (right - 4 - w, y + 3)]
    boxes = [(bx, by, bx + w, by + h) for bx, by in places]
    inside = [b for b in boxes if _inside(b, area)] or [_clamped(boxes[0], area)]
    return next((b for b in inside if not any(overlap(b, m) for m in markers)), inside[0])


def _draw_floor(draw: Any, floor: Record, area: Box, yaxis: Axis, font: Any, markers: list[Box]) -> list[Box]:
    """The floor as a band (its interval) and a dashed line (its value), labelled; returns the boxes of the label
    and of the line (for the other labels to avoid)."""
    left, _, right, _ = area
    low, high = floor.bounds
    if high > low:
        draw.rectangle((left + 1, yaxis(high), right - 1, yaxis(low)), fill=FLOOR_BAND)
    y = yaxis(floor.value)
    _dashed_hline(draw, left + 1, right - 1, y, FLOOR_COLOR)
    text = "real vs real (floor)"
    label_box = _floor_label_box(y, _text_size(draw, text, font), area, markers)
    draw.text((label_box[0] + 1, label_box[1] + 1), text, fill=FLOOR_COLOR, font=font, anchor="lt")
    return [label_box, (left, y - 2, right, y + 2)]


def _draw_marker(draw: Any, kind: str, x: float, y: float) -> None:
    """A hollow diamond for a published row, a filled disc otherwise (green on the frontier)."""
    if kind == "published":
        draw.polygon([(x, y - 6), (x + 6, y), (x, y + 6), (x - 6, y)], outline=PUBLISHED_COLOR, width=2)
    else:
        color = FRONTIER_COLOR if kind == "frontier" else MEASURED_COLOR
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=color)


def _draw_error_bar(draw: Any, mark: Mark, x: float, yaxis: Axis) -> Box | None:
    """The 95% interval as a vertical bar with caps; returns the box it covers (None without an interval)."""
    if mark.record.interval is None:
        return None
    color = {"published": PUBLISHED_COLOR, "frontier": FRONTIER_COLOR}.get(mark.kind, MEASURED_COLOR)
    y_low, y_high = (yaxis(v) for v in mark.record.interval)
    draw.line((x, y_low, x, y_high), fill=color, width=1)
    for y in (y_low, y_high):
        draw.line((x - 4, y, x + 4, y), fill=color, width=1)
    return x - 4, min(y_low, y_high) - 1, x + 4, max(y_low, y_high) + 1


def _fit(draw: Any, text: str, font: Any, width: float) -> str:
    """`text`, cut short with "…" where it would be wider than `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _text_size(draw: Any, text: str, font: Any) -> tuple[float, float]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left + 2, bottom - top + 4


def _draw_labels(draw: Any, marks: list[Mark], pixels: list[tuple[float, float]], area: Box, font: Any,
                 obstacles: list[Box]) -> None:
    sizes = [_text_size(draw, m.label, font) for m in marks]
    for (x, y), label_box, mark in zip(pixels, place_labels(pixels, sizes, area, obstacles), marks, strict=True):
        if _distance((x, y), label_box) > LABEL_GAP + 2:          # set away from its point: a leader line
            nx = min(max(x, label_box[0]), label_box[2])
            ny = min(max(y, label_box[1]), label_box[3])
            draw.line((x, y, nx, ny), fill=LEADER_COLOR, width=1)
        draw.text((label_box[0] + 1, label_box[1] + 1), mark.label, fill=TEXT_COLOR, font=font, anchor="lt")


def _draw_panel(draw: Any, box: Box, table: Table, font: Any) -> None:
    x0, y0, x1, y1 = box
    frontier = find_frontier(table.rows)
    field, x_title = cost_field(table.rows)
    marks = panel_marks(table, field, frontier if field == "gflops_per_sample" else None)
    floor = _floor(table)
    direction = "higher is better" if table.higher_is_better else "lower is better"
    width = x1 - x0 - 8
    draw.text((x0 + 4, y0 + 2), _fit(draw, table.title, font, width), fill=(0, 0, 0), font=font)
    subtitle = f"y: {table.key.metric.upper()} ({direction}) · bars: 95% interval"
    draw.text((x0 + 4, y0 + 18), _fit(draw, subtitle, font, width), fill=(90, 90, 90), font=font)
    values = [v for r in [m.record for m in marks] + ([floor] if floor else []) for v in (r.value, *r.bounds)]
    ylo, yhi = y_range(table.key.metric, values)
    top, bottom = y0 + 40, y1 - 36
    label_w = max(draw.textlength(tick_label(t), font=font) for t in nice_ticks(ylo, yhi, _y_tick_count(top, bottom)))
    area = (x0 + label_w + 12, top, x1 - 12, bottom)
    if area[2] - area[0] < 40 or area[3] - area[1] < 40:
        return
    xlo, xhi, log = x_range([m.cost for m in marks])
    xaxis, yaxis = Axis(xlo, xhi, area[0], area[2], log), Axis(ylo, yhi, area[3], area[1])
    _draw_axes(draw, area, xaxis, yaxis, font)
    draw.text(((area[0] + area[2]) / 2, area[3] + 22), x_title + (" · log scale" if log else ""), fill=(90, 90, 90),
              font=font, anchor="mt")
    pixels = [(xaxis(m.cost), yaxis(m.record.value)) for m in marks]
    markers = [(x - MARKER, y - MARKER, x + MARKER, y + MARKER) for x, y in pixels]
    obstacles = _draw_floor(draw, floor, area, yaxis, font, markers) if floor is not None else []
    frontier_marks = sorted((m for m in marks if m.kind == "frontier"), key=lambda m: m.cost)
    if len(frontier_marks) >= 2:
        draw.line([(xaxis(m.cost), yaxis(m.record.value)) for m in frontier_marks], fill=FRONTIER_COLOR, width=2)
    bars = [_draw_error_bar(draw, mark, x, yaxis) for mark, (x, _) in zip(marks, pixels, strict=True)]
    obstacles += [b for b in bars if b is not None]
    for mark, (x, y) in zip(marks, pixels, strict=True):
        _draw_marker(draw, mark.kind, x, y)
    _draw_labels(draw, marks, pixels, area, font, obstacles)


# ---------------------------------------------------------------------------------------------------------------
# The whole picture
# ---------------------------------------------------------------------------------------------------------------

def _font(image_font: Any, size: int) -> Any:
    """DejaVu Sans when the system has it (Greek letters such as the α in PixArt-α), else PIL's built-in font."""
    try:
        return image_font.truetype("DejaVuSans.ttf", size)
    except OSError:         # font file not found: the built-in font draws Latin text, boxes for other glyphs
        return image_font.load_default(size=size)


def _draw_legend(draw: Any, font: Any) -> None:
    """measured, published, frontier, floor: one entry each across the top."""
    x, y = 10.0, 15.0
    entries = [("measured", "measured here"), ("published", "published (not re-measured)"),
               ("frontier", "fewer steps (frontier)"), ("floor", "real vs real (floor)")]
    for kind, text in entries:
        if kind == "floor":
            draw.rectangle((x, y - 5, x + 22, y + 5), fill=FLOOR_BAND)
            _dashed_hline(draw, x, x + 22, y, FLOOR_COLOR, dash=5)
            x += 28
        elif kind == "frontier":
            draw.line((x, y, x + 22, y), fill=FRONTIER_COLOR, width=2)
            draw.ellipse((x + 6, y - 5, x + 16, y + 5), fill=FRONTIER_COLOR)
            x += 28
        else:
            _draw_marker(draw, kind, x + 6, y)
            x += 18
        draw.text((x, y), text, fill=(0, 0, 0), font=font, anchor="lm")
        x += draw.textlength(text, font=font) + 22


def plotted_tables(tables: Sequence[Table]) -> list[Table]:
    """The tables with at least one row (not the floor) that has a cost."""
    return [t for t in tables if panel_marks(t, cost_field(t.rows)[0], None)]


def render_png(tables: list[Table], path: str | Path, size: tuple[int, int] = (1280, 720)) -> Path:
    """Write the plot to `path` as a `size` (width, height) PNG; tables without costs are left out."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    if width < 100 or height < 100:
        raise ValueError(f"PNG size {width}x{height} is too small (at least 100x100)")
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(ImageFont, 12)
    _draw_legend(draw, font)
    plotted = plotted_tables(tables)
    if not plotted:
        draw.text((width // 2, height // 2), "no rows with GMACs", fill=(0, 0, 0), font=font, anchor="mm")
    else:
        cols = math.ceil(math.sqrt(len(plotted)))
        nrows = math.ceil(len(plotted) / cols)
        cell_w, cell_h = width // cols, (height - LEGEND_HEIGHT) // nrows
        for i, table in enumerate(plotted):
            cx, cy = (i % cols) * cell_w, LEGEND_HEIGHT + (i // cols) * cell_h
            _draw_panel(draw, (cx + 4, cy + 4, cx + cell_w - 4, cy + cell_h - 4), table, font)
    path = Path(path)
    with atomic_write(path) as tmp:                 # a killed write never leaves a truncated png under `path`
        image.save(tmp, format="PNG")
    return path
