"""Evaluation records: JSON Lines round trip, anchors, grouping rules, records built from evaluations."""

import hashlib
import json

import pytest

from flexgen.metrics.records import (
    Record,
    append_record,
    beyond,
    build_tables,
    load_anchors,
    rank_labels,
    read_records,
    record_from_evaluation,
)
from flexgen.sampling.manifest import SampleEntry, SampleManifest
from tests.metrics_helpers import ANCHORS, measured

# ---------------------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------------------

def test_append_read_round_trip(tmp_path):
    path = tmp_path / "sub" / "records.jsonl"
    first = measured(value=41.5, value_std=0.7, seeds=[0, 1, 2], extra={"gpu": "H100"})
    second = measured(method="flexdit", value=43.25, gflops_per_forward=830.0)
    append_record(path, first)
    append_record(path, second)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["schema"] == "flexgen-eval/1" for line in lines)
    assert read_records(path) == [first, second]


def test_append_after_truncated_line_starts_a_new_line(tmp_path):
    path = tmp_path / "records.jsonl"
    append_record(path, measured())
    with path.open("a") as f:
        f.write('{"metric": "fvd", "val')           # a writer killed mid-line
    append_record(path, measured(value=50.0))
    with pytest.raises(ValueError, match=r"records\.jsonl:2: malformed record"):
        read_records(path)
    assert json.loads(path.read_text().splitlines()[2])["value"] == 50.0


@pytest.mark.parametrize("bad_line, reason", [
    ("{not json", "Expecting property name"),
    ('{"metric": "fvd"}', "missing record field"),
    ('{"metric": "fvd", "protocol": "p", "value": 1.0, "dataset": "ffs", "colour": "red"}', "unknown record field"),
    ('{"metric": "fvd", "protocol": "p", "value": 1.0, "dataset": "ffs"}', "needs detector_sha256"),
    ("[1, 2]", "expected a JSON object"),
])
def test_malformed_line_error_names_the_line(tmp_path, bad_line, reason):
    path = tmp_path / "records.jsonl"
    append_record(path, measured())
    with path.open("a") as f:
        f.write("\n" + bad_line + "\n")              # line 2 blank (skipped), line 3 bad
    with pytest.raises(ValueError, match=rf"records\.jsonl:3: malformed record: .*{reason}"):
        read_records(path)


def test_record_validation():
    with pytest.raises(ValueError, match="finite"):
        measured(value=float("nan"))
    with pytest.raises(ValueError, match="source"):
        Record(metric="fid", protocol="adm_fid50k", value=2.27, dataset="imagenet256", published=True)


@pytest.mark.parametrize("interval, reason", [
    ([2.0, 1.0], "low > high"), ([1.0], "two finite numbers"), ([1.0, 2.0, 3.0], "two finite numbers"),
    ([float("nan"), 1.0], "two finite numbers"), ([1.0, float("inf")], "two finite numbers"),
    ([True, 2.0], "two finite numbers"), ("1,2", "two finite numbers"), ({"low": 1, "high": 2}, "two finite"),
])
def test_interval_validation(interval, reason):
    with pytest.raises(ValueError, match=reason):
        measured(interval=interval)


def test_interval_is_stored_as_a_list_of_floats_and_round_trips(tmp_path):
    record = measured(value=40.0, interval=(38, 42.5))
    assert record.interval == [38.0, 42.5] and all(isinstance(v, float) for v in record.interval)
    assert record.bounds == (38.0, 42.5) and measured(value=40.0).bounds == (40.0, 40.0)
    assert measured(interval=[40.0, 40.0]).interval == [40.0, 40.0]          # a point interval is allowed
    path = tmp_path / "records.jsonl"
    append_record(path, record)
    assert read_records(path) == [record]


def test_an_old_record_line_without_interval_still_loads(tmp_path):
    old = {k: v for k, v in measured(value=41.0).to_dict().items() if k != "interval"}
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (record,) = read_records(path)
    assert record.interval is None and record.value == 41.0 and record.bounds == (41.0, 41.0)


def test_the_floor_row_is_marked_in_extra():
    floor = measured(model_variant="real clips", method="floor", value=2.0, interval=[1.5, 2.5],
                     extra={"floor": True}, gflops_per_forward=None)
    assert floor.is_floor and not measured().is_floor and not measured(extra={"floor": False}).is_floor


# ---------------------------------------------------------------------------------------------------------------
# Anchors
# ---------------------------------------------------------------------------------------------------------------

def test_anchors_load():
    anchors = load_anchors(ANCHORS)
    assert anchors and all(a.published and a.source and a.confidence for a in anchors)
    by = {(a.dataset, a.metric, a.model_variant, a.method): a for a in anchors}
    latte = {ds: by[(ds, "fvd", "Latte-XL/2", "baseline")] for ds in ("ffs", "sky", "ucf101", "taichi")}
    assert [latte[ds].value for ds in ("ffs", "sky", "ucf101")] == [34.00, 59.82, 477.97]
    assert all(latte[ds].confidence == "verified" for ds in ("ffs", "sky", "ucf101"))
    assert latte["taichi"].confidence == "recalled"
    assert all(a.protocol == "styleganv_fvd2048_16f" and a.num_samples == 2048 for a in latte.values())
    dit = by[("imagenet256", "fid", "DiT-XL/2", "baseline")]
    assert (dit.value, dit.gflops_per_forward, dit.protocol) == (2.27, 118.64, "adm_fid50k")


def test_anchor_claiming_to_be_measured_is_rejected(tmp_path):
    path = tmp_path / "anchors.json"
    entry = dict(metric="fid", protocol="adm_fid50k", value=2.27, dataset="imagenet256", source="DiT", published=False)
    path.write_text(json.dumps({"schema": "flexgen-anchors/1", "anchors": [entry]}))
    with pytest.raises(ValueError, match="anchor #0"):
        load_anchors(path)


# ---------------------------------------------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, other", [
    ("protocol", "cdfvd_videomae"), ("detector_sha256", "ff" * 32), ("reference_sha256", "ee" * 32),
    ("num_samples", 10000), ("storage", "mp4"), ("metric", "kid"), ("dataset", "sky"),
])
def test_grouping_never_mixes_what_differs(field, other):
    a, b = measured(value=40.0), measured(value=35.0, **{field: other})
    tables = build_tables([a, b])
    assert len(tables) == 2
    assert sorted(len(t.rows) for t in tables) == [1, 1]


# ---------------------------------------------------------------------------------------------------------------
# Ranking by 95% intervals
# ---------------------------------------------------------------------------------------------------------------

def test_beyond_needs_a_gap_on_the_better_side():
    assert beyond((1.0, 2.0), (2.5, 3.0), higher_is_better=False)
    assert not beyond((2.5, 3.0), (1.0, 2.0), higher_is_better=False)
    assert not beyond((1.0, 2.0), (2.0, 3.0), higher_is_better=False)           # touching ends overlap
    assert beyond((2.5, 3.0), (1.0, 2.0), higher_is_better=True)
    assert not beyond((1.0, 2.0), (2.5, 3.0), higher_is_better=True)


def test_overlapping_intervals_share_a_rank_lower_is_better():
    rows = [measured(method="A", value=1.5, interval=[1.0, 2.0]), measured(method="B", value=2.0, interval=[1.5, 3.0]),
            measured(method="C", value=4.5, interval=[4.0, 5.0])]
    assert rank_labels(rows, higher_is_better=False) == ["1=", "1=", "3"]
    (table,) = build_tables(reversed(rows))
    assert [r.method for r in table.rows] == ["A", "B", "C"] and table.ranks() == ["1=", "1=", "3"]


def test_overlapping_intervals_share_a_rank_higher_is_better():
    rows = [measured(metric="is", method="A", value=-1.5, interval=[-2.0, -1.0]),
            measured(metric="is", method="B", value=-2.0, interval=[-3.0, -1.5]),
            measured(metric="is", method="C", value=-4.5, interval=[-5.0, -4.0])]
    assert rank_labels(rows, higher_is_better=True) == ["1=", "1=", "3"]
    (table,) = build_tables(reversed(rows))
    assert [r.method for r in table.rows] == ["A", "B", "C"] and table.ranks() == ["1=", "1=", "3"]


def test_ranks_count_only_rows_beyond_the_interval():
    """A wide interval keeps a rank shared with rows far from its value; rows without intervals are points."""
    wide = measured(method="wide", value=3.0, interval=[0.5, 9.0])
    rows = [measured(method="a", value=1.0, interval=[0.8, 1.2]), measured(method="b", value=2.0, interval=[1.8, 2.2]),
            wide, measured(method="point", value=5.0), measured(method="point2", value=5.0)]
    assert rank_labels(rows, higher_is_better=False) == ["1=", "2", "1=", "3=", "3="]
    points = [measured(method="x", value=1.0), measured(method="y", value=2.0), measured(method="z", value=3.0)]
    assert rank_labels(points, higher_is_better=False) == ["1", "2", "3"]


def test_the_floor_row_is_not_ranked_and_not_counted():
    floor = measured(model_variant="real clips", method="floor", value=0.5, interval=[0.4, 0.6], extra={"floor": True},
                     gflops_per_forward=None)
    (table,) = build_tables([measured(method="a", value=3.0, interval=[2.0, 4.0]), floor,
                             measured(method="b", value=6.0, interval=[5.0, 7.0])])
    assert [r.method for r in table.rows] == ["floor", "a", "b"]
    assert table.ranks() == ["floor", "1", "2"]


def test_same_protocol_rows_share_a_table_best_first():
    rows = [measured(method="a", value=45.0), measured(method="b", value=38.5), measured(method="c", value=41.0)]
    (table,) = build_tables(rows)
    assert [r.method for r in table.rows] == ["b", "c", "a"]
    higher = [measured(metric="is", method="a", value=60.0), measured(metric="is", method="b", value=70.0)]
    assert [r.method for r in build_tables(higher)[0].rows] == ["b", "a"]


# ---------------------------------------------------------------------------------------------------------------
def test_records_from_evaluations_read_the_generators_json(tmp_path):
    """`flexgen eval --records` turns a result into a Record whose model, sampler, seeds and cost come from the
    sample manifest beside the samples: samples.json (flexgen sample) or FILE.json (flexgen generate)."""
    result = {"metric": "fvd", "protocol": "fvd2048_16f", "value": 123.4, "detector": "i3d_torchscript.pt",
              "detector_sha256": "a" * 64, "reference_stats_sha256": "b" * 64, "num_fake": 2048, "kid": 0.01}
    video = tmp_path / "video"
    video.mkdir()
    SampleManifest(command="flexgen sample", family="latte", model="Latte-XL/2", method="flexdit Latte-XL/2",
                   checkpoint="ffs.safetensors", checkpoint_sha256="c" * 64, sampler="ddpm", steps=250, cfg_scale=1.0,
                   seed=0, storage="mp4", samples=[SampleEntry(0, "0000.mp4", 0)], complete=True,
                   cost={"gmacs_per_sample": 500.0, "gmacs_per_forward": 2.0},
                   settings={"config": "configs/video/ffs/flexlatte-xl2.yaml"}).write(video / "samples.json")
    record = record_from_evaluation(result, "ffs", video)
    assert (record.model_family, record.model_variant, record.method) == ("latte", "Latte-XL/2", "flexdit Latte-XL/2")
    assert (record.sampler, record.steps, record.seeds, record.storage) == ("ddpm", 250, [0], "mp4")
    assert (record.ckpt_sha256, record.reference_sha256, record.num_samples) == ("c" * 64, "b" * 64, 2048)
    assert record.gflops_per_sample == 500.0 and record.gflops_per_forward == 2.0 and record.extra["kid"] == 0.01
    assert record.interval is None
    assert record_from_evaluation({**result, "interval": [120.0, 127.5]}, "ffs", video).interval == [120.0, 127.5]

    images = tmp_path / "images"
    (images / "flex" / "transformer").mkdir(parents=True)
    (images / "flex" / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    SampleManifest(command="flexgen generate", family="pixart-alpha", model="flex", method="flexdit PixArt-XL/2",
                   checkpoint=str(images / "flex"), checkpoint_sha256=hashlib.sha256(b"weights").hexdigest(),
                   sampler="dpm-solver", steps=20, cfg_scale=4.5, seed=0, storage="png", complete=True,
                   samples=[SampleEntry(0, "coco-000.png", 0, prompt="a cat")],
                   cost={"gmacs_per_forward": 80.8, "gmacs_per_sample": 3200.0, "seconds_per_sample": 1.5},
                   settings={"transformer": str(images / "flex")}).write(images / "coco.json")
    result = {**result, "metric": "fid", "protocol": "fid30k_coco"}
    record = record_from_evaluation(result, "coco30k", images, method="flexdit r=[0.75,0.90]")
    assert (record.model_family, record.model_variant, record.method) == ("pixart-alpha", "flex",
                                                                          "flexdit r=[0.75,0.90]")
    assert (record.sampler, record.steps, record.cfg_scale, record.latency_s) == ("dpm-solver", 20, 4.5, 1.5)
    assert record.ckpt_sha256 == hashlib.sha256(b"weights").hexdigest()
    assert (record.gflops_per_forward, record.gflops_per_sample) == (80.8, 3200.0)
    with pytest.raises(ValueError, match="detector_sha256 and reference_sha256"):
        record_from_evaluation({**result, "reference_stats_sha256": None}, "coco30k", tmp_path)


def test_a_record_of_fewer_real_videos_keeps_the_renamed_protocol(tmp_path):
    """An evaluation allowed on 16 real videos is named fvd16x2048_16f (flexgen.metrics.evaluate): its record keeps
    that name and the counts, and never shares a table with fvd2048_16f rows."""
    base = {"metric": "fvd", "value": 123.4, "detector": "i3d", "detector_sha256": "a" * 64, "num_fake": 2048}
    full = record_from_evaluation({**base, "protocol": "fvd2048_16f", "reference_stats_sha256": "b" * 64,
                                   "num_real": 2048, "num_real_discarded": 0}, "ffs", tmp_path)
    fewer = record_from_evaluation({**base, "protocol": "fvd16x2048_16f", "reference_stats_sha256": "b" * 64,
                                    "num_real": 16, "num_real_discarded": 4}, "ffs", tmp_path)
    assert fewer.protocol == "fvd16x2048_16f" and (fewer.extra["num_real"], fewer.extra["num_real_discarded"]) == \
        (16, 4)
    assert sorted(t.key.protocol for t in build_tables([full, fewer])) == ["fvd16x2048_16f", "fvd2048_16f"]
