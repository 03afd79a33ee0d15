"""Evaluation under a protocol: metric names, evaluate (values, reference statistics cache), eval_main, torchrun.

Videos are smooth random colour blobs; the detector is a fixed random projection (tests/metrics_helpers.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest

from flexgen.data.media import write_video
from flexgen.metrics.evaluate import add_eval_arguments, eval_main, evaluate, metric_name
from flexgen.metrics.i3d import I3D_SHA256
from tests.metrics_helpers import SAME, RandomDetector, indexed_frames, random_videos


# ---------------------------------------------------------------------------------------------------------------
# Metric names
# ---------------------------------------------------------------------------------------------------------------
def test_metric_name_only_plain_for_standard_detector():
    detector = RandomDetector()
    assert metric_name("fvd", detector) == "fvd[random-i3d]"
    detector.sha256 = I3D_SHA256
    assert metric_name("fvd", detector) == "fvd"


# ---------------------------------------------------------------------------------------------------------------
# evaluate: values, names, reference cache
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def video_sets(tmp_path: Path) -> tuple[Path, Path]:
    """8 real 4-frame videos (so real clips are the whole videos, like generated ones) and a brighter copy."""
    real = random_videos(tmp_path / "same", 8, 4, seed=0)
    shifted = random_videos(tmp_path / "shifted", 8, 4, seed=0, shift=80)
    return real, shifted


def test_evaluate_identical_and_shifted(video_sets, tmp_path: Path):
    real, shifted = video_sets
    detector = RandomDetector()
    same = evaluate(SAME, real, real, detector, tmp_path / "cache")
    assert same["value"] == pytest.approx(0.0, abs=1e-9)
    assert same["metric"] == "fvd[random-i3d]" and same["detector"] == "random-i3d"
    assert same["detector_sha256"] == detector.sha256
    assert (same["num_real"], same["num_fake"], same["num_real_discarded"]) == (8, 8, 0)
    assert same["protocol"] == "fvd8_4f" and "kid" in same        # unbiased KID of a set against itself is < 0
    assert same["reference_stats_sha256"] == hashlib.sha256(Path(same["reference_stats"]).read_bytes()).hexdigest()
    far = evaluate(SAME, real, shifted, detector, tmp_path / "cache")
    assert far["value"] > 0.01 and far["kid"] > same["kid"]
    json.dumps(far)                                                               # a JSON-serialisable record


def test_reference_cache_reuse_and_invalidation(video_sets, tmp_path: Path):
    real, shifted = video_sets
    cache = tmp_path / "cache"
    detector = RandomDetector()
    first = evaluate(SAME, real, shifted, detector, cache)
    calls = detector.calls
    second = evaluate(SAME, real, shifted, detector, cache)
    assert not first["reference_cache_hit"] and second["reference_cache_hit"]
    assert detector.calls - calls == 1                                            # only the generated batch ran
    assert second["value"] == first["value"] and second["reference_stats"] == first["reference_stats"]
    assert Path(first["reference_stats"]).name.startswith("fvd8_4f-")

    write_video(real / "sample_000.mp4", indexed_frames(4, base=100))             # a real file changes
    third = evaluate(SAME, real, shifted, detector, cache)
    assert not third["reference_cache_hit"] and third["reference_stats"] != first["reference_stats"]
    assert third["value"] != first["value"]

    other = evaluate(SAME, real, shifted, RandomDetector(seed=1), cache)          # another detector: another key
    assert not other["reference_cache_hit"]
    assert len(list(cache.glob("*.npz"))) == 3 and not list(cache.glob(".*tmp"))


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------
def test_eval_main_missing_weights(tmp_path: Path, video_sets):
    real, shifted = video_sets
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["fvd", "--real", str(real), "--fake", str(shifted), "--detector",
                              str(tmp_path / "missing.pt"), "--cache", str(tmp_path / "cache"),
                              "--num-real", "8", "--num-fake", "8", "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match="I3D detector weights not found"):
        eval_main(args)
    with pytest.raises(SystemExit, match="Inception"):
        eval_main(parser.parse_args(["fid", "--real", str(real), "--fake", str(shifted)]))


TORCHRUN_WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from flexgen import dist
from flexgen.metrics.evaluate import evaluate
from metrics_helpers import SAME, RandomDetector

env = dist.init("cpu")
result = evaluate(SAME, {real!r}, {fake!r}, RandomDetector(), {cache!r}, kid_subsets=10)
if env.is_main:
    with open({out!r}, "w") as f:
        json.dump(result, f)
dist.shutdown()
"""


def test_evaluation_under_torchrun_equals_one_process(video_sets, tmp_path: Path):
    """Two CPU ranks (gloo): each extracts features of its block of clips, the statistics are summed and the kept
    features gathered in order, so FVD and KID equal the one-process numbers; rank 0 writes the cache once."""
    import os
    import subprocess
    import sys

    real, shifted = video_sets
    one = evaluate(SAME, real, shifted, RandomDetector(), tmp_path / "cache1", kid_subsets=10)
    script = tmp_path / "worker.py"
    script.write_text(TORCHRUN_WORKER.format(tests=str(Path(__file__).parent), real=str(real), fake=str(shifted),
                                             cache=str(tmp_path / "cache2"), out=str(tmp_path / "two.json")))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29531", str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["value"] == pytest.approx(one["value"], rel=1e-9, abs=1e-12)
    assert two["kid"] == pytest.approx(one["kid"], rel=1e-9, abs=1e-12)
    assert (two["num_real"], two["num_fake"]) == (one["num_real"], one["num_fake"])
    assert len(list((tmp_path / "cache2").glob("*.npz"))) == 1                 # written once, by rank 0
    assert Path(two["reference_stats"]).name == Path(one["reference_stats"]).name   # the same cache key
