"""Real and generated inputs of an evaluation: seeded real clip selection (strides, offsets, short videos), the
first frames of generated clips, corrupt real files (discarded, counted) and generated ones (refused), rank blocks.
Videos are index-encoded (tests/metrics_helpers.py); corrupt files are junk bytes or truncated copies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexgen.data.media import write_video
from flexgen.metrics.selection import (
    resolve_protocol,
    select_fake_clips,
    select_fake_images,
    select_real_clips,
    select_real_images,
)
from flexgen.metrics.sources import describe_discards, rank_block
from tests.data_helpers import truncate, write_garbage
from tests.metrics_helpers import (
    FID8,
    LEVEL,
    SAME,
    SIZE,
    TINY,
    all_clips,
    frame_indices,
    indexed_frames,
    random_images,
    write_frame_folder,
)


@pytest.fixture
def real_frames(tmp_path: Path) -> Path:
    """10 PNG frame folders of 12..30 frames, plus 2 too-short ones (5 and 11 frames)."""
    root = tmp_path / "real"
    for v, length in enumerate([12, 14, 16, 18, 20, 22, 24, 26, 28, 30]):
        write_frame_folder(root / f"video{v:02d}", indexed_frames(length))
    write_frame_folder(root / "short_a", indexed_frames(5))
    write_frame_folder(root / "short_b", indexed_frames(11))
    return root


# ---------------------------------------------------------------------------------------------------------------
# Real clips
# ---------------------------------------------------------------------------------------------------------------
def test_real_selection_is_deterministic_per_seed(real_frames: Path):
    first = select_real_clips(real_frames, TINY)
    again = select_real_clips(real_frames, TINY)
    other = select_real_clips(real_frames, dataclasses.replace(TINY, seed=1))
    plan = [(c.source.rel, c.indices) for c in first.clips]
    assert plan == [(c.source.rel, c.indices) for c in again.clips]
    assert plan != [(c.source.rel, c.indices) for c in other.clips]
    assert len(first) == 6 and first.num_candidates == 10                      # a random subset of 10 usable
    assert torch.equal(all_clips(first), all_clips(again))


def test_real_stride_offset_and_short_videos(real_frames: Path):
    clips = select_real_clips(real_frames, TINY, batch_size=4)
    assert sorted(clips.too_short) == [("short_a", 5), ("short_b", 11)] and clips.corrupt == []
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
    clips = select_real_clips(tmp_path / "videos", TINY)
    assert len(clips) == 1 and clips.too_short == [("ClassA/v2.mp4", 8)]
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
    clips = select_fake_clips(folder, TINY)
    assert [c.source.rel for c in clips.clips] == [f"s{v}.mp4" for v in range(6)]   # first num_fake, sorted
    batch = all_clips(clips)
    assert batch.shape == (6, 4, 3, SIZE, SIZE)
    for v in range(6):
        indices = (batch[v].double().mean(dim=(1, 2, 3)).numpy() - 20 * v) / LEVEL
        assert np.allclose(indices, [0, 1, 2, 3], atol=0.6)
    with pytest.raises(ValueError, match="needs 8 generated videos"):
        select_fake_clips(folder, TINY.with_counts(8, 8))


# ---------------------------------------------------------------------------------------------------------------
# Corrupt files: real ones discarded and counted, generated ones refused by name
# ---------------------------------------------------------------------------------------------------------------
def test_corrupt_real_videos_are_discarded_and_counted(tmp_path: Path, caplog):
    root = tmp_path / "real"
    root.mkdir()
    for v in range(3):
        write_video(root / f"v{v}.mp4", indexed_frames(20))
    write_video(root / "short.mp4", indexed_frames(8))
    write_garbage(root / "junk.mp4")                                            # not a video at all
    write_video(root / "cut.mp4", indexed_frames(20))
    truncate(root / "cut.mp4")                                                  # a killed write: no moov atom
    with caplog.at_level("WARNING", logger="flexgen.metrics.sources"):
        clips = select_real_clips(root, TINY)
    assert [c.source.rel for c in clips.clips] == ["v0.mp4", "v1.mp4", "v2.mp4"]
    assert clips.too_short == [("short.mp4", 8)] and [rel for rel, _ in clips.corrupt] == ["cut.mp4", "junk.mp4"]
    assert "VideoDecodeError" in clips.corrupt[0][1]
    assert (clips.num_found, clips.num_candidates, clips.num_discarded) == (6, 3, 3)
    summary = clips.discard_summary()
    assert summary == {"found": 6, "too_short": 1, "corrupt": 2, "too_short_files": ["short.mp4 (8 frames)"],
                       "corrupt_files": ["cut.mp4", "junk.mp4"]}
    assert describe_discards(summary, 12) == ("1 shorter than 12 frames (e.g. short.mp4 (8 frames)), 2 corrupt or "
                                              "unreadable (e.g. cut.mp4, junk.mp4)")
    assert "2 corrupt or unreadable real videos discarded" in caplog.text and "junk.mp4" in caplog.text
    assert all_clips(clips).shape == (3, 4, 3, SIZE, SIZE)

    for name in ("v0.mp4", "v1.mp4", "v2.mp4", "short.mp4"):
        (root / name).unlink()
    with pytest.raises(ValueError, match=r"no usable video for protocol fvd6_4f.*2 found: 2 corrupt or unreadable"):
        select_real_clips(root, TINY)


def test_frame_folder_with_an_unreadable_frame_is_discarded(tmp_path: Path):
    root = tmp_path / "real"
    for v in range(3):
        write_frame_folder(root / f"video{v}", indexed_frames(4))               # SAME: the clip is frames 0..3
    truncate(root / "video1" / "img_2.png")
    clips = select_real_clips(root, SAME)
    assert [c.source.rel for c in clips.clips] == ["video0", "video2"]
    assert [rel for rel, _ in clips.corrupt] == ["video1"] and "img_2.png" in clips.corrupt[0][1]


def test_a_real_file_failing_only_when_read_is_refused_by_name(tmp_path: Path):
    """A truncated JPEG passes PIL's verify (which does not decode it) and fails when its pixels are read."""
    root = random_images(tmp_path / "real", 8, seed=0, suffix=".jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)   # scan data past the header
    Image.fromarray(noise).save(root / "img_003.jpg", quality=95)
    truncate(root / "img_003.jpg", keep=0.6)
    images = select_real_images(root, FID8)
    assert len(images) == 8 and images.corrupt == []
    with pytest.raises(ValueError, match=r"img_003\.jpg: this real image is corrupt or unreadable .*it failed only "
                                         r"when read.*: delete or replace it and evaluate again"):
        list(images)


def test_corrupt_real_images_are_discarded_before_the_draw(tmp_path: Path):
    root = random_images(tmp_path / "real", 10, seed=0)
    write_garbage(root / "img_004.png")
    truncate(root / "img_007.png")
    images = select_real_images(root, FID8)
    assert [rel for rel, _ in images.corrupt] == ["img_004.png", "img_007.png"]
    assert len(images) == 8 and images.num_found == 10 and images.num_candidates == 8
    assert [p.name for p in images.paths] == [f"img_{i:03d}.png" for i in (0, 1, 2, 3, 5, 6, 8, 9)]
    assert images.discard_summary()["corrupt"] == 2 and len(list(images)) == 1


def test_corrupt_generated_files_are_refused_by_name(tmp_path: Path):
    fake = tmp_path / "fake"
    fake.mkdir()
    for v in range(7):
        write_video(fake / f"s{v}.mp4", indexed_frames(9))
    truncate(fake / "s3.mp4")
    write_garbage(fake / "s5.mp4")
    with pytest.raises(ValueError, match=r"s3\.mp4 is corrupt or unreadable \(VideoDecodeError.*\(and 1 more generated "
                                         r"videos: .*s5\.mp4\); a generated video must be complete: delete them "
                                         r"and re-run the sampling command"):
        select_fake_clips(fake, TINY)
    truncate(fake / "s6.mp4")                                                   # beyond the first num_fake
    (fake / "s3.mp4").unlink()
    (fake / "s5.mp4").unlink()
    assert len(select_fake_clips(fake, TINY.with_counts(num_fake=4))) == 4      # s0, s1, s2, s4

    images = random_images(tmp_path / "images", 8, seed=1)
    truncate(images / "img_002.png")
    with pytest.raises(ValueError, match=r"img_002\.png is corrupt or unreadable .*delete it and re-run"):
        select_fake_images(images, FID8)
    write_garbage(images / "img_002.png")
    crop = dataclasses.replace(FID8, real_resize="center_crop")                 # the crop size is read from them
    with pytest.raises(ValueError, match=r"img_002\.png is corrupt or unreadable \(UnidentifiedImageError"):
        resolve_protocol(crop, images)


# ---------------------------------------------------------------------------------------------------------------
# Rank blocks
# ---------------------------------------------------------------------------------------------------------------
def test_rank_blocks_cover_every_item_once():
    for count in (0, 1, 7, 8, 30):
        for world in (1, 2, 3, 8):
            items = [i for r in range(world) for i in range(count)[rank_block(count, r, world)]]
            assert items == list(range(count))
