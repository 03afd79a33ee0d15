"""What an evaluation reads: real and generated videos and images, and which of them a protocol selects.

- Video folders (fvd, kid) hold video files and frame folders (a folder that directly holds image files is one
  video), at any depth, sorted by relative path; hidden names are skipped (`flexgen.files.walk_visible`). The real
  clips (`select_real_clips`) are a random subset of the videos long enough for the protocol (when there are more
  than `num_real`), one clip per video from a random offset, all drawn from the protocol's seed; the generated clips
  (`select_fake_clips`) are the first frames of the first `num_fake` videos.
- Image folders (fid): every image file (png/jpg/..., any depth, sorted by relative path). The real images
  (`select_real_images`) are a seeded random subset when there are more than `num_real` (kept in sorted order),
  centre-cropped to the generated size for a `center_crop` protocol; the generated ones the first `num_fake`.
- Generated text-to-image folders (fid, clipscore): a folder written by `flexgen generate` holds FILE.json sample
  manifests (`flexgen.manifest.SampleManifest`: samples with file, prompt and seed, the grid); when it has such,
  the images they list (records in sorted path order, images in record order; grids left out) are the generated
  set, otherwise every image, and the prompts come from same-stem .txt files beside the images (`generated_images`).

Corrupt files. A real video file that no decoder opens (it fails when its frames are counted), a frame folder with
an unreadable frame among those of its chosen clip, and a real image that PIL cannot identify or verify (checked
for every real image at selection) are discarded and counted like a too-short video (`ClipSet.corrupt`,
`ImageSet.corrupt`, named in a logged warning); they count against the protocol's `num_real`, which
`flexgen.metrics.evaluate` then enforces. A corrupt or unreadable generated file (probed or verified at selection)
is refused, naming it: the fix is to delete it and re-run the sampling command, which draws the missing files.
A file that passes these checks but fails to decode when its frames are read (e.g. a truncated JPEG, which
`verify` does not decode) is refused by name then, real or generated.

`ClipSet` and `ImageSet` read lazily: iterating yields uint8 torch batches, (N, T, 3, H, W) clips or (N, 3, H, W)
images, and `shard` gives one rank its contiguous block. "select" here is the seeded choice of evaluation items,
not diffusion sampling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

# The only imports from the data readers in flexgen.metrics.
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
from flexgen.metrics.protocols import Protocol, get_protocol

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


def _checked(check: Callable[[T], R], items: Sequence[T]) -> list[R]:
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


def _warn_corrupt(root: str | Path, corrupt: list[tuple[str, str]], kind: str) -> None:
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


def listing(root: str | Path) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every visible video or image file under `root`, sorted: what identifies a
    real set in the reference-statistics cache key."""
    root = Path(root)
    wanted = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    entries = []
    for folder, _, files in walk_visible(root, followlinks=False):
        for f in files:
            if Path(f).suffix.lower() in wanted:
                path = folder / f
                entries.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return sorted(entries)


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
# Real clips: random subset of the long-enough videos, one clip per video at a random offset
# ---------------------------------------------------------------------------------------------------------------
def _frame_problem(clip: ClipRef) -> str | None:
    """None unless the clip comes from a frame folder and one of its frames is unreadable (`image_problem`)."""
    if not clip.source.is_frames:
        return None
    frames = list_frames(clip.source.path)
    for i in clip.indices:
        problem = image_problem(frames[i])
        if problem is not None:
            return f"frame {frames[i].name}: {problem}"
    return None


def select_real_clips(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipSet:
    """Deterministic given the protocol: same folder + same seed -> same videos and offsets.

    At most `num_real` clips: fewer when the folder has fewer usable videos (`flexgen.metrics.evaluate` decides
    whether that is allowed). Videos too short, and video files no decoder opens, are left out before the draw;
    a frame folder whose chosen clip has an unreadable frame is left out after it (its place is not redrawn)."""
    protocol = get_protocol(protocol)
    sources = list_sources(root)
    long_enough: list[tuple[Source, int]] = []
    too_short: list[tuple[str, int]] = []
    corrupt: list[tuple[str, str]] = []
    for source in sources:
        try:
            length = source.num_frames()
        except (VideoDecodeError, OSError) as error:        # no decoder opens it, or it cannot be read at all
            corrupt.append((source.rel, describe_error(error)))
            continue
        if length < protocol.min_real_frames:
            too_short.append((source.rel, length))
        else:
            long_enough.append((source, length))

    # One generator for the whole draw: first the subset (kept in sorted order), then one offset per chosen video.
    rng = np.random.default_rng(protocol.seed)
    chosen = range(len(long_enough))
    if len(long_enough) > protocol.num_real:
        chosen = sorted(rng.choice(len(long_enough), size=protocol.num_real, replace=False).tolist())
    drawn = []
    for i in chosen:
        source, length = long_enough[i]
        offset = int(rng.integers(0, length - protocol.real_span + 1))
        indices = tuple(range(offset, offset + protocol.real_span, protocol.real_stride))
        drawn.append(ClipRef(source, indices))
    clips = []
    for clip, problem in zip(drawn, _checked(_frame_problem, drawn), strict=True):
        if problem is None:
            clips.append(clip)
        else:
            corrupt.append((clip.source.rel, problem))

    if too_short:
        log.info("%s: %d videos shorter than %d frames discarded", root, len(too_short), protocol.min_real_frames)
    _warn_corrupt(root, corrupt, "video")
    selected = ClipSet(clips, too_short=too_short, corrupt=corrupt, num_found=len(sources),
                       num_candidates=len(long_enough), batch_size=batch_size)
    if not clips:
        raise ValueError(f"{root}: no usable video for protocol {protocol.name}, which needs videos of at least "
                         f"{protocol.min_real_frames} frames ({len(sources)} found: "
                         f"{describe_discards(selected.discard_summary(), protocol.min_real_frames)})")
    return selected


# ---------------------------------------------------------------------------------------------------------------
# Generated clips: the first frames of the first num_fake videos (sorted names)
# ---------------------------------------------------------------------------------------------------------------
def check_sample_manifest(root: str | Path) -> None:
    """A folder `flexgen sample` wrote (samples.json) is evaluated only when its run completed and the manifest lists
    exactly the sample files it holds: two runs in one folder, or files of a killed run, are refused by name."""
    from flexgen.manifest import SampleManifest

    root = Path(root)
    path = root / "samples.json"
    if not path.is_file():
        return
    try:
        manifest = SampleManifest.read(path)
    except ValueError:                      # another tool's samples.json: other JSON is ignored, as in listings
        return
    if not manifest.complete:
        raise ValueError(f"{path}: the sampling run that wrote this folder did not complete; re-run its command to "
                         "finish it, then evaluate")
    media = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    present = {(here / f).relative_to(root).as_posix() for here, _, files in walk_visible(root, followlinks=False)
               for f in files if Path(f).suffix.lower() in media}
    listed = set(manifest.files())
    extra = sorted(present - listed - ({manifest.grid} if manifest.grid else set()))
    missing = sorted(listed - present)
    if extra or missing:
        parts = [f"{len(extra)} not listed (e.g. {', '.join(extra[:3])})"] if extra else []
        parts += [f"{len(missing)} listed but missing (e.g. {', '.join(missing[:3])})"] if missing else []
        raise ValueError(f"{root}: its manifest samples.json does not list exactly the sample files it holds "
                         f"({'; '.join(parts)}); a folder must hold the samples of one complete run")


def select_fake_clips(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipSet:
    """Exactly `num_fake` clips; too few videos, a video shorter than a clip, or one no decoder opens is an error
    naming it (not a silent skip). A `flexgen sample` folder must hold exactly its manifest's files
    (`check_sample_manifest`)."""
    protocol = get_protocol(protocol)
    check_sample_manifest(root)
    sources = list_sources(root)
    if len(sources) < protocol.num_fake:
        raise ValueError(f"{root}: protocol {protocol.name} needs {protocol.num_fake} generated videos, found "
                         f"{len(sources)}; generate more, or pass a smaller --num-fake (renames the protocol)")
    indices = tuple(range(0, protocol.fake_span, protocol.fake_stride))
    clips = []
    bad: list[tuple[Path, str]] = []
    for source in sources[:protocol.num_fake]:
        try:
            length = source.num_frames()
        except (VideoDecodeError, OSError) as error:        # a corrupt generated video is refused, never skipped
            bad.append((source.path, describe_error(error)))
            continue
        if length < protocol.fake_span:
            raise ValueError(f"{source.path}: {length} frames, protocol {protocol.name} needs {protocol.fake_span}")
        clips.append(ClipRef(source, indices))
    if bad:
        raise generated_file_error(bad, "video")
    return ClipSet(clips, num_found=len(sources), num_candidates=len(sources), batch_size=batch_size,
                   role="generated")


# ---------------------------------------------------------------------------------------------------------------
# Images (fid protocols): image folders, ImageSet
# ---------------------------------------------------------------------------------------------------------------
def _walk_images(root: Path) -> list[Path]:
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
    images = _walk_images(root)
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


def check_generated_images(paths: Sequence[Path]) -> None:
    """Every generated image identified and verified by PIL (`image_problem`); the corrupt ones are refused by name."""
    bad = [(path, problem) for path, problem in zip(paths, _checked(image_problem, paths), strict=True) if problem]
    if bad:
        raise generated_file_error(bad, "image")


# ---------------------------------------------------------------------------------------------------------------
# Generated text-to-image folders: `flexgen generate` records (FILE.json) or same-stem .txt prompts
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class GeneratedImages:
    """The images of a generated folder in evaluation order, their prompts (None when the folder has no records
    and not every image has a .txt file) and where those came from."""

    paths: list[Path]
    prompts: list[str] | None
    source: str

    @property
    def prompts_sha256(self) -> str | None:
        """sha256 of the prompts as a JSON list in evaluation order (tells prompt sets apart in records)."""
        return None if self.prompts is None else prompts_sha256(self.prompts)


def prompts_sha256(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


def _read_generate_record(path: Path) -> tuple[list[dict[str, Any]], str | None] | None:
    """The entries (each with "file" and "prompt") and the grid file name of a text-to-image sample manifest
    (`flexgen.manifest.SampleManifest`, the FILE.json of `flexgen generate`); None for other JSON, or for a
    manifest without prompts."""
    from flexgen.manifest import SampleManifest

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); a generated folder's .json files are read as sample "
                         f"manifests of flexgen generate, move other files out") from error
    try:
        manifest = SampleManifest.from_dict(data, str(path))
    except (ValueError, TypeError):
        return None
    if not manifest.samples or any(entry.prompt is None for entry in manifest.samples):
        return None
    if not manifest.complete:
        raise ValueError(f"{path}: the flexgen generate run that wrote it did not complete; re-run its command to "
                         "finish it, then evaluate")
    return [{"file": e.file, "prompt": e.prompt} for e in manifest.samples], manifest.grid


def generated_images(root: str | Path, need_prompts: bool = False) -> GeneratedImages:
    """The generated images of `root`: those `flexgen generate` records list, else every image (sorted) with the
    prompts of same-stem .txt files when every image has one. `need_prompts` makes missing prompts an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no generated image folder at {root}")
    records = []
    for folder, _, files in walk_visible(root, followlinks=False):
        records += [folder / f for f in files if f.lower().endswith(".json")]
    records.sort(key=lambda p: p.relative_to(root).as_posix())
    paths: list[Path] = []
    prompts: list[str] = []
    used: list[Path] = []
    grids: set[Path] = set()
    for record in records:
        content = _read_generate_record(record)
        if content is None:
            continue
        entries, grid = content
        used.append(record)
        if grid is not None:
            grids.add((record.parent / grid).resolve())
        for entry in entries:
            image = record.parent / entry["file"]
            if not image.is_file():
                raise FileNotFoundError(f"{image} is listed in {record} but missing")
            paths.append(image)
            prompts.append(entry["prompt"])
    if used:
        duplicates = [p for p, n in Counter(p.resolve() for p in paths).items() if n > 1]
        if duplicates:
            raise ValueError(f"{root}: images listed twice by the flexgen generate records: "
                             f"{', '.join(map(str, duplicates[:5]))}")
        listed = {p.resolve() for p in paths} | grids
        unlisted = [p for p in _walk_images(root) if p.resolve() not in listed]
        if unlisted:
            log.warning("%s: %d images are not listed in its flexgen generate records and are not evaluated (e.g. "
                        "%s)", root, len(unlisted), unlisted[0])
        names = ", ".join(p.relative_to(root).as_posix() for p in used)
        return GeneratedImages(paths, prompts, f"flexgen generate records: {names}")

    images = list_images(root)
    captions = [image.with_suffix(".txt") for image in images]
    missing = [image for image, caption in zip(images, captions, strict=True) if not caption.is_file()]
    if missing and need_prompts:
        raise FileNotFoundError(
            f"{root}: {len(missing)} of {len(images)} images have no prompt, e.g. {missing[0]} (expected "
            f"{missing[0].with_suffix('.txt')}); give the folder the FILE.json that flexgen generate writes, or a "
            f"same-stem .txt file with the prompt beside every image")
    if missing:
        return GeneratedImages(images, None, "images only (no prompts)")
    prompts = [caption.read_text(encoding="utf-8").strip() for caption in captions]
    empty = [c for c, text in zip(captions, prompts, strict=True) if not text]
    if empty:
        raise ValueError(f"{root}: {len(empty)} prompt files are empty, e.g. {empty[0]}")
    return GeneratedImages(images, prompts, "same-stem .txt files")


# ---------------------------------------------------------------------------------------------------------------
# Selected images: a seeded subset of the real images, the first num_fake generated ones
# ---------------------------------------------------------------------------------------------------------------
def select_real_images(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ImageSet:
    """At most `num_real` images: all the usable ones, or a subset of them drawn from the protocol's seed (kept in
    sorted order); centre-cropped to `real_size` for a center_crop protocol. Every image is checked first
    (`image_problem`): the unreadable ones are left out and counted (`corrupt`), before the draw. Fewer than
    `num_real` is for `flexgen.metrics.evaluate` to allow or refuse."""
    protocol = get_protocol(protocol)
    if protocol.real_resize == "center_crop" and protocol.real_size is None:
        raise ValueError(f"protocol {protocol.name} crops real images to the generated images' size, which is not "
                         f"fixed yet: resolve it with resolve_protocol(protocol, fake_folder)")
    root = Path(root)
    images = list_images(root)
    usable: list[Path] = []
    corrupt: list[tuple[str, str]] = []
    for path, problem in zip(images, _checked(image_problem, images), strict=True):
        if problem is None:
            usable.append(path)
        else:
            corrupt.append((path.relative_to(root).as_posix(), problem))
    _warn_corrupt(root, corrupt, "image")
    if not usable:
        raise ValueError(f"{root}: no usable image for protocol {protocol.name} ({len(images)} found, all corrupt "
                         f"or unreadable, e.g. {corrupt[0][0]}: {corrupt[0][1]})")
    chosen = range(len(usable))
    if len(usable) > protocol.num_real:
        rng = np.random.default_rng(protocol.seed)
        chosen = sorted(rng.choice(len(usable), size=protocol.num_real, replace=False).tolist())
    return ImageSet([usable[i] for i in chosen], corrupt=corrupt, num_found=len(images), num_candidates=len(usable),
                    batch_size=batch_size, crop=protocol.real_size)


def _fake_image_paths(root: str | Path, protocol: Protocol) -> tuple[list[Path], int]:
    """The first `num_fake` generated images (fewer is an error), not yet checked, and how many the folder has."""
    check_sample_manifest(root)
    images = generated_images(root).paths
    if len(images) < protocol.num_fake:
        raise ValueError(f"{root}: protocol {protocol.name} needs {protocol.num_fake} generated images, found "
                         f"{len(images)}; generate more, or pass a smaller --num-fake (renames the protocol)")
    return images[:protocol.num_fake], len(images)


def select_fake_images(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ImageSet:
    """Exactly the first `num_fake` generated images (`generated_images` order); fewer is an error, and so is one
    that PIL cannot identify or verify (named). A `flexgen sample` folder must hold exactly its manifest's files
    (`check_sample_manifest`)."""
    protocol = get_protocol(protocol)
    paths, available = _fake_image_paths(root, protocol)
    check_generated_images(paths)
    return ImageSet(paths, num_found=available, num_candidates=available, batch_size=batch_size, role="generated")


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of a generated image file, from its header; a file PIL cannot identify is refused by name."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except READ_ERRORS as error:
        raise generated_file_error([(path, describe_error(error))], "image") from error


def resolve_protocol(protocol: str | Protocol, fake: str | Path) -> Protocol:
    """A center_crop protocol with its crop size read off the generated images (all must share one), renamed
    fid30k_coco -> fid30k_coco256 (fid30k_coco256x384 when not square); any other protocol unchanged."""
    protocol = get_protocol(protocol)
    if protocol.real_resize != "center_crop" or protocol.real_size is not None:
        return protocol
    sizes = Counter(image_size(path) for path in _fake_image_paths(fake, protocol)[0])
    if len(sizes) != 1:
        common = ", ".join(f"{h}x{w}: {n}" for (h, w), n in sizes.most_common(5))
        raise ValueError(f"{fake}: protocol {protocol.name} crops the real images to the generated images' size, but "
                         f"they have several sizes (H x W: count) {common}")
    (h, w), = sizes
    return dataclasses.replace(protocol, name=f"{protocol.name}{h if h == w else f'{h}x{w}'}", real_size=(h, w))


# ---------------------------------------------------------------------------------------------------------------
# Either kind, by the protocol's metric
# ---------------------------------------------------------------------------------------------------------------
def select_real(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipSet | ImageSet:
    """Real images for a fid protocol, real clips otherwise."""
    protocol = get_protocol(protocol)
    select = select_real_images if protocol.metric == "fid" else select_real_clips
    return select(root, protocol, batch_size=batch_size)


def select_fake(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipSet | ImageSet:
    """Generated images for a fid protocol, generated clips otherwise."""
    protocol = get_protocol(protocol)
    select = select_fake_images if protocol.metric == "fid" else select_fake_clips
    return select(root, protocol, batch_size=batch_size)
