"""The leaderboard: Markdown / HTML / PNG rendering of grouped records and the flexgen leaderboard command; the
plot's axes and label placement."""

import argparse
import itertools
import re

import numpy as np
import pytest
from PIL import Image

from flexgen.metrics.board_plot import (
    FLOOR_BAND,
    FLOOR_COLOR,
    FRONTIER_COLOR,
    LEGEND_HEIGHT,
    MARKER,
    MEASURED_COLOR,
    cost_field,
    log_ticks,
    overlap,
    place_labels,
    x_range,
    y_range,
)
from flexgen.metrics.leaderboard import (
    RANK_NOTE,
    add_leaderboard_arguments,
    render_html,
    render_markdown,
    render_png,
)
from flexgen.metrics.records import Record, append_record, build_tables, load_anchors
from tests.metrics_helpers import ANCHORS, DETECTOR, REFERENCE, measured

DENSE = "ab" * 32


def board_rows():
    """One FD table: the dense model at 3, 10, 25, 50 steps (the frontier), two other models and the floor."""
    def row(name, method, steps, cost, value, interval, ckpt=DENSE):
        return measured(metric="fd_synthmotion", protocol="synthmotion16_8f", dataset="synthmotion",
                        model_variant=name, method=method, sampler="ddim", steps=steps, gflops_per_sample=cost,
                        gflops_per_forward=cost / steps, value=value, interval=interval, ckpt_sha256=ckpt)
    floor = measured(metric="fd_synthmotion", protocol="synthmotion16_8f", dataset="synthmotion",
                     model_variant="real clips", method="floor", value=2.0, interval=[1.5, 2.5],
                     extra={"floor": True}, gflops_per_forward=None, sampler="", steps=None, cfg_scale=None,
                     latency_s=None, ckpt_sha256="")
    return [row("Latte (dense)", "baseline", 3, 6.0, 30.0, [26.0, 35.0]),
            row("Latte (dense)", "baseline", 10, 20.0, 14.0, [12.0, 16.5]),
            row("Latte (dense)", "baseline", 25, 50.0, 9.0, [7.8, 10.4]),
            row("Latte (dense)", "baseline", 50, 100.0, 8.2, [7.0, 9.5]),
            row("FlexDiT-Latte", "flexdit", 25, 30.0, 6.0, [5.0, 6.8], ckpt="cd" * 32),
            row("DyDiT-Latte", "dydit", 25, 22.0, 16.0, [14.8, 18.5], ckpt="ef" * 32),
            floor]


def body_rows(md):
    return [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| #")]

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
    body = body_rows(md)
    assert body[0].startswith("| 1 | Latte-XL/2 | flexdit | 38.50 | – | – | 830.00 | – |")
    assert body[1].startswith("| 2 | Latte-XL/2 | dense | 45.12 | – | – | 1893.00 | – |")
    assert "| # | model | method | value | 95% interval | vs frontier | GMACs/fwd | GMACs/sample |" in md
    assert "detector bec6519f0000…" in md and "(i3d_torchscript.pt)" in md and "N 2048" in md
    assert "lower is better" in md


def test_markdown_shows_intervals_ranks_frontier_and_floor():
    md = render_markdown(build_tables(board_rows()))
    cells = {row.split(" | ")[1] + " " + row.split(" | ")[9]: row.split(" | ") for row in body_rows(md)}

    def rank(key):
        return cells[key][0][2:]

    def interval(key):
        return cells[key][4]

    def vs_frontier(key):
        return cells[key][5]

    assert body_rows(md)[0].startswith("| floor | real clips | floor | 2.00 | [1.50, 2.50] | – | – | – |")
    assert "floor (real vs real)" in body_rows(md)[0]
    assert interval("Latte (dense) 50") == "[7.00, 9.50]" and interval("FlexDiT-Latte 25") == "[5.00, 6.80]"
    # FlexDiT [5, 6.8] is beyond everything; dense 25 and 50 steps overlap; DyDiT overlaps dense at 10 steps.
    assert [rank(k) for k in ("FlexDiT-Latte 25", "Latte (dense) 50", "Latte (dense) 25")] == ["1", "2=", "2="]
    assert [rank(k) for k in ("Latte (dense) 10", "DyDiT-Latte 25", "Latte (dense) 3")] == ["4=", "4=", "6"]
    # At 30 GMACs the curve is about [10.1, 13.8]: FlexDiT lies beyond it; at 22 GMACs about [11.6, 15.9]: DyDiT
    # [14.8, 18.5] overlaps it.
    assert vs_frontier("FlexDiT-Latte 25") == "above" and vs_frontier("DyDiT-Latte 25") == "on"
    assert {vs_frontier(f"Latte (dense) {s}") for s in (3, 10, 25, 50)} == {"frontier"}
    assert RANK_NOTE in md
    assert "Frontier: Latte (dense) with ddim at 3, 10, 25, 50 steps (ckpt abababababab…)" in md


def test_a_row_below_the_frontier():
    slow = measured(metric="fd_synthmotion", protocol="synthmotion16_8f", dataset="synthmotion", model_variant="slow",
                    method="x", steps=25, sampler="ddim", gflops_per_sample=50.0, value=25.0, interval=[24.0, 26.0])
    md = render_markdown(build_tables([*board_rows(), slow]))
    (row,) = [r for r in body_rows(md) if "| slow |" in r]
    assert row.split(" | ")[5] == "below"


def test_tables_without_frontier_say_only_how_ranks_are_shared():
    md = render_markdown(build_tables([measured(value=40.0, interval=[39.0, 41.0]), measured(method="b", value=40.5)]))
    assert [row.split(" | ")[0] for row in body_rows(md)] == ["| 1=", "| 1="]
    assert RANK_NOTE in md and "Frontier:" not in md


def test_html_shows_the_floor_row_and_the_notes():
    page = render_html(build_tables(board_rows()))
    assert '<tr class="floor"><td class="num">floor</td>' in page
    assert "<th>95% interval</th>" in page and "<th>vs frontier</th>" in page and "<th>GMACs/sample</th>" in page
    assert '<p class="note">Frontier: Latte (dense) with ddim' in page and RANK_NOTE.replace("'", "&#x27;") in page


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


def panel_colours(path):
    """The colours below the legend, with their pixel counts."""
    with Image.open(path) as image:
        panels = image.crop((0, LEGEND_HEIGHT, image.width, image.height))
        return {c: n for n, c in panels.getcolors(maxcolors=1 << 20)}


def columns_with(path, colour):
    """How many pixel columns below the legend hold `colour`."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))[LEGEND_HEIGHT:]
    return int(np.all(pixels == np.array(colour, dtype=np.uint8), axis=-1).any(axis=0).sum())


def test_png_draws_the_frontier_the_floor_and_error_bars(tmp_path):
    rows = board_rows()
    full = panel_colours(render_png(build_tables(rows), tmp_path / "board.png", size=(800, 500)))
    with Image.open(tmp_path / "board.png") as image:
        assert image.size == (800, 500)
    assert full.get(FRONTIER_COLOR, 0) > 200                  # the polyline and the four frontier discs
    # The polyline joins the discs at 6 and 100 GMACs (log axis): its colour fills most columns between them,
    # where discs and error bars alone would cover some 50.
    assert columns_with(tmp_path / "board.png", FRONTIER_COLOR) > 400
    assert full.get(FLOOR_COLOR, 0) > 100 and full.get(FLOOR_BAND, 0) > 1000      # dashed line and band
    assert full.get(MEASURED_COLOR, 0) > 0
    # Without the floor and with one step count, neither is drawn below the legend.
    plain = panel_colours(render_png(build_tables(rows[3:6]), tmp_path / "plain.png", size=(800, 500)))
    assert FRONTIER_COLOR not in plain and FLOOR_COLOR not in plain and FLOOR_BAND not in plain
    # Error bars add measured-colour pixels to a row with an interval.
    one = [rows[4]]
    bar = panel_colours(render_png(build_tables(one), tmp_path / "bar.png", size=(400, 300)))
    point = [measured(**{**one[0].to_dict(), "interval": None, "date": one[0].date})]
    nobar = panel_colours(render_png(build_tables(point), tmp_path / "nobar.png", size=(400, 300)))
    assert bar[MEASURED_COLOR] > nobar[MEASURED_COLOR] + 20


# ---------------------------------------------------------------------------------------------------------------
# The plot's axes and labels
# ---------------------------------------------------------------------------------------------------------------

def test_cost_axis_per_sample_only_when_every_row_has_it():
    rows = board_rows()
    assert cost_field(rows) == ("gflops_per_sample", "GMACs per sample (all steps)")
    mixed = [*rows, measured(gflops_per_sample=None, gflops_per_forward=10.0)]
    assert cost_field(mixed)[0] == "gflops_per_forward"


def test_log_axis_beyond_a_factor_four():
    assert x_range([10.0, 30.0])[2] is False and x_range([10.0, 41.0])[2] is True
    lo, hi, log = x_range([6.0, 100.0])
    assert log and lo < 6.0 and hi > 100.0
    assert log_ticks(5.0, 110.0) == [5.0, 10.0, 20.0, 50.0, 100.0]
    many = log_ticks(1.0, 1e9, max_count=5)
    assert 2 <= len(many) <= 5 and all(str(t).startswith("1") for t in many)
    assert log_ticks(0.3, 2.0) == [0.5, 1.0, 2.0]
    assert len(log_ticks(1.1, 4.5)) >= 2


def test_metric_axis_bounds():
    lo, hi = y_range("acc_synthmotion", [0.9, 1.0, 0.95])
    assert 0.8 < lo < 0.9 and hi == 1.0
    assert y_range("acc_synthmotion", [0.0, 0.02])[0] == 0.0
    assert y_range("fd_synthmotion", [1.0, 30.0]) == (0.0, pytest.approx(32.9))      # never padded below 0
    lo, hi = y_range("fvd", [100.0, 120.0])
    assert lo == pytest.approx(98.0) and hi == pytest.approx(122.0)
    assert y_range("kid", [0.0002, 0.01])[0] < 0.0                                     # KID may go negative


def assert_good_placement(points, sizes, boxes, area):
    assert len(boxes) == len(points)
    for (w, h), b in zip(sizes, boxes, strict=True):
        assert b[2] - b[0] == pytest.approx(w) and b[3] - b[1] == pytest.approx(h)
        assert area[0] <= b[0] and area[1] <= b[1] and b[2] <= area[2] and b[3] <= area[3]
    for a, b in itertools.combinations(boxes, 2):
        assert overlap(a, b) == 0
    markers = [(x - MARKER, y - MARKER, x + MARKER, y + MARKER) for x, y in points]
    assert all(overlap(b, m) == 0 for b in boxes for m in markers)


def test_labels_of_points_at_one_spot_do_not_overlap():
    area = (0.0, 0.0, 500.0, 300.0)
    points, sizes = [(250.0, 150.0)] * 8, [(90.0, 14.0)] * 8
    boxes = place_labels(points, sizes, area)
    assert_good_placement(points, sizes, boxes, area)
    assert boxes[0][0] > 250.0 and boxes[1][2] < 250.0                 # first right of the point, then left


def test_labels_of_points_along_a_line_do_not_overlap():
    area = (0.0, 0.0, 600.0, 400.0)
    points = [(40.0 + 50.0 * i, 360.0 - 35.0 * i) for i in range(10)]
    sizes = [(60.0 + 8.0 * i, 14.0) for i in range(10)]
    assert_good_placement(points, sizes, place_labels(points, sizes, area), area)


def test_labels_avoid_obstacles_and_the_edges():
    area = (0.0, 0.0, 300.0, 200.0)
    points, sizes = [(295.0, 5.0), (150.0, 100.0)], [(80.0, 14.0), (80.0, 14.0)]
    obstacle = (150.0 + 8, 93.0, 240.0, 107.0)                         # where the right-hand label would go
    boxes = place_labels(points, sizes, area, obstacles=[obstacle])
    assert_good_placement(points, sizes, boxes, area)
    assert boxes[0][2] <= 295.0 and overlap(boxes[1], obstacle) == 0


def test_labels_in_a_crowded_plot_stay_inside():
    area = (0.0, 0.0, 120.0, 40.0)
    points, sizes = [(60.0, 20.0)] * 6, [(100.0, 14.0)] * 6
    for b in place_labels(points, sizes, area):
        assert 0.0 <= b[0] and b[2] <= 120.0 and 0.0 <= b[1] and b[3] <= 40.0


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


def test_plot_labels_say_the_method_once():
    from flexgen.metrics.board_plot import _label

    assert _label(measured(model_variant="Latte (dense) + FORA 2", method="fora 2"), False) == "Latte (dense) + FORA 2"
    assert _label(measured(method="flexdit P GSR T"), False) == "Latte-XL/2 flexdit P GSR T"
    assert _label(measured(steps=1), True) == "Latte-XL/2, 1 step"
