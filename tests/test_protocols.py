"""Evaluation protocols: real / generated clip sampling, reference statistics cache, evaluate, eval_main.

Data are made here: short mp4s (flexgen.video.io.write_video) and PNG frame folders in which every pixel of frame
i holds a value derived from i, so the frame indices of a sampled clip can be read back from its pixels. The
detector is a fixed random projection of mean-pooled pixels with a non-standard sha256.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexgen.metrics.i3d import I3D_SHA256
from flexgen.metrics.protocols import (
    PROTOCOLS,
    Protocol,
    add_eval_arguments,
    eval_main,
    evaluate,
    get_protocol,
    metric_name,
    sample_fake_clips,
    sample_real_clips,
)
from flexgen.video.io import write_video

SIZE = 16           # frame height and width
LEVEL = 4           # frame i of an index-encoded video has pixel value LEVEL * i

# Small version of fvd2048_16f: 4-frame clips, real stride 3, real videos need >= 12 frames.
TINY = Protocol("fvd6_4f", "fvd", num_real=6, num_fake=6, num_frames=4, real_stride=3, fake_stride=1,
                min_real_frames=12, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: a tiny random detector and index-encoded videos
# ---------------------------------------------------------------------------------------------------------------
class RandomDetector:
    """A fixed random projection of mean-pooled pixels: (N, T, 3, H, W) uint8 -> (N, 8) float64."""

    name = "random-i3d"

    def __init__(self, seed: int = 0, dim: int = 8):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(3 * 2 * 2, dim, generator=generator, dtype=torch.float64)
        self.sha256 = hashlib.sha256(f"random-i3d seed={seed} dim={dim}".encode()).hexdigest()
        self.calls = 0

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        assert videos.dtype == torch.uint8 and videos.ndim == 5 and videos.shape[2] == 3
        self.calls += 1
        x = videos.double().mean(dim=1) / 255.0                                     # (N, 3, H, W)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)          # (N, 12)
        return pooled @ self.weight


def indexed_frames(num_frames: int, base: int = 0) -> np.ndarray:
    """(F, H, W, 3) uint8 where frame i is the flat value base + LEVEL * i."""
    values = base + LEVEL * np.arange(num_frames)
    return np.broadcast_to(values[:, None, None, None], (num_frames, SIZE, SIZE, 3)).astype(np.uint8).copy()


def write_frame_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img_{i}.png")       # img_2 < img_10: list_frames sorts by number


def frame_indices(batch: torch.Tensor, base: int = 0) -> np.ndarray:
    """(N, T) frame indices read back from index-encoded clips."""
    return np.rint((batch.double().mean(dim=(2, 3, 4)).numpy() - base) / LEVEL).astype(int)


@pytest.fixture
def real_frames(tmp_path: Path) -> Path:
    """10 PNG frame folders of 12..30 frames, plus 2 too-short ones (5 and 11 frames)."""
    root = tmp_path / "real"
    for v, length in enumerate([12, 14, 16, 18, 20, 22, 24, 26, 28, 30]):
        write_frame_folder(root / f"video{v:02d}", indexed_frames(length))
    write_frame_folder(root / "short_a", indexed_frames(5))
    write_frame_folder(root / "short_b", indexed_frames(11))
    return root


def random_videos(folder: Path, count: int, num_frames: int, seed: int, shift: int = 0) -> Path:
    """`count` mp4s of smooth random colour blobs, `shift` added to every pixel."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for v in range(count):
        coarse = rng.integers(0, 160, size=(num_frames, 2, 2, 3)).astype(np.uint8)
        frames = coarse.repeat(SIZE // 2, axis=1).repeat(SIZE // 2, axis=2).astype(np.int64) + shift
        write_video(folder / f"sample_{v:03d}.mp4", np.clip(frames, 0, 255).astype(np.uint8))
    return folder


def all_clips(clip_set) -> torch.Tensor:
    return torch.cat(list(clip_set))


# ---------------------------------------------------------------------------------------------------------------
# Protocols and metric names
# ---------------------------------------------------------------------------------------------------------------
def test_registry_and_rename():
    fvd = PROTOCOLS["fvd2048_16f"]
    assert (fvd.num_real, fvd.num_fake, fvd.num_frames, fvd.real_stride, fvd.fake_stride, fvd.min_real_frames) == \
        (2048, 2048, 16, 3, 1, 48)
    assert fvd.with_counts(64, 64).name == "fvd64_16f"
    assert fvd.with_counts(64, 128).name == "fvd64x128_16f"
    assert fvd.with_counts() is fvd
    assert get_protocol("kid2048_16f").metric == "kid"
    with pytest.raises(KeyError, match="unknown protocol"):
        get_protocol("fvd_nonsense")
    with pytest.raises(ValueError, match="shorter than one real clip"):
        dataclasses.replace(fvd, min_real_frames=20)


def test_metric_name_only_plain_for_standard_detector():
    detector = RandomDetector()
    assert metric_name("fvd", detector) == "fvd[random-i3d]"
    detector.sha256 = I3D_SHA256
    assert metric_name("fvd", detector) == "fvd"


# ---------------------------------------------------------------------------------------------------------------
# Real clips
# ---------------------------------------------------------------------------------------------------------------
def test_real_sampling_is_deterministic_per_seed(real_frames: Path):
    first = sample_real_clips(real_frames, TINY)
    again = sample_real_clips(real_frames, TINY)
    other = sample_real_clips(real_frames, dataclasses.replace(TINY, seed=1))
    plan = [(c.source.rel, c.indices) for c in first.clips]
    assert plan == [(c.source.rel, c.indices) for c in again.clips]
    assert plan != [(c.source.rel, c.indices) for c in other.clips]
    assert len(first) == 6 and first.num_candidates == 10                      # a random subset of 10 usable
    assert torch.equal(all_clips(first), all_clips(again))


def test_real_stride_offset_and_short_videos(real_frames: Path):
    clips = sample_real_clips(real_frames, TINY, batch_size=4)
    assert sorted(clips.discarded) == [("short_a", 5), ("short_b", 11)]
    batches = list(clips)
    assert [tuple(b.shape) for b in batches] == [(4, 4, 3, SIZE, SIZE), (2, 4, 3, SIZE, SIZE)]
    assert all(b.dtype == torch.uint8 for b in batches)
    read_back = frame_indices(torch.cat(batches))
    offsets = set()
    for clip, indices in zip(clips.clips, read_back, strict=True):
        length = int(clip.source.rel.removeprefix("video")) * 2 + 12
        assert list(indices) == list(clip.indices)                            # the pixels are those frames
        assert np.all(np.diff(indices) == 3)                                    # stride 3
        assert 0 <= indices[0] <= length - 10                                    # the clip fits in the video
        offsets.add(int(indices[0]))
    assert len(offsets) > 1                                                       # offsets are drawn, not all 0


def test_real_clips_from_video_files(tmp_path: Path):
    root = tmp_path / "videos" / "ClassA"
    root.mkdir(parents=True)
    write_video(root / "v1.mp4", indexed_frames(20))
    write_video(root / "v2.mp4", indexed_frames(8))                               # too short
    clips = sample_real_clips(tmp_path / "videos", TINY)
    assert len(clips) == 1 and clips.discarded == [("ClassA/v2.mp4", 8)]
    indices = np.rint(all_clips(clips).double().mean(dim=(2, 3, 4)).numpy() / LEVEL)[0]
    assert np.allclose(indices, clips.clips[0].indices, atol=0.6)              # lossy codec: within one level


# ---------------------------------------------------------------------------------------------------------------
# Generated clips
# ---------------------------------------------------------------------------------------------------------------
def test_fake_clips_take_the_first_frames(tmp_path: Path):
    folder = tmp_path / "fake"
    folder.mkdir()
    for v in range(7):
        write_video(folder / f"s{v}.mp4", indexed_frames(9, base=20 * v))
    clips = sample_fake_clips(folder, TINY)
    assert [c.source.rel for c in clips.clips] == [f"s{v}.mp4" for v in range(6)]   # first num_fake, sorted
    batch = all_clips(clips)
    assert batch.shape == (6, 4, 3, SIZE, SIZE)
    for v in range(6):
        indices = (batch[v].double().mean(dim=(1, 2, 3)).numpy() - 20 * v) / LEVEL
        assert np.allclose(indices, [0, 1, 2, 3], atol=0.6)
    with pytest.raises(ValueError, match="needs 8 generated videos"):
        sample_fake_clips(folder, TINY.with_counts(8, 8))


# ---------------------------------------------------------------------------------------------------------------
# evaluate: values, names, reference cache
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def video_sets(tmp_path: Path) -> tuple[Path, Path]:
    """8 real 4-frame videos (so real clips are the whole videos, like generated ones) and a brighter copy."""
    real = random_videos(tmp_path / "same", 8, 4, seed=0)
    shifted = random_videos(tmp_path / "shifted", 8, 4, seed=0, shift=80)
    return real, shifted


SAME = Protocol("fvd8_4f", "fvd", num_real=8, num_fake=8, num_frames=4, real_stride=1, fake_stride=1,
                min_real_frames=4)


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
from flexgen.metrics.protocols import evaluate
from test_protocols import SAME, RandomDetector

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


def test_rank_blocks_cover_every_item_once():
    from flexgen.metrics.protocols import rank_block

    for count in (0, 1, 7, 8, 30):
        for world in (1, 2, 3, 8):
            items = [i for r in range(world) for i in range(count)[rank_block(count, r, world)]]
            assert items == list(range(count))
