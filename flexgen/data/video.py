"""Video clip datasets: the four Latte benchmarks and a synthetic UCF-style set, read from their real layouts.

    dataset = build_dataset(cfg.data, split="train", seed=0)
    item = dataset[0]   # {"video": (F, 3, S, S) float32 in [-1, 1], "label": int, "path": str}

The presets, the index and the splits are `flexgen.data.video_index`; decoding and frame folders
`flexgen.data.media`; seeded items and skip-and-replace `flexgen.data.base`.

Clip sampling (Latte's `TemporalRandomCrop`, made exact):
- A clip of F frames at stride s needs (F-1)·s+1 frames (`clip_span`). The start is drawn uniformly among every
  start at which the clip fits, and the frames are start + k·s (Latte's video-file loaders spread F indices with
  np.linspace over an F·s window; we use the exact stride for every layout, as its frame-folder loaders do).
- Shorter clips are dropped when the dataset is built (`too_short`; Latte drops Sky clips of ≤ F·s frames and
  asserts ≥ F frames for videos), named in a warning and listed in `dataset.skipped`.
- Randomness of item i in epoch e comes from a numpy Generator seeded with (seed, e, i, ...): results do not
  depend on the worker or the order of access. Call `set_epoch(e)` to get new clips.
- Random horizontal flip of the whole clip where the preset flips and `hflip` is on; values (x / 127.5 - 1).
- Joint image-video training (`num_images` > 0): still frames of other clips (random clip, random frame, same
  transform, own flip) are appended after the video frames, with their labels in "image_labels". Unlike Latte's
  `*_img` sets, an epoch is still one pass over the clips, not over all frames.

Bad input never ends an epoch. Unreadable, empty or too short clips are found while indexing and skipped; a clip
that fails later, while decoding, is replaced by the next clip of the index and recorded. Every skipped item is
named in a `DataWarning` and listed, with its reason, in `dataset.skipped`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flexgen.config import DataConfig
from flexgen.data.base import SkipAndReplaceDataset, Skipped, VideoDecodeError
from flexgen.data.media import list_frames, read_frame_files, read_video
from flexgen.data.video_index import (
    DATASETS,
    SPLIT_FOLDERS,
    Clip,
    ClipIndex,
    clip_span,
    find_split_list,
    index_clips,
    read_split_list,
    too_short,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Spatial transform: uint8 frames -> float32 in [-1, 1], resized and centre-cropped to S × S.


def _centre_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top = int(round((x.shape[-2] - height) / 2.0))
    left = int(round((x.shape[-1] - width) / 2.0))
    return x[..., top:top + height, left:left + width]


def transform_frames(frames: np.ndarray, size: int, crop: str = "resize_crop", flip: bool = False) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, size, size) in [-1, 1]. "resize_crop": bilinear antialiased resize of
    the short side to `size`, then a centre crop (Latte's UCFCenterCropVideo); "crop_resize": centre square crop
    of the short side, then resize (CenterCropResizeVideo, Sky). `flip` mirrors every frame left-right."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()     # (T, 3, H, W), 0..255
    height, width = x.shape[-2:]
    if crop == "crop_resize":
        side = min(height, width)
        x = _centre_crop(x, side, side)
        target = (size, size)
    else:
        scale = size / min(height, width)
        target = (max(size, round(height * scale)), max(size, round(width * scale)))
    if tuple(x.shape[-2:]) != target:
        x = F.interpolate(x, size=target, mode="bilinear", antialias=True, align_corners=False)
    x = _centre_crop(x, size, size)                                                    # (T, 3, size, size)
    if flip:
        x = x.flip(-1)
    return (x / 127.5 - 1.0).clamp_(-1.0, 1.0).contiguous()


# ----------------------------------------------------------------------------------------------------------
# The dataset.


class VideoClipDataset(SkipAndReplaceDataset):
    """Clips of one preset's layout under `root`; see the module docstring for sampling and bad-input rules.

    Attributes: `clips` (usable clips), `classes` (sorted class folders; empty when unlabelled), `skipped`
    (every item left out, with its reason), `index_path` / `index_reused` (the index cache)."""

    item_name = "clip"
    exhausted_error = VideoDecodeError

    def __init__(self, root: str | Path, dataset: str, *, num_frames: int = 16, frame_interval: int = 3,
                 image_size: int = 256, hflip: bool = True, num_images: int = 0, split: str = "train",
                 seed: int = 0, cache_dir: str | Path | None = None, split_dir: str | Path | None = None,
                 cache_videos: bool = False):
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        for name, value, least in (("num_frames", num_frames, 1), ("frame_interval", frame_interval, 1),
                                   ("image_size", image_size, 1), ("num_images", num_images, 0), ("seed", seed, 0)):
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        index = index_clips(root, dataset, cache_dir)
        super().__init__(index.root, seed)
        self.preset = DATASETS[dataset]
        self.num_frames, self.frame_interval = num_frames, frame_interval
        self.span = clip_span(num_frames, frame_interval)      # frames a clip must have
        self.image_size, self.num_images, self.split = image_size, num_images, split
        self.flip = hflip and self.preset.hflip
        self.cache_videos, self._videos = cache_videos, {}      # path -> uint8 (frames, H, W, 3), every frame
        self.classes = index.classes
        self.index_path, self.index_reused = index.path, index.reused
        self.skipped.extend(index.skipped)
        self.clips, short = too_short(self._select_split(index, split, split_dir), num_frames, frame_interval)
        self.skipped.extend(short)
        self.warn_skipped(f"{len(self.clips)} clips", prefix=f"{dataset} ", limit=10)
        if not self.clips:
            raise ValueError(f"{dataset} {self.root} (split {split!r}) has no usable clip of at least {self.span} "
                             f"frames; {len(self.skipped)} item(s) skipped, see the warning above")

    def _select_split(self, index: ClipIndex, split: str, split_dir: str | Path | None) -> list[Clip]:
        """The clips named by the split list, in index order; "all" (or "train" without a list) keeps all."""
        list_file = find_split_list(index.root, split, split_dir)
        if list_file is None:
            if split not in ("all", "train"):
                where = split_dir if split_dir is not None else f"{index.root} or {index.root / SPLIT_FOLDERS[0]}"
                raise ValueError(f"split {split!r}: no list file {split}list01.txt / {split}.txt in {where}; pass "
                                 "split_dir (e.g. the ucfTrainTestlist folder) or the path of the .txt file")
            if split == "train":
                log.info("%s: no split list, using all %d clips (Latte's protocol)", index.root, len(index.clips))
            return index.clips
        by_rel = {Path(c.path).relative_to(index.root).as_posix(): c for c in index.clips}
        by_lower = {rel.lower(): c for rel, c in by_rel.items()}
        known = {Path(s.path).relative_to(index.root).as_posix().lower() for s in index.skipped}
        chosen: dict[str, Clip] = {}
        for rel in read_split_list(list_file):
            clip = by_rel.get(rel) or by_lower.get(rel.lower())
            if clip is not None:
                chosen[clip.path] = clip
            elif rel.lower() not in known:                      # a bad file listed here is already counted
                self.skipped.append(Skipped(str(index.root / rel), f"listed in {list_file} but not found"))
        log.info("split %r: %d clips listed in %s", split, len(chosen), list_file)
        return [c for c in index.clips if c.path in chosen]

    # --- items -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.clips)

    def item_path(self, j: int) -> str:
        return self.clips[j].path

    def _decode(self, clip: Clip, indices: Sequence[int]) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) of a clip; raises on any failure."""
        if self.cache_videos and self.preset.layout != "frames":   # the same reader, all frames, decoded once
            if clip.path not in self._videos:
                self._videos[clip.path] = read_video(clip.path, list(range(clip.frames)))
            return self._videos[clip.path][list(indices)]
        if self.preset.layout != "frames":
            return read_video(clip.path, indices)
        paths = list_frames(clip.path)
        if max(indices) >= len(paths):
            raise VideoDecodeError(f"frame {max(indices)} was needed, the folder has {len(paths)} frames")
        return read_frame_files([paths[i] for i in indices])

    def _read_clip(self, index: int) -> tuple[torch.Tensor, int]:
        """(F, 3, S, S) of item `index` and the index of the clip it came from (the next readable clip when
        `index` fails; the draws depend only on (seed, epoch, index, attempt), not on earlier failures)."""

        def read(j: int, attempt: int) -> tuple[np.ndarray, bool]:
            rng = self.rng(index, 0, attempt)
            clip = self.clips[j]
            start = int(rng.integers(0, clip.frames - self.span + 1))
            flip = bool(rng.random() < 0.5) and self.flip
            indices = list(range(start, start + self.span, self.frame_interval))        # F indices
            return self._decode(clip, indices), flip

        (frames, flip), j = self.first_readable(index, read, stacklevel=4)
        return transform_frames(frames, self.image_size, self.preset.crop, flip), j

    def _read_images(self, index: int, exclude: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_images` still frames of random other clips: (I, 3, S, S) and their labels (I,)."""
        rng = self.rng(index, 1, 0)
        n, images, labels = len(self.clips), [], []
        for _ in range(20 * self.num_images + n):
            if len(images) == self.num_images:
                break
            j = int(rng.integers(n - 1)) if n > 1 else 0
            j += int(n > 1 and j >= exclude)                    # any clip but the video's
            frame = int(rng.integers(self.clips[j].frames))
            flip = bool(rng.random() < 0.5) and self.flip
            if j in self._failed:
                continue
            try:
                still = self._decode(self.clips[j], [frame])
            except Exception as e:                              # counted, warned, another draw
                self.fail(j, e)
                continue
            images.append(transform_frames(still, self.image_size, self.preset.crop, flip))
            labels.append(self.clips[j].label)
        if len(images) < self.num_images:
            raise VideoDecodeError(f"could not decode {self.num_images} still images from {self.root}")
        return torch.cat(images), torch.tensor(labels, dtype=torch.long)

    def __getitem__(self, index: int) -> dict:
        video, j = self._read_clip(index)                                             # (F, 3, S, S)
        clip = self.clips[j]
        item = {"video": video, "label": clip.label, "path": clip.path}
        if self.num_images:
            images, image_labels = self._read_images(index, exclude=j)                # (I, 3, S, S), (I,)
            item["video"] = torch.cat([video, images])                               # (F + I, 3, S, S)
            item["image_labels"] = image_labels
        return item

    def __repr__(self) -> str:
        return (f"VideoClipDataset({self.preset.name}, {self.root}, split={self.split!r}, {len(self.clips)} clips, "
                f"{len(self.classes)} classes, {len(self.skipped)} skipped, F={self.num_frames} "
                f"s={self.frame_interval} S={self.image_size}, flip={self.flip}, images={self.num_images})")


# ----------------------------------------------------------------------------------------------------------
# Factory.


def build_dataset(cfg: DataConfig, split: str = "train", seed: int = 0, *, cache_dir: str | Path | None = None,
                  split_dir: str | Path | None = None) -> VideoClipDataset:
    """The dataset of a run's `data` section. `split`: "train" (trainlist01.txt if the root or `split_dir` holds
    one, else every clip, as Latte), "test", "all", a list name such as "trainlist02", or a list file's path."""
    if not cfg.root:
        raise ValueError(f"data.root is empty: set it to the {cfg.dataset} folder ({DATASETS[cfg.dataset].expected};"
                         " see datasets/README.md)")
    return VideoClipDataset(cfg.root, cfg.dataset, num_frames=cfg.num_frames, frame_interval=cfg.frame_interval,
                            image_size=cfg.image_size, hflip=cfg.hflip, num_images=cfg.num_images, split=split,
                            seed=seed, cache_dir=cache_dir, split_dir=split_dir, cache_videos=cfg.cache_videos)
