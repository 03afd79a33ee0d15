"""The detector contract: what each kind of detector takes and returns, and the input checks they share.

Three kinds, one per family of metrics; each is a structural typing Protocol (nothing inherits from them):

- `VideoDetector` (FVD, KID; `flexgen.metrics.i3d.I3DDetector`): uint8 frame-first videos (N, T, 3, H, W) in
  0..255 -> float features (N, D).
- `ImageDetector` (FID; `flexgen.metrics.inception.InceptionDetector`): uint8 images (N, 3, H, W) in 0..255 ->
  float features (N, D).
- `ImageTextDetector` (CLIP score; `flexgen.metrics.clip.CLIPDetector`): `image_features` of uint8 images
  (N, 3, H, W) and `text_features` of N prompts, both float embeddings (N, D), and the CLIP architecture `variant`.

Every detector has `sha256`, the sha256 of its weights file, or None when it was not loaded from a verified file:
such a detector's numbers never take the plain metric name and its reference statistics are not cached
(`flexgen.metrics.evaluate`). A `name` attribute, where a detector has one (I3DDetector has none), names it in the
metric name of a non-standard detector ("fvd[random-i3d]"). Video and image detectors have the same signature:
`isinstance` against these runtime-checkable Protocols checks the attributes only, never the shapes; the shapes
are checked by `check_uint8_videos` / `check_uint8_images` when a detector is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------------------------
# The three kinds of detector
# ---------------------------------------------------------------------------------------------------------------
@runtime_checkable
class VideoDetector(Protocol):
    """uint8 frame-first videos (N, T, 3, H, W) in 0..255 -> float features (N, D), a tensor or an array
    (I3DDetector: float64 (N, 400) on the CPU). `sha256` identifies the weights file (None: not a verified file)."""

    sha256: str | None

    def __call__(self, videos: torch.Tensor) -> torch.Tensor | np.ndarray: ...


@runtime_checkable
class ImageDetector(Protocol):
    """uint8 images (N, 3, H, W) in 0..255, any H, W -> float features (N, D), a tensor or an array
    (InceptionDetector: float64 (N, 2048) on the CPU). `name` names it; `sha256` identifies the weights file."""

    name: str
    sha256: str | None

    def __call__(self, images: torch.Tensor) -> torch.Tensor | np.ndarray: ...


@runtime_checkable
class ImageTextDetector(Protocol):
    """CLIP-like: image and text embeddings of one shared space (CLIPDetector: float32 (N, D) on the CPU, unit L2
    norm). `variant` is the architecture ("ViT-L/14"; None when not a known one), which a clipscore protocol must
    match; `name` names it; `sha256` identifies the weights file."""

    name: str
    sha256: str | None
    variant: str | None

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, H, W) in 0..255 -> float embeddings (N, D)."""
        ...

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """N prompts -> float embeddings (N, D)."""
        ...


# ---------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------
def check_uint8_images(images: torch.Tensor, who: str) -> None:
    """uint8 images (N, 3, H, W) in 0..255, or a TypeError / ValueError naming `who` and what it got."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = getattr(images, "dtype", type(images))
        raise TypeError(f"{who} takes uint8 images (N, 3, H, W) in 0..255, got {got}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{who} takes images (N, 3, H, W), got shape {tuple(images.shape)}")


def check_uint8_videos(videos: torch.Tensor, who: str) -> None:
    """uint8 frame-first videos (N, T, 3, H, W) in 0..255, or a TypeError / ValueError naming `who` and what it
    got."""
    if not isinstance(videos, torch.Tensor) or videos.dtype != torch.uint8:
        got = f"dtype {videos.dtype}" if hasattr(videos, "dtype") else type(videos)
        raise TypeError(f"{who} takes uint8 videos (N, T, 3, H, W) in 0..255, got {got}")
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"{who} takes frame-first videos (N, T, 3, H, W), got shape {tuple(videos.shape)}")
