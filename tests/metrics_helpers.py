"""Shared by the metrics tests: index-encoded videos, image folders and tiny random detectors (test_sources,
test_evaluate), a tiny TorchScript Inception (test_adm, test_imagenet_track); a measured record and the anchors
file (test_records, test_leaderboard).

Data are made here: short mp4s (flexgen.data.media.write_video) and PNG frame folders in which every pixel of frame
i holds a value derived from i, so the frame indices of a selected clip can be read back from its pixels; folders
of random PNG images. The detectors are fixed random projections of mean-pooled pixels with non-standard sha256s.
Corrupt files are made with tests/data_helpers.py (`write_garbage`, `truncate`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flexgen.data.media import write_video
from flexgen.metrics.protocols import Protocol
from flexgen.metrics.records import Record

SIZE = 16           # frame height and width
LEVEL = 4           # frame i of an index-encoded video has pixel value LEVEL * i

# Small version of fvd2048_16f: 4-frame clips, real stride 3, real videos need >= 12 frames.
TINY = Protocol("fvd6_4f", "fvd", num_real=6, num_fake=6, num_frames=4, real_stride=3, fake_stride=1,
                min_real_frames=12, seed=0)
# Real clips are the whole 4-frame videos, like generated ones (test_evaluate's video_sets).
SAME = Protocol("fvd8_4f", "fvd", num_real=8, num_fake=8, num_frames=4, real_stride=1, fake_stride=1,
                min_real_frames=4)
# Image FID on 8 real and 8 generated images.
FID8 = Protocol("fid8", "fid", num_real=8, num_fake=8, num_frames=1, real_stride=1, fake_stride=1, min_real_frames=1)


# ---------------------------------------------------------------------------------------------------------------
# A tiny random detector and index-encoded videos
# ---------------------------------------------------------------------------------------------------------------
class RandomDetector:
    """A fixed random projection of mean-pooled pixels: (N, T, 3, H, W) uint8 -> (N, 8) float64."""

    name = "random-i3d"

    def __init__(self, seed: int = 0, dim: int = 8):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(3 * 2 * 2, dim, generator=generator, dtype=torch.float64)
        self.sha256 = hashlib.sha256(f"{self.name} seed={seed} dim={dim}".encode()).hexdigest()
        self.calls = 0

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        assert videos.dtype == torch.uint8 and videos.ndim == 5 and videos.shape[2] == 3
        self.calls += 1
        x = videos.double().mean(dim=1) / 255.0                                     # (N, 3, H, W)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)          # (N, 12)
        return pooled @ self.weight


class RandomImageDetector(RandomDetector):
    """`RandomDetector` for images: (N, 3, H, W) uint8 -> (N, 8) float64."""

    name = "random-inception"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3
        self.calls += 1
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.double() / 255.0, 2).flatten(1)     # (N, 12)
        return pooled @ self.weight


class TinyInceptionScript(torch.nn.Module):
    """The interface of inception-2015-12-05.pt: uint8 images of any size, resized inside; pool features or
    class probabilities (with or without the head's bias)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, 16)
        self.head = torch.nn.Linear(16, 6)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        x = torch.nn.functional.interpolate(img.float(), size=(8, 8), mode="bilinear", align_corners=False)
        features = self.proj(x.flatten(1) / 255.0)
        if return_features:
            return features
        logits = features @ self.head.weight.t()
        if not no_output_bias:
            logits = logits + self.head.bias
        return torch.softmax(logits, dim=1)


def random_images(folder: Path, count: int, seed: int, size: int = SIZE, suffix: str = ".png") -> Path:
    """`count` images img_000.png, ... of random 2 x 2 colour blocks, `size` pixels square."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.integers(0, 256, size=(2, 2, 3)).astype(np.uint8)
        image = coarse.repeat(size // 2, axis=0).repeat(size // 2, axis=1)
        Image.fromarray(image).save(folder / f"img_{i:03d}{suffix}", **({"quality": 95} if suffix == ".jpg" else {}))
    return folder


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
# Records
# ---------------------------------------------------------------------------------------------------------------
ANCHORS = Path(__file__).resolve().parents[1] / "eval" / "anchors.json"
DETECTOR = "bec6519f" + "0" * 56
REFERENCE = "ab" * 32


def measured(**overrides) -> Record:
    """A measured FVD record on FaceForensics; override any field."""
    fields = dict(metric="fvd", protocol="styleganv_fvd2048_16f", value=40.0, dataset="ffs",
                  detector_file="i3d_torchscript.pt", detector_sha256=DETECTOR, reference_sha256=REFERENCE,
                  num_samples=2048, storage="png", model_family="latte", model_variant="Latte-XL/2",
                  method="baseline", ckpt_sha256="cd" * 32, sampler="ddpm", steps=250, cfg_scale=1.0, seeds=[0],
                  gflops_per_forward=1893.0, latency_s=12.5)
    return Record(**{**fields, **overrides})
