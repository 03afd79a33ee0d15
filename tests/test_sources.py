"""Real and generated inputs of an evaluation: seeded real clip selection (strides, offsets, short videos), the
first frames of generated clips, rank blocks. Videos are index-encoded (tests/metrics_helpers.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from flexgen.data.media import write_video
from flexgen.metrics.sources import rank_block, select_fake_clips, select_real_clips
from tests.metrics_helpers import LEVEL, SIZE, TINY, all_clips, frame_indices, indexed_frames, write_frame_folder


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
    clips = select_real_clips(tmp_path / "videos", TINY)
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
# Rank blocks
# ---------------------------------------------------------------------------------------------------------------
def test_rank_blocks_cover_every_item_once():
    for count in (0, 1, 7, 8, 30):
        for world in (1, 2, 3, 8):
            items = [i for r in range(world) for i in range(count)[rank_block(count, r, world)]]
            assert items == list(range(count))
