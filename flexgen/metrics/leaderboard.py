"""The leaderboard: records grouped into comparable tables (`flexgen.metrics.records.build_tables`) rendered as
Markdown, one self-contained HTML page, and a FLOPs-vs-metric scatter plot (PNG, drawn with PIL: no plotting
dependency); `leaderboard_main` is `flexgen leaderboard`.

Every table says what its rows share (detector and reference-statistics sha256, N, storage) and which direction is
better; published rows are marked and never mixed with measured ones.
"""

from __future__ import annotations

import argparse
import html
import math
from pathlib import Path
from typing import Any

from flexgen.files import atomic_write, atomic_write_text
from flexgen.metrics.records import Record, Table, build_tables, load_anchors, read_records

ANCHORS = Path(__file__).with_name("anchors.json")     # the published numbers (package data)

FORMATS = ("md", "html", "png")


# ---------------------------------------------------------------------------------------------------------------
# Table headings and cells shared by Markdown, HTML and the plot
# ---------------------------------------------------------------------------------------------------------------

COLUMNS = ("#", "model", "method", "value", "GFLOPs/fwd", "GFLOPs/sample", "sampler", "steps", "CFG",
           "latency s", "date", "kind", "source / ckpt")


def _short(digest: str, n: int = 12) -> str:
    return digest[:n] + "…" if len(digest) > n else digest


def _num(x: float | int | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def row_cells(rank: int, r: Record) -> list[str]:
    value = _num(r.value) + (f" ± {r.value_std:.2f}" if r.value_std is not None else "")
    kind = f"published ({r.confidence})" if r.published and r.confidence else ("published" if r.published
                                                                                 else "measured")
    origin = r.source if r.published else (f"ckpt {_short(r.ckpt_sha256)}" if r.ckpt_sha256 else "")
    return [str(rank), r.model_name, r.method, value, _num(r.gflops_per_forward), _num(r.gflops_per_sample),
            r.sampler or "–", _num(r.steps, "d"), _num(r.cfg_scale, "g"), _num(r.latency_s, ".3g"),
            r.date[:10] or "–", kind, origin or "–"]


def table_title(table: Table) -> str:
    """'FVD · ffs · fvd2048_16f · measured': metric, dataset, protocol, measured or published."""
    kind = "published" if table.key.published else "measured"
    return f"{table.key.metric.upper()} · {table.key.dataset} · {table.key.protocol} · {kind}"


def table_subtitle(table: Table) -> str:
    """What the table's rows share (detector, reference statistics, N, storage) and which direction is better."""
    k = table.key
    parts = []
    if k.published:
        parts.append("numbers as printed by their sources; not re-measured, not comparable with measured tables")
    else:
        detector_file = table.rows[0].detector_file if table.rows else ""
        parts.append(f"detector {_short(k.detector)}" + (f" ({detector_file})" if detector_file else ""))
        parts.append(f"reference stats {_short(k.reference)}")
    parts.append(f"N {k.num_samples if k.num_samples is not None else '?'}")
    if k.storage:
        parts.append(f"storage {k.storage}")
    parts.append("higher is better" if table.higher_is_better else "lower is better")
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(tables: list[Table]) -> str:
    lines = ["# flexgen leaderboard", "",
             "One table per (dataset, metric, protocol, detector sha256, reference statistics sha256, N, storage): "
             "numbers in different tables are not comparable. Published rows are copied from papers and kept in "
             "their own tables.", ""]
    if not tables:
        lines += ["_No records._", ""]
    for table in tables:
        lines += [f"## {_md_escape(table_title(table))}", "", f"_{_md_escape(table_subtitle(table))}_", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for rank, r in enumerate(table.rows, start=1):
            lines.append("| " + " | ".join(_md_escape(c) for c in row_cells(rank, r)) + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# HTML: one self-contained page (inline CSS, no scripts, no external assets)
# ---------------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h2 { margin-top: 2em; font-size: 1.15em; }
p.sub { color: #555; font-size: 0.9em; margin: 0.2em 0 0.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.published td { background: #fff8e6; font-style: italic; }
"""

NUMERIC_COLUMNS = frozenset({"#", "value", "GFLOPs/fwd", "GFLOPs/sample", "steps", "CFG", "latency s"})


def render_html(tables: list[Table]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>flexgen leaderboard</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           "<h1>flexgen leaderboard</h1>",
           "<p>One table per (dataset, metric, protocol, detector sha256, reference statistics sha256, N, storage): "
           "numbers in different tables are not comparable. Published rows (shaded) are copied from papers.</p>"]
    if not tables:
        out.append("<p><em>No records.</em></p>")
    for table in tables:
        out += [f"<h2>{e(table_title(table))}</h2>", f'<p class="sub">{e(table_subtitle(table))}</p>', "<table>",
                "<tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>"]
        for rank, r in enumerate(table.rows, start=1):
            cells = "".join(f'<td class="num">{e(c)}</td>' if col in NUMERIC_COLUMNS else f"<td>{e(c)}</td>"
                            for col, c in zip(COLUMNS, row_cells(rank, r), strict=True))
            out.append(f'<tr class="{"published" if r.published else "measured"}">{cells}</tr>')
        out.append("</table>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# PNG: GFLOPs-per-forward vs metric scatter, one panel per table that has GFLOPs (PIL only)
# ---------------------------------------------------------------------------------------------------------------

MEASURED_COLOR = (31, 119, 180)
PUBLISHED_COLOR = (230, 120, 20)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 × 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _padded_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.12 if hi > lo else max(abs(lo) * 0.1, 1.0)
    return lo - pad, hi + pad


def _draw_panel(draw: Any, box: tuple[int, int, int, int], table: Table, font: Any) -> None:
    x0, y0, x1, y1 = box
    rows = [r for r in table.rows if r.gflops_per_forward is not None]
    draw.text((x0 + 4, y0 + 2), table_title(table), fill=(0, 0, 0), font=font)
    direction = "higher is better" if table.higher_is_better else "lower is better"
    draw.text((x0 + 4, y0 + 18), f"y: {table.key.metric.upper()} ({direction}) · x: GFLOPs per forward",
              fill=(90, 90, 90), font=font)
    # Plot area inside the panel, leaving room for the titles and the tick labels
    left, top, right, bottom = x0 + 56, y0 + 40, x1 - 12, y1 - 28
    if right - left < 20 or bottom - top < 20:
        return
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    xlo, xhi = _padded_range([r.gflops_per_forward for r in rows])
    ylo, yhi = _padded_range([r.value for r in rows])

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xlo) / (xhi - xlo) * (right - left), bottom - (y - ylo) / (yhi - ylo) * (bottom - top))

    for t in nice_ticks(xlo, xhi):
        x, _ = px(t, ylo)
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.text((x, bottom + 6), f"{t:g}", fill=(0, 0, 0), font=font, anchor="mt")
    for t in nice_ticks(ylo, yhi):
        _, y = px(xlo, t)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.line((left + 1, y, right - 1, y), fill=(235, 235, 235))
        draw.text((left - 6, y), f"{t:g}", fill=(0, 0, 0), font=font, anchor="rm")
    for r in rows:
        x, y = px(r.gflops_per_forward, r.value)
        if r.published:     # hollow diamond
            draw.polygon([(x, y - 6), (x + 6, y), (x, y + 6), (x - 6, y)], outline=PUBLISHED_COLOR, width=2)
        else:               # filled disc
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=MEASURED_COLOR)
        label = r.model_name if r.method in ("", "baseline") else f"{r.model_name} {r.method}"
        if x + 8 + draw.textlength(label, font=font) <= right:
            draw.text((x + 8, y), label, fill=(40, 40, 40), font=font, anchor="lm")
        else:               # would run off the panel: label on the left of the point
            draw.text((x - 8, y), label, fill=(40, 40, 40), font=font, anchor="rm")


def _font(image_font: Any, size: int) -> Any:
    """DejaVu Sans when the system has it (Greek letters such as the α in PixArt-α), else PIL's built-in font."""
    try:
        return image_font.truetype("DejaVuSans.ttf", size)
    except OSError:         # font file not found: the built-in font draws Latin text, boxes for other glyphs
        return image_font.load_default(size=size)


def render_png(tables: list[Table], path: str | Path, size: tuple[int, int] = (1280, 720)) -> Path:
    """Write the scatter plot to `path` as a `size` (width, height) PNG; tables without GFLOPs are left out."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    if width < 100 or height < 100:
        raise ValueError(f"PNG size {width}x{height} is too small (at least 100x100)")
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(ImageFont, 12)
    # Legend across the top
    draw.ellipse((10, 10, 20, 20), fill=MEASURED_COLOR)
    draw.text((26, 9), "measured here", fill=(0, 0, 0), font=font)
    draw.polygon([(136, 9), (142, 15), (136, 21), (130, 15)], outline=PUBLISHED_COLOR, width=2)
    draw.text((150, 9), "published (not re-measured)", fill=(0, 0, 0), font=font)
    plotted = [t for t in tables if any(r.gflops_per_forward is not None for r in t.rows)]
    if not plotted:
        draw.text((width // 2, height // 2), "no rows with GFLOPs per forward", fill=(0, 0, 0), font=font,
                  anchor="mm")
    else:
        cols = math.ceil(math.sqrt(len(plotted)))
        nrows = math.ceil(len(plotted) / cols)
        cell_w, cell_h = width // cols, (height - 30) // nrows
        for i, table in enumerate(plotted):
            cx, cy = (i % cols) * cell_w, 30 + (i // cols) * cell_h
            _draw_panel(draw, (cx + 4, cy + 4, cx + cell_w - 4, cy + cell_h - 4), table, font)
    path = Path(path)
    with atomic_write(path) as tmp:                 # a killed write never leaves a truncated png under `path`
        image.save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------------------------
# flexgen leaderboard
# ---------------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x720, got {text!r}")
    return int(width), int(height)


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"formats must be a comma-separated subset of {','.join(FORMATS)}, "
                                         f"got {text!r}")
    return formats


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `flexgen leaderboard` to `parser` and set `func=leaderboard_main`; returns the parser."""
    parser.add_argument("--records", default="eval/records.jsonl", help="JSON Lines file of measured records "
                        "(a missing file means no measured rows)")
    parser.add_argument("--anchors", default=str(ANCHORS), help="published numbers (default: the ones shipped "
                        "with flexgen, eval/anchors.json in a checkout); '' for none")
    parser.add_argument("--out", default="eval/leaderboard", help="output folder: leaderboard.{md,html,png}")
    parser.add_argument("--format", default=",".join(FORMATS), type=parse_formats,
                        help="comma-separated subset of md,html,png (default: all)")
    parser.add_argument("--png-size", default=(1280, 720), type=parse_size, metavar="WxH",
                        help="size of the scatter plot in pixels (default 1280x720)")
    parser.set_defaults(func=leaderboard_main)
    return parser


def leaderboard_main(args: argparse.Namespace) -> dict[str, Path]:
    """Read records and anchors, write the requested reports into args.out (each atomically: a hidden temporary
    file renamed into place); returns {format: path}."""
    records: list[Record] = []
    records_path = Path(args.records)
    if records_path.exists():
        records += read_records(records_path)
    else:
        print(f"flexgen leaderboard: no records file at {records_path}; published anchors only")
    if args.anchors:
        records += load_anchors(args.anchors)
    tables = build_tables(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    formats = parse_formats(args.format) if isinstance(args.format, str) else args.format
    if "md" in formats:
        written["md"] = out / "leaderboard.md"
        atomic_write_text(written["md"], render_markdown(tables))
    if "html" in formats:
        written["html"] = out / "leaderboard.html"
        atomic_write_text(written["html"], render_html(tables))
    if "png" in formats:
        size = parse_size(args.png_size) if isinstance(args.png_size, str) else args.png_size
        written["png"] = render_png(tables, out / "leaderboard.png", size)
    n_published = sum(r.published for r in records)
    print(f"{len(records) - n_published} measured + {n_published} published rows in {len(tables)} tables")
    for path in written.values():
        print(f"wrote {path}")
    return written
