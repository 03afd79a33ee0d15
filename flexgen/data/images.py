"""Class-conditional image folders: ImageNet-1K in its usual layout, for DiT, FlexDiT and DyDiT on the papers' own
protocol.

    <root>/n01440764/*.JPEG, <root>/n01443537/*.JPEG, ...        (root = ImageNet's train/ folder)

Labels are indices into the sorted class folders (DiT's `ImageFolder`). `class_list` (a text file, one folder name
per line) restricts the images to those classes while keeping every label as it is in the full sorted list, so a
1000-class model fine-tunes on a subset without relabelling. The crop is ADM's / DiT's `center_crop_arr`: halve with
a box filter while the short side is at least twice the target, resize bicubically so the short side is the
target, take the centre square; then a random horizontal flip. Greyscale, palette and CMYK files are converted to
RGB; a file PIL cannot read (truncated, not an image) is skipped, counted and replaced by the next one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flexgen.data.base import DatasetLayoutError, SkipAndReplaceDataset, Skipped, item_rng

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def center_crop_arr(image, image_size: int) -> np.ndarray:
    """ADM / DiT's centre crop of a PIL image to uint8 (image_size, image_size, 3) (guided-diffusion
    `image_datasets.center_crop_arr`, used by DiT's train.py)."""
    from PIL import Image

    while min(image.size) >= 2 * image_size:                                 # box-downsample by 2 while it can
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def read_rgb(path: str | Path):
    """A PIL image in RGB (greyscale, palette, CMYK and alpha converted), fully decoded (a truncated file fails
    here, not later)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1   # (a copy: PIL arrays are read-only)


def flip_of(seed: int, epoch: int, index: int) -> bool:
    """Whether image `index` is mirrored in `epoch` (a latent store makes the same draw for the same image)."""
    return bool(item_rng(seed, epoch, index).random() < 0.5)


def read_class_list(path: str | Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


class ImageFolderDataset(SkipAndReplaceDataset):
    """Labelled images of class folders: items {"video": (3, S, S) in [-1, 1], "label": int, "path": str}."""

    item_name = "image"

    def __init__(self, root: str | Path, *, image_size: int = 256, hflip: bool = True,
                 class_list: str | Path | None = None, seed: int = 0):
        super().__init__(root, seed)
        if not self.root.is_dir():
            raise DatasetLayoutError(f"image folder {self.root} does not exist (expected ImageNet's train/ folder: "
                                     "one folder per class, e.g. n01440764/*.JPEG)")
        self.image_size, self.hflip = image_size, hflip
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise DatasetLayoutError(f"{self.root} holds no class folders (expected e.g. n01440764/*.JPEG)")
        chosen = self.classes
        if class_list:
            chosen = read_class_list(class_list)
            unknown = sorted(set(chosen) - set(self.classes))
            if unknown:
                raise DatasetLayoutError(f"{class_list}: {len(unknown)} class(es) not under {self.root}: "
                                         f"{', '.join(unknown[:5])}")
        label = {name: i for i, name in enumerate(self.classes)}
        self.items: list[tuple[str, int]] = []
        for name in sorted(chosen):
            for path in sorted((self.root / name).iterdir()):
                if path.name.startswith("."):
                    continue
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    self.items.append((str(path), label[name]))
                elif path.is_file():
                    self.skipped.append(Skipped(str(path), "not an image file (extension)"))
        if not self.items:
            raise DatasetLayoutError(f"no images under {self.root} ({', '.join(IMAGE_EXTENSIONS)})")
        self.warn_skipped(f"{len(self.items)} images", prefix="imagenet ", limit=10)

    def __len__(self) -> int:
        return len(self.items)

    def item_path(self, j: int) -> str:
        return self.items[j][0]

    def crop(self, j: int) -> np.ndarray:
        """Image j as ADM's centre crop, uint8 (S, S, 3), unflipped."""
        return center_crop_arr(read_rgb(self.items[j][0]), self.image_size)

    def __getitem__(self, index: int) -> dict:
        arr, j = self.first_readable(index, lambda j, _: self.crop(j))
        if self.hflip and flip_of(self.seed, self.epoch, j):
            arr = arr[:, ::-1]
        return {"video": to_tensor(arr), "label": self.items[j][1], "path": self.items[j][0]}
