"""What an evaluation reads: folders of videos and images, `ClipSet` / `ImageSet`, and the checks for corrupt files.

- Video folders (fvd, kid) hold video files and frame folders (a folder that directly holds image files is one
  video), at any depth, sorted by relative path; hidden names are skipped (`flexgen.files.walk_visible`).
- Image folders (fid): every image file (png/jpg/..., any depth, sorted by relative path).
- `ClipSet` and `ImageSet` read lazily: iterating yields uint8 torch batches, (N, T, 3, H, W) clips or (N, 3, H, W)
  images, and `shard` gives one rank its contiguous block.

Corrupt files. A real video file that no decoder opens (it fails when its frames are counted), a frame folder with
an unreadable frame among those of its chosen clip, and a real image that PIL cannot identify or verify (checked
for every real image at selection) are discarded and counted like a too-short video (`ClipSet.corrupt`,
`ImageSet.corrupt`, named in a logged warning); they count against the protocol's `num_real`, which
`flexgen.metrics.evaluate` then enforces. A corrupt or unreadable generated file (probed or verified at selection)
is refused, naming it: the fix is to delete it and re-run the sampling command, which draws the missing files.
A file that passes these checks but fails to decode when its frames are read (e.g. a truncated JPEG, which
`verify` does not decode) is refused by name then, real or generated.

Which items a protocol takes is `flexgen.metrics.selection`; generated folders (their sample manifests and
prompts) are `flexgen.metrics.generated`. This is the only metrics module that imports the media readers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

# The only imports of the data readers (flexgen.data.media, .base) in flexgen.metrics.
from flexgen.data.base import VideoDecodeError, describe_error
from flexgen.data.media import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    list_frames,
    probe_frames,
    read_frame_files,
    read_video,
)
from flexgen.files import walk_visible

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
EXAMPLES = 5            # discarded or refused files named in a message (all are counted)

# What reading a corrupt file raises: VideoDecodeError (a RuntimeError) from the video readers; OSError
# (UnidentifiedImageError, truncated data), SyntaxError or ValueError from PIL.
READ_ERRORS = (RuntimeError, OSError, SyntaxError, ValueError)

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------------------------------------------------------
# Corrupt files: checks, the record of what was discarded, and the refusal of a generated file
# ---------------------------------------------------------------------------------------------------------------
def image_problem(path: Path) -> str | None:
    """None when PIL identifies the image file and verifies it (a PNG's chunks and CRCs; a JPEG is only identified,
    so a truncated one fails later, when read), else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:                          # UnidentifiedImageError, OSError, SyntaxError, ...
        return describe_error(error)
    return None


def check_each(check: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`check` of every item, in order; threads for many (the checks mostly read files)."""
    if len(items) < 64:
        return [check(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(check, items, chunksize=16))


def generated_file_error(bad: Sequence[tuple[Path, str]], kind: str) -> ValueError:
    """The refusal of generated files that are corrupt or unreadable: (path, reason) of each, `kind` video or
    image."""
    (path, reason), rest = bad[0], bad[1:]
    more = ""
    if rest:
        names = ", ".join(str(p) for p, _ in rest[:EXAMPLES - 1]) + (", ..." if len(rest) > EXAMPLES - 1 else "")
        more = f" (and {len(rest)} more generated {kind}s: {names})"
    return ValueError(f"{path} is corrupt or unreadable ({reason}){more}; a generated {kind} must be complete: "
                      f"delete {'them' if rest else 'it'} and re-run the sampling command that wrote the folder "
                      f"(flexgen sample and flexgen generate draw only the missing files)")


def read_error(path: Path, role: str, kind: str, error: BaseException) -> ValueError:
    """The refusal of a file that passed the selection checks but fails when read; `role` real or generated."""
    if role == "generated":
        return generated_file_error([(path, describe_error(error))], kind)
    return ValueError(f"{path}: this real {kind} is corrupt or unreadable ({describe_error(error)}); it failed "
                      f"only when read, after passing the checks made when the real set was selected: delete or "
                      f"replace it and evaluate again (the real set is then selected anew)")


class Discards:
    """What a real selection left out, and why (mixed into `ClipSet` and `ImageSet`): `too_short` (relative path,
    frame count), `corrupt` (relative path, reason), of the `num_found` items the folder holds."""

    too_short: list[tuple[str, int]]
    corrupt: list[tuple[str, str]]
    num_found: int

    @property
    def num_discarded(self) -> int:
        return len(self.too_short) + len(self.corrupt)

    def discard_summary(self) -> dict[str, Any]:
        """The counts and the first few names, as JSON (kept with the reference statistics, reported by evaluate)."""
        return {"found": self.num_found, "too_short": len(self.too_short), "corrupt": len(self.corrupt),
                "too_short_files": [f"{rel} ({n} frames)" for rel, n in self.too_short[:EXAMPLES]],
                "corrupt_files": [rel for rel, _ in self.corrupt[:EXAMPLES]]}


def describe_discards(summary: dict[str, Any], min_frames: int | None = None) -> str:
    """'3 shorter than 48 frames (e.g. a.mp4 (20 frames), ...), 1 corrupt or unreadable (e.g. b.mp4)' from a
    `discard_summary`; 'none discarded' when nothing was."""
    parts = []
    for key, what, files in (("too_short", f"shorter than {min_frames} frames", "too_short_files"),
                             ("corrupt", "corrupt or unreadable", "corrupt_files")):
        count = int(summary.get(key, 0))
        if count:
            names = list(summary.get(files, []))
            shown = f" (e.g. {', '.join(names)}{', ...' if count > len(names) else ''})" if names else ""
            parts.append(f"{count} {what}{shown}")
    return ", ".join(parts) or "none discarded"


def warn_corrupt(root: str | Path, corrupt: list[tuple[str, str]], kind: str) -> None:
    if corrupt:
        log.warning("%s: %d corrupt or unreadable real %ss discarded: %s%s", root, len(corrupt), kind,
                    "; ".join(f"{rel} ({reason})" for rel, reason in corrupt[:EXAMPLES]),
                    "; ..." if len(corrupt) > EXAMPLES else "")


# ---------------------------------------------------------------------------------------------------------------
# Listing a folder of videos: video files and frame folders
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One video: a video file or a folder of frames, `rel` relative to the set's root (posix)."""

    root: Path
    rel: str
    is_frames: bool

    @property
    def path(self) -> Path:
        return self.root / self.rel

    def num_frames(self) -> int:
        return len(list_frames(self.path)) if self.is_frames else probe_frames(self.path)

    def probe(self) -> tuple[int, str | None]:
        """(frame count, None), or (0, the reason) when no decoder opens the video or it cannot be read at all."""
        try:
            return self.num_frames(), None
        except (VideoDecodeError, OSError) as error:
            return 0, describe_error(error)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 (len(indices), H, W, 3)."""
        if self.is_frames:
            frames = list_frames(self.path)
            if max(indices) >= len(frames):
                raise ValueError(f"{self.path}: frame {max(indices)} needed, the folder has {len(frames)} frames")
            return read_frame_files([frames[i] for i in indices])
        return read_video(self.path, list(indices))


def list_sources(root: str | Path) -> list[Source]:
    """Every video file (any depth) and every folder that directly holds image files, sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no video folder at {root}")
    sources = []
    for here, _, files in walk_visible(root, followlinks=False):
        rel_folder = here.relative_to(root).as_posix()
        if here != root and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            sources.append(Source(root, rel_folder, is_frames=True))
        for f in files:
            if Path(f).suffix.lower() in VIDEO_EXTENSIONS:
                sources.append(Source(root, (here / f).relative_to(root).as_posix(), is_frames=False))
    if not sources:
        raise ValueError(f"{root} holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) and no frame folders")
    return sorted(sources, key=lambda s: s.rel)


def media_files(root: str | Path) -> list[str]:
    """The relative (posix) path of every visible video or image file under `root`, sorted."""
    root = Path(root)
    wanted = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    files = [folder / f for folder, _, names in walk_visible(root, followlinks=False) for f in names
             if Path(f).suffix.lower() in wanted]
    return sorted(path.relative_to(root).as_posix() for path in files)


def listing(root: str | Path) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every visible video or image file under `root`, sorted: what identifies a
    real set in the reference-statistics cache key."""
    return [(rel, (Path(root) / rel).stat().st_size) for rel in media_files(root)]



# ---------------------------------------------------------------------------------------------------------------
# Batches: uint8 channel-last arrays stacked into channel-first tensors, one shape per batch
# ---------------------------------------------------------------------------------------------------------------
def labelled_batches(items: Iterable[tuple[np.ndarray, T]],
                     batch_size: int) -> Iterator[tuple[torch.Tensor, list[T]]]:
    """(uint8 channel-last array (..., H, W, 3), label) pairs -> (channel-first tensor (N, ..., 3, H, W), the N
    labels) of up to `batch_size`; an array of another shape starts a new batch."""
    pending: list[np.ndarray] = []
    labels: list[T] = []
    for array, label in items:
        if pending and (len(pending) == batch_size or array.shape != pending[0].shape):
            yield _to_batch(pending), labels
            pending, labels = [], []
        pending.append(array)
        labels.append(label)
    if pending:
        yield _to_batch(pending), labels


def _uniform_batches(arrays: Iterable[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """`labelled_batches` without labels: tensors (N, ..., 3, H, W) of up to `batch_size`."""
    return (batch for batch, _ in labelled_batches(((array, None) for array in arrays), batch_size))


def _to_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """(..., H, W, 3) uint8 arrays -> uint8 tensor (N, ..., 3, H, W): clips (N, T, 3, H, W), images (N, 3, H, W)."""
    return torch.from_numpy(np.stack(arrays)).movedim(-1, -3).contiguous()


def rank_block(count: int, rank: int, world_size: int) -> slice:
    """Items [count·r/W, count·(r+1)/W) of rank r: contiguous, sizes differ by at most one, all items covered."""
    return slice(count * rank // world_size, count * (rank + 1) // world_size)


# ---------------------------------------------------------------------------------------------------------------
# ClipSet: which frames of which videos, read lazily in uint8 batches
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipRef:
    source: Source
    indices: tuple[int, ...]     # frame indices into the source

    @property
    def offset(self) -> int:
        return self.indices[0]

    def frame_problem(self) -> str | None:
        """None unless the clip comes from a frame folder and one of its frames is unreadable (`image_problem`)."""
        if not self.source.is_frames:
            return None
        frames = list_frames(self.source.path)
        for i in self.indices:
            problem = image_problem(frames[i])
            if problem is not None:
                return f"frame {frames[i].name}: {problem}"
        return None


@dataclass
class ClipSet(Discards):
    """The clips a protocol selected; iterating yields uint8 torch batches (N, T, 3, H, W).

    `too_short` lists (relative path, frame count) of the real videos too short for the protocol, `corrupt`
    (relative path, reason) those no decoder could read, of the `num_found` videos of the folder; `num_candidates`
    counts the videos that were usable (the pool the clips were drawn from). `role` ("real" or "generated") says
    how a file that fails when read is reported (`read_error`)."""

    clips: list[ClipRef]
    too_short: list[tuple[str, int]] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    num_found: int = 0
    num_candidates: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    role: str = "real"

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.batch_size)

    def read(self, clip: ClipRef) -> np.ndarray:
        """One clip, uint8 (T, H, W, 3); a file that fails to decode is a ValueError naming it."""
        try:
            return clip.source.read(clip.indices)
        except READ_ERRORS as error:
            raise read_error(clip.source.path, self.role, "video", error) from error

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Batches of up to `batch_size` clips; a clip of another frame size starts a new batch."""
        return _uniform_batches((self.read(clip) for clip in self.clips), batch_size)

    def shard(self, rank: int, world_size: int) -> ClipSet:
        """Rank `rank`'s contiguous block of the clips (gathered in rank order, the blocks give back the order)."""
        return dataclasses.replace(self, clips=self.clips[rank_block(len(self.clips), rank, world_size)])



# ---------------------------------------------------------------------------------------------------------------
# Images (fid protocols): image folders, ImageSet
# ---------------------------------------------------------------------------------------------------------------
def find_images(root: Path) -> list[Path]:
    """Every visible image file under `root` (any depth), sorted by relative path; possibly none."""
    images = []
    for folder, _, files in walk_visible(root, followlinks=False):
        images += [folder / f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(images, key=lambda p: p.relative_to(root).as_posix())


def list_images(root: str | Path) -> list[Path]:
    """Every visible image file under `root` (any depth), sorted by relative path; none is an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    images = find_images(root)
    if not images:
        raise ValueError(f"{root} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def center_crop_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (h, w, 3): resized with PIL bicubic (antialiased) so that it covers (h, w), then the
    centre (h, w) crop (offsets rounded down). Unchanged when already (h, w)."""
    from PIL import Image

    height, width = image.shape[:2]
    h, w = size
    if (height, width) == (h, w):
        return image
    scale = max(h / height, w / width)
    new_w, new_h = max(w, round(width * scale)), max(h, round(height * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return np.asarray(resized.crop((left, top, left + w, top + h)))


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 RGB (H, W, 3)."""
    return read_frame_files([path])[0]


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of a generated image file, from its header; a file PIL cannot identify is refused by name."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except READ_ERRORS as error:
        raise generated_file_error([(path, describe_error(error))], "image") from error


@dataclass
class ImageSet(Discards):
    """The images a protocol selected; iterating yields uint8 torch batches (N, 3, H, W) (an image of another size
    starts a new batch). `crop` (H, W) centre-crops every image to that size first (`center_crop_resize`).
    `corrupt` lists (relative path, reason) of the real images PIL could not identify or verify, of the `num_found`
    images of the folder; `too_short` is always empty (it mirrors `ClipSet`); `role` as in `ClipSet`."""

    paths: list[Path]
    too_short: list[tuple[str, int]] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    num_found: int = 0
    num_candidates: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    crop: tuple[int, int] | None = None
    role: str = "real"

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.batch_size)

    def shard(self, rank: int, world_size: int) -> ImageSet:
        """Rank `rank`'s contiguous block of the images."""
        return dataclasses.replace(self, paths=self.paths[rank_block(len(self.paths), rank, world_size)])

    def read(self, path: Path) -> np.ndarray:
        """One image as uint8 RGB (H, W, 3), cropped when the set has a crop; a file that fails to decode is a
        ValueError naming it."""
        try:
            image = read_image(path)
        except READ_ERRORS as error:
            raise read_error(path, self.role, "image", error) from error
        return image if self.crop is None else center_crop_resize(image, self.crop)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return _uniform_batches((self.read(path) for path in self.paths), batch_size)


def prompted_batches(images: Sequence[Path], prompts: Sequence[str],
                     batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(uint8 images (N, 3, H, W), their prompts) of up to `batch_size`; an image of another size starts a batch.
    The images are generated ones: one that fails to decode is a ValueError naming it."""
    reader = ImageSet([], role="generated")
    return labelled_batches(((reader.read(path), prompt) for path, prompt in zip(images, prompts, strict=True)),
                            batch_size)
