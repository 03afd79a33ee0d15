"""Evaluation under a protocol: metric names, evaluate (values, reference statistics cache, fewer real items refused
or renamed, corrupt files), eval_main and its errors, torchrun.

Videos are smooth random colour blobs, images random colour blocks; the detectors are fixed random projections
(tests/metrics_helpers.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest

from flexgen import cli
from flexgen.data.media import write_video
from flexgen.metrics import i3d
from flexgen.metrics.eval_command import add_eval_arguments, eval_main
from flexgen.metrics.evaluate import evaluate, metric_name
from flexgen.metrics.i3d import I3D_SHA256
from flexgen.metrics.protocols import PROTOCOLS
from flexgen.metrics.records import record_from_evaluation
from tests.data_helpers import truncate, write_garbage
from tests.metrics_helpers import (
    FID8,
    SAME,
    RandomDetector,
    RandomImageDetector,
    indexed_frames,
    random_images,
    random_videos,
)


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
    # --intervals: the value's 95% interval and KID's, which the record keeps
    spread = evaluate(SAME, real, shifted, detector, tmp_path / "cache", intervals=True)
    assert spread["value"] == pytest.approx(far["value"]) and "interval" not in far
    low, high = spread["interval"]
    assert 0 <= low <= spread["value"] + 1e-9 and spread["value"] <= high
    assert spread["kid_interval"][0] < spread["kid"] < spread["kid_interval"][1]
    assert record_from_evaluation(spread, "test", real).interval == [low, high]


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
# Fewer real items than the protocol: refused, or evaluated under the renamed protocol
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def short_real(tmp_path: Path) -> Path:
    """5 usable real 4-frame videos, one too short (3 frames) and one that is not a video: 7 found."""
    real = random_videos(tmp_path / "real", 5, 4, seed=0)
    write_video(real / "short.mp4", indexed_frames(3))
    write_garbage(real / "junk.mp4")
    return real


FEWER = (r"real: protocol fvd8_4f needs 8 real videos, only 5 are usable \(7 found, 2 discarded: 1 shorter than 4 "
         r"frames \(e\.g\. short\.mp4 \(3 frames\)\), 1 corrupt or unreadable \(e\.g\. junk\.mp4\)\); pass "
         r"--allow-fewer \(allow_fewer=True in Python\) to evaluate on these 5 under the name fvd5x8_4f, or "
         r"--num-real 5")


def test_fewer_real_videos_are_refused_before_any_feature(short_real, video_sets, tmp_path: Path):
    _, shifted = video_sets
    detector = RandomDetector()
    with pytest.raises(ValueError, match=FEWER):
        evaluate(SAME, short_real, shifted, detector, tmp_path / "cache")
    assert detector.calls == 0 and not (tmp_path / "cache").exists()          # refused, not computed then refused


def test_allow_fewer_renames_the_protocol_on_cache_miss_and_hit(short_real, video_sets, tmp_path: Path):
    _, shifted = video_sets
    cache = tmp_path / "cache"
    detector = RandomDetector()
    first = evaluate(SAME, short_real, shifted, detector, cache, allow_fewer=True)
    assert not first["reference_cache_hit"] and first["protocol"] == "fvd5x8_4f"
    assert (first["protocol_fields"]["num_real"], first["protocol_fields"]["num_fake"]) == (5, 8)
    assert (first["num_real"], first["num_fake"], first["num_real_discarded"]) == (5, 8, 2)
    assert first["real_discarded"] == {"found": 7, "too_short": 1, "corrupt": 1, "corrupt_files": ["junk.mp4"],
                                       "too_short_files": ["short.mp4 (3 frames)"]}
    assert Path(first["reference_stats"]).name.startswith("fvd8_4f-")       # keyed by the requested protocol

    calls = detector.calls
    with pytest.raises(ValueError, match=FEWER):                               # cache hit: the cached count
        evaluate(SAME, short_real, shifted, detector, cache)
    assert detector.calls == calls
    again = evaluate(SAME, short_real, shifted, detector, cache, allow_fewer=True)
    assert again["reference_cache_hit"] and again["protocol"] == "fvd5x8_4f" and again["value"] == first["value"]
    assert again["protocol_fields"] == first["protocol_fields"] and again["real_discarded"] == first["real_discarded"]
    assert detector.calls == calls + 1                                         # the generated batch only

    exact = evaluate(SAME.with_counts(num_real=5), short_real, shifted, detector, cache)   # --num-real 5
    assert exact["protocol"] == "fvd5x8_4f" and exact["value"] == pytest.approx(first["value"])


def test_fewer_real_images_are_refused_or_renamed(tmp_path: Path):
    """fid (and fid30k_coco, which used to warn only): the same rule; a corrupt real image counts as discarded."""
    real = random_images(tmp_path / "real", 7, seed=0)
    truncate(real / "img_001.png")
    fake = random_images(tmp_path / "fake", 8, seed=1)
    detector = RandomImageDetector()
    with pytest.raises(ValueError, match=r"real: protocol fid8 needs 8 real images, only 6 are usable \(7 found, 1 "
                                         r"discarded: 1 corrupt or unreadable \(e\.g\. img_001\.png\)\); pass "
                                         r"--allow-fewer .* under the name fid6x8, or --num-real 6"):
        evaluate(FID8, real, fake, detector, tmp_path / "cache")
    assert detector.calls == 0
    result = evaluate(FID8, real, fake, detector, tmp_path / "cache", allow_fewer=True)
    assert result["protocol"] == "fid6x8" and result["num_real"] == 6 and result["num_real_discarded"] == 1
    assert result["metric"] == "fid[random-inception]" and result["value"] > 0

    coco = PROTOCOLS["fid30k_coco"].with_counts(num_fake=8)
    with pytest.raises(ValueError, match=r"protocol fid30000x8_coco16 needs 30000 real images, only 6 are usable .*"
                                         r"under the name fid6x8_coco16"):
        evaluate(coco, real, fake, detector, tmp_path / "cache")
    renamed = evaluate(coco, real, fake, detector, tmp_path / "cache", allow_fewer=True)
    assert renamed["protocol"] == "fid6x8_coco16" and renamed["protocol_fields"]["real_size"] == (16, 16)


def test_a_corrupt_generated_video_is_refused_before_the_real_features(video_sets, tmp_path: Path):
    real, shifted = video_sets
    truncate(shifted / "sample_004.mp4")
    detector = RandomDetector()
    with pytest.raises(ValueError, match=r"sample_004\.mp4 is corrupt or unreadable .*delete it and re-run the "
                                         r"sampling command"):
        evaluate(SAME, real, shifted, detector, tmp_path / "cache")
    assert detector.calls == 0


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
    with pytest.raises(FileNotFoundError, match="Inception"):
        eval_main(parser.parse_args(["fid", "--real", str(real), "--fake", str(shifted)]))


def test_eval_main_errors_are_value_errors(tmp_path: Path, video_sets):
    real, shifted = video_sets
    parser = add_eval_arguments(argparse.ArgumentParser())
    cases = [(["fvd", "--real", str(real), "--fake", str(shifted), "--protocol", "fvd9999"],
              r"^unknown protocol 'fvd9999'; known: clips_b32_hessel, .*fvd2048_16f"),
             (["fvd", "--real", str(real), "--fake", str(shifted), "--protocol", "fid50k"],
              r"^protocol fid50k measures fid, not fvd$"),
             (["fvd", "--fake", str(shifted)], r"^--real DIR is required for fvd \(the real videos"),
             (["fvd", "--real", str(real), "--fake", str(shifted), "--records", "r.jsonl"],
              r"^--records needs --dataset NAME"),
             (["clipscore", "--fake", str(shifted), "--allow-fewer"], r"^--allow-fewer does not apply to clipscore")]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message):
            eval_main(parser.parse_args(argv))


def test_flexgen_eval_fewer_real_videos(tmp_path: Path, monkeypatch, capsys):
    """`flexgen eval fvd` on 5 usable real videos with a protocol of 8: one line `flexgen eval: error: ...` naming
    both counts and --allow-fewer, exit status 2; with --allow-fewer, the renamed protocol."""
    real = random_videos(tmp_path / "real", 5, 48, seed=0)                      # fvd8_16f: 16 frames, stride 3
    write_garbage(real / "broken.mp4")
    fake = random_videos(tmp_path / "fake", 8, 16, seed=1)
    monkeypatch.setattr(i3d, "I3DDetector", lambda path=None, device="cpu", batch_size=8: RandomDetector())
    argv = ["eval", "fvd", "--real", str(real), "--fake", str(fake), "--num-real", "8", "--num-fake", "8",
            "--cache", str(tmp_path / "cache"), "--device", "cpu", "--no-kid"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flexgen eval: error: {real}: protocol fvd8_16f needs 8 real videos, only 5 are usable "
                          f"(6 found, 1 discarded: 1 corrupt or unreadable (e.g. broken.mp4)); pass --allow-fewer")
    assert "under the name fvd5x8_16f, or --num-real 5" in err and "Traceback" not in err

    assert cli.main([*argv, "--allow-fewer"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["protocol"] == "fvd5x8_16f" and result["num_real"] == 5 and result["num_real_discarded"] == 1

    assert cli.main(["eval", "fvd", "--real", str(real), "--fake", str(fake), "--protocol", "fvd9999"]) == 2
    assert capsys.readouterr().err.startswith("flexgen eval: error: unknown protocol 'fvd9999'; known: ")


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


@pytest.mark.slow
def test_evaluation_under_torchrun_equals_one_process(video_sets, tmp_path: Path, free_port):
    """Two CPU ranks (gloo): each extracts features of its block of clips, the statistics are summed and the kept
    features gathered in order, so FVD and KID equal the one-process numbers; rank 0 writes the cache once."""
    import os
    import subprocess
    import sys

    real, shifted = video_sets
    one = evaluate(SAME, real, shifted, RandomDetector(), tmp_path / "cache1", kid_subsets=10)
    script = tmp_path / "worker.py"
    tests = Path(__file__).resolve().parents[1]
    script.write_text(TORCHRUN_WORKER.format(tests=str(tests), real=str(real), fake=str(shifted),
                                             cache=str(tmp_path / "cache2"), out=str(tmp_path / "two.json")))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port}", str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["value"] == pytest.approx(one["value"], rel=1e-9, abs=1e-12)
    assert two["kid"] == pytest.approx(one["kid"], rel=1e-9, abs=1e-12)
    assert (two["num_real"], two["num_fake"]) == (one["num_real"], one["num_fake"])
    assert len(list((tmp_path / "cache2").glob("*.npz"))) == 1                 # written once, by rank 0
    assert Path(two["reference_stats"]).name == Path(one["reference_stats"]).name   # the same cache key
