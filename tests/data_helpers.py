"""Fixture clips for the data-layer tests, written in tmp_path: mp4 (H.264) and avi (MPEG-4) through PyAV,
png/jpg frame folders through PIL. Frame k of a fixture has the value 8 + 4k in its left half and 0 in its right
half, so a decoded clip tells which frames were sampled (and whether it was flipped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flexgen.data import media

H, W = 32, 40                   # fixture frame size (even, for yuv420p)
SYNSETS = ("n01440764", "n01443537", "n01484850")    # the ImageNet-layout fixture's classes (conftest.imagenet)


def coded_frames(n: int, h: int = H, w: int = W) -> np.ndarray:
    """uint8 (n, h, w, 3): frame k is 8 + 4k in its left half, 0 in its right half (k < 62)."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[:, :, : w // 2] = (8 + 4 * np.arange(n, dtype=np.uint8))[:, None, None, None]
    return frames


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264") -> Path:
    """A real video file: H.264 (lossless, crf 0) or MPEG-4 part 2 at a high bit rate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(path, frames, fps=25, codec=codec,
                   options={"crf": "0"} if codec == "libx264" else {"b": "2000000"})
    return path


def write_mp4(path: Path, n: int) -> Path:
    return write_video(path, coded_frames(n), "libx264")


def write_avi(path: Path, n: int) -> Path:
    return write_video(path, coded_frames(n), "mpeg4")


def write_folder(folder: Path, n: int, pattern: str = "img_{k}.png") -> Path:
    """A frame folder named e.g. img_0.png .. img_{n-1}.png (unpadded: lexicographic order would be wrong)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(coded_frames(n)):
        name = pattern.format(k=k)
        Image.fromarray(frame).save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    return folder


def write_garbage(path: Path, size: int = 4000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(size))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])
    return path


def decoded(video: torch.Tensor) -> tuple[list[int], list[bool]]:
    """Frame indices and per-frame flips read back from a (T, 3, S, S) clip of coded frames."""
    x = (video + 1) * 127.5
    half = x.shape[-1] // 2
    left = x[:, :, 4:-4, 2:half - 4].mean(dim=(1, 2, 3))
    right = x[:, :, 4:-4, half + 4:-2].mean(dim=(1, 2, 3))
    value = torch.maximum(left, right)
    return ((value - 8) / 4).round().long().tolist(), (right > left).tolist()


def noise_image(rng, width, height, mode="RGB"):
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)
