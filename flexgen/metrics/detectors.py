"""The detector contract shared by Inception, I3D and CLIP: uint8 batches in (values 0..255), float features out."""

from __future__ import annotations

import torch


def check_uint8_images(images: torch.Tensor, who: str) -> None:
    """uint8 images (N, 3, H, W) in 0..255, or a TypeError / ValueError naming `who` and what it got."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = getattr(images, "dtype", type(images))
        raise TypeError(f"{who} takes uint8 images (N, 3, H, W) in 0..255, got {got}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{who} takes images (N, 3, H, W), got shape {tuple(images.shape)}")
