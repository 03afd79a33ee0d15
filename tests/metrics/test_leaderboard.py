"""The leaderboard: Markdown / HTML / PNG rendering of grouped records and the flexgen leaderboard command."""

import argparse
import re

import pytest
from PIL import Image

from flexgen.metrics.leaderboard import add_leaderboard_arguments, render_html, render_markdown, render_png
from flexgen.metrics.records import Record, append_record, build_tables, load_anchors
from tests.metrics_helpers import ANCHORS, DETECTOR, REFERENCE, measured

# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------

def test_published_rows_get_their_own_table_and_flag():
    anchor = Record(metric="fvd", protocol="styleganv_fvd2048_16f", value=34.0, dataset="ffs", num_samples=2048,
                    storage="png", model_variant="Latte-XL/2", published=True, source="Latte Table 2",
                    confidence="verified", detector_sha256=DETECTOR, reference_sha256=REFERENCE)
    tables = build_tables([measured(), anchor])
    assert [t.key.published for t in tables] == [False, True]
    assert [r.published for r in tables[1].rows] == [True]
    md = render_markdown(tables)
    assert "· published" in md and "published (verified)" in md and "| measured |" in md


def test_markdown_table_content_and_order():
    rows = [measured(method="dense", value=45.125), measured(method="flexdit", value=38.5, gflops_per_forward=830.0),
            measured(dataset="sky", value=60.0)]
    md = render_markdown(build_tables(rows))
    headings = re.findall(r"^## (.*)$", md, flags=re.MULTILINE)
    assert headings == ["FVD · ffs · styleganv_fvd2048_16f · measured", "FVD · sky · styleganv_fvd2048_16f · measured"]
    body = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert body[0].startswith("| 1 | Latte-XL/2 | flexdit | 38.50 | 830.00 |")
    assert body[1].startswith("| 2 | Latte-XL/2 | dense | 45.12 | 1893.00 |")
    assert "detector bec6519f0000…" in md and "(i3d_torchscript.pt)" in md and "N 2048" in md
    assert "lower is better" in md


def test_html_is_self_contained():
    tables = build_tables([measured(note="<script>alert(1)</script>", method="<b>x</b>"), *load_anchors(ANCHORS)])
    page = render_html(tables)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    for forbidden in ("<link", "<script", " src=", "@import", "url(", "http://", "https://"):
        assert forbidden not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert page.count("<table>") == len(tables)
    assert 'class="published"' in page and 'class="measured"' in page


def test_png_is_written_at_the_requested_size(tmp_path):
    tables = build_tables([measured(), measured(method="flexdit", value=38.0, gflops_per_forward=830.0),
                           *load_anchors(ANCHORS)])
    path = render_png(tables, tmp_path / "plot.png", size=(900, 600))
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (900, 600)
        colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    assert (31, 119, 180) in colours and (230, 120, 20) in colours     # measured discs and published diamonds
    empty = render_png([], tmp_path / "empty.png", size=(320, 200))
    with Image.open(empty) as image:
        assert image.size == (320, 200)


def test_leaderboard_command(tmp_path, capsys):
    records = tmp_path / "records.jsonl"
    append_record(records, measured())
    parser = add_leaderboard_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--records", str(records), "--anchors", str(ANCHORS), "--out", str(tmp_path / "lb"),
                              "--format", "md,png", "--png-size", "640x480"])
    written = args.func(args)
    assert sorted(written) == ["md", "png"] and not (tmp_path / "lb" / "leaderboard.html").exists()
    assert "published (verified)" in written["md"].read_text()
    with Image.open(written["png"]) as image:
        assert image.size == (640, 480)
    assert "1 measured + " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["--format", "md,pdf"])
