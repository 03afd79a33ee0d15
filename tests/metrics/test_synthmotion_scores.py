"""The two pixel grades of a SynthMotion clip (`flexgen.metrics.synthmotion_scores`): a rendered clip is near
perfect; noise and blur raise `tone` whatever the contrast; a shape off its straight path raises `track`."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from flexgen.metrics.synthmotion_scores import clip_scores
from flexgen.synthetic import SHAPE_MOTIONS, render_clip


def _clips(count: int = 16, size: int = 16) -> torch.Tensor:
    """Rendered shape-motion clips at 32 px, area-resized to `size` as the detector sees them: (N, 3, 8, s, s)."""
    classes = list(SHAPE_MOTIONS)
    frames = [render_clip(classes[i % len(classes)], 8, 32, np.random.default_rng(i)) for i in range(count)]
    x = torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).double()         # (N, 8, 3, 32, 32)
    x = F.interpolate(x.flatten(0, 1), size=(size, size), mode="area").unflatten(0, (count, 8))
    return x.transpose(1, 2)                                                         # (N, 3, 8, s, s)


def test_a_rendered_clip_is_nearly_perfect_and_damage_shows():
    clean = _clips()
    scores = clip_scores(clean)
    assert scores["tone"].shape == scores["track"].shape == (16,)
    assert scores["tone"].max() < 20 and scores["track"].max() < 0.2                # only the resized edges
    noisy = (clean + 25 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 255)
    blurred = F.avg_pool3d(clean, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    assert (clip_scores(noisy)["tone"] > scores["tone"] + 5).all()
    assert (clip_scores(blurred)["tone"] > scores["tone"]).all()


def test_tone_is_relative_to_the_contrast():
    # A washed-out clip (its colours pulled halfway to grey) is as clean as the original, and a washed-out
    # blurred clip as bad as the blurred one: the residual is measured against the distance of the two colours.
    clean = _clips(4)
    blurred = F.avg_pool3d(clean, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    for x in (clean, blurred):
        faded = 128 + 0.5 * (x - 128)
        assert clip_scores(faded)["tone"] == pytest.approx(clip_scores(x)["tone"], rel=1e-6)


def test_track_is_the_distance_from_a_straight_constant_speed_path():
    clean = _clips(8)
    base = clip_scores(clean)["track"]
    # Every other frame shifted by 2 px sideways: the centres zig-zag ±1 px around the best line.
    jittered = clean.clone()
    jittered[:, :, 1::2] = torch.roll(clean[:, :, 1::2], shifts=2, dims=-1)
    moved = clip_scores(jittered)["track"]
    assert (moved > base + 0.5).all() and (moved < 2).all()          # wrapped edges add a little
    # Frames with no shape: a flat clip scores the frame side.
    flat = torch.full_like(clean[:2], 60.0)
    assert clip_scores(flat)["track"].tolist() == [16.0, 16.0]
