"""The leaderboard: records grouped into comparable tables (`flexgen.metrics.records.build_tables`) rendered as
Markdown, one self-contained HTML page, and a MACs-vs-metric plot (PNG, `flexgen.metrics.board_plot`);
`leaderboard_main` is `flexgen leaderboard`.

Every table says what its rows share (detector and reference-statistics sha256, N, storage) and which direction is
better; published rows are marked and never mixed with measured ones. Each row shows its value with its 95%
interval and a rank that only separates rows whose intervals do not overlap (`flexgen.metrics.records.rank_labels`);
the real-vs-real floor row is shown unranked. The "vs frontier" column places each row against the table's
fewer-steps frontier (`flexgen.metrics.frontier`). The cost columns are GMACs (the records' `gflops_per_*` fields
count one multiply-accumulate once).
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path

from flexgen.files import atomic_write_text
from flexgen.metrics.board_plot import render_png
from flexgen.metrics.frontier import Frontier, find_frontier, place
from flexgen.metrics.records import Record, Table, build_tables, load_anchors, read_records

ANCHORS = Path(__file__).with_name("anchors.json")     # the published numbers (package data)

FORMATS = ("md", "html", "png")

RANK_NOTE = "Rows whose 95% intervals overlap share a rank; '=' marks a tie."


# ---------------------------------------------------------------------------------------------------------------
# Table headings, cells and notes shared by Markdown and HTML
# ---------------------------------------------------------------------------------------------------------------

COLUMNS = ("#", "model", "method", "value", "95% interval", "vs frontier", "GMACs/fwd", "GMACs/sample", "sampler",
           "steps", "CFG", "latency s", "date", "kind", "source / ckpt")


def _short(digest: str, n: int = 12) -> str:
    return digest[:n] + "…" if len(digest) > n else digest


def _num(x: float | int | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def metric_num(x: float) -> str:
    """A metric value: two decimals, or three significant digits for small values (KID, 0.00123)."""
    return format(x, ".3g") if 0 < abs(x) < 0.1 else format(x, ".2f")


def _value_cell(r: Record) -> str:
    return metric_num(r.value) + (f" ± {metric_num(r.value_std)}" if r.value_std is not None else "")


def _interval_cell(r: Record) -> str:
    return "–" if r.interval is None else f"[{metric_num(r.interval[0])}, {metric_num(r.interval[1])}]"


def _kind_cell(r: Record) -> str:
    if r.is_floor:
        return "floor (real vs real)"
    if r.published:
        return f"published ({r.confidence})" if r.confidence else "published"
    return "measured"


def row_cells(rank: str, r: Record, vs_frontier: str = "–") -> list[str]:
    """The cells of one row under COLUMNS; `rank` as `rank_labels` gives it, `vs_frontier` as `frontier.place`."""
    origin = r.source if r.published else (f"ckpt {_short(r.ckpt_sha256)}" if r.ckpt_sha256 else "")
    return [str(rank), r.model_name, r.method, _value_cell(r), _interval_cell(r), vs_frontier,
            _num(r.gflops_per_forward), _num(r.gflops_per_sample), r.sampler or "–", _num(r.steps, "d"),
            _num(r.cfg_scale, "g"), _num(r.latency_s, ".3g"), r.date[:10] or "–", _kind_cell(r), origin or "–"]


def table_rows(table: Table) -> list[tuple[Record, list[str]]]:
    """Each row of `table` (best first) with its cells: rank by intervals, place against the frontier."""
    frontier = find_frontier(table.rows)
    return [(r, row_cells(rank, r, place(r, frontier, table.higher_is_better)))
            for r, rank in zip(table.rows, table.ranks(), strict=True)]


def table_title(table: Table) -> str:
    """'FVD · ffs · fvd2048_16f · measured': metric, dataset, protocol, measured or published."""
    return table.title


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


def table_notes(table: Table) -> list[str]:
    """The lines under a table: how ranks are shared, and the frontier when the table has one."""
    frontier: Frontier | None = find_frontier(table.rows)
    return [RANK_NOTE] + ([frontier.describe()] if frontier is not None else [])


# ---------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(tables: list[Table]) -> str:
    lines = ["# flexgen leaderboard", "",
             "One table per (dataset, metric, protocol, detector sha256, reference statistics sha256, N, storage): "
             "numbers in different tables are not comparable. Published rows are copied from papers and kept in "
             "their own tables. Costs are GMACs (one multiply-accumulate counted once).", ""]
    if not tables:
        lines += ["_No records._", ""]
    for table in tables:
        lines += [f"## {_md_escape(table_title(table))}", "", f"_{_md_escape(table_subtitle(table))}_", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_md_escape(c) for c in cells) + " |" for _, cells in table_rows(table)]
        lines += [""] + [line for note in table_notes(table) for line in (_md_escape(note), "")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# HTML: one self-contained page (inline CSS, no scripts, no external assets)
# ---------------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h2 { margin-top: 2em; font-size: 1.15em; }
p.sub { color: #555; font-size: 0.9em; margin: 0.2em 0 0.6em; }
p.note { color: #555; font-size: 0.85em; margin: 0.3em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.published td { background: #fff8e6; font-style: italic; }
tr.floor td { background: #f1ecf8; }
"""

NUMERIC_COLUMNS = frozenset({"#", "value", "95% interval", "GMACs/fwd", "GMACs/sample", "steps", "CFG", "latency s"})


def _row_class(r: Record) -> str:
    return "floor" if r.is_floor else ("published" if r.published else "measured")


def render_html(tables: list[Table]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>flexgen leaderboard</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           "<h1>flexgen leaderboard</h1>",
           "<p>One table per (dataset, metric, protocol, detector sha256, reference statistics sha256, N, storage): "
           "numbers in different tables are not comparable. Published rows (shaded) are copied from papers. Costs "
           "are GMACs (one multiply-accumulate counted once).</p>"]
    if not tables:
        out.append("<p><em>No records.</em></p>")
    for table in tables:
        out += [f"<h2>{e(table_title(table))}</h2>", f'<p class="sub">{e(table_subtitle(table))}</p>', "<table>",
                "<tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>"]
        for r, row in table_rows(table):
            cells = "".join(f'<td class="num">{e(c)}</td>' if col in NUMERIC_COLUMNS else f"<td>{e(c)}</td>"
                            for col, c in zip(COLUMNS, row, strict=True))
            out.append(f'<tr class="{_row_class(r)}">{cells}</tr>')
        out.append("</table>")
        out += [f'<p class="note">{e(note)}</p>' for note in table_notes(table)]
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


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
    n_published, n_floor = sum(r.published for r in records), sum(r.is_floor for r in records)
    floors = f" + {n_floor} floor" if n_floor else ""
    print(f"{len(records) - n_published - n_floor} measured + {n_published} published{floors} rows in "
          f"{len(tables)} tables")
    for path in written.values():
        print(f"wrote {path}")
    return written
