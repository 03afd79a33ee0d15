"""Named evaluation protocols (FVD / KID on videos, FID and CLIP score on images), real and generated sampling, cached
reference statistics.

A number such as "FVD 2048/16f" is only comparable when everything behind it is fixed: which real clips (split,
count, which videos, which offset, frame stride), which generated clips, and which detector weights. A `Protocol`
names all of that; `evaluate` records it next to the value, and the metric name says which detector was used:

- `fvd2048_16f` follows StyleGAN-V / Latte (`tools/metrics/frechet_video_distance.py`): 2048 real clips of 16
  frames taken every 3rd frame, one per video, from a random offset; videos shorter than 16 x 3 = 48 frames are
  discarded; 2048 generated clips made of their first 16 consecutive frames; no horizontal flips; the I3D detector
  called with rescale/resize (`I3DDetector`). Unlike Latte (first N videos in sorted order, unseeded offsets), the
  videos (a random subset when there are more than N) and the offsets are drawn from the protocol's seed, so the
  reference statistics are reproducible.
- A detector is any callable from uint8 frame-first videos (N, T, 3, H, W) to float features (N, D) with the
  attributes `name` and `sha256`. Only the standard detector file (I3D `bec6519f…`) earns the plain metric name
  ("fvd"); any other detector is named in it ("fvd[random-i3d]") so such numbers can never pass for FVD.
- Reference statistics are cached as `<cache_dir>/<protocol>-<key[:16]>.npz`, the key being the sha256 of the real
  set's listing (relative paths and sizes), the detector sha256 and the protocol fields; written atomically.

Image FID (`fid50k`) runs on folders of images (png/jpg/..., any depth, sorted by relative path): the real images are
a seeded random subset when there are more than `num_real` (kept in sorted order), the generated ones the first
`num_fake`; batches are uint8 (N, 3, H, W) for `InceptionDetector` (clean-fid "clean" features, file `f58cb9b6…`,
the only one named plain "fid"). The statistics cache and `evaluate` are the same as for videos.

Text-to-image (`fid30k_coco`, `clipscore_*`): a folder written by `flexgen generate` holds FILE.json records
({"images": [{"file", "prompt", "seed", ...}], "grid", "settings"}); when the generated folder has such records, the
images they list (records in sorted path order, images in record order; grids left out) are the generated set,
otherwise every image, and the prompts come from same-stem .txt files beside the images.

- `fid30k_coco` (PixArt-α / ToCa FID-30K): 30,000 generated images, one per caption of the 30k COCO-2014-val
  captions, against COCO val2014 real images. Fixed here: the real images are a seed-0 random subset of 30,000 of
  the real folder (val2014 has 40,504; all of them when the folder holds at most 30,000, with a warning), each
  resized (PIL bicubic, antialiased, on uint8 RGB) so that it covers the generated images' size and centre-cropped
  to it, kept as uint8 like a PNG; then both sides go through the same clean-fid "clean" Inception path. The crop
  size is read from the generated images (all must share one size) and enters the name and the cache key:
  `fid30k_coco` at 256 px is recorded as `fid30k_coco256`.
- `clipscore_l14` / `clipscore_b32` (all generated images), `clipscore30k_l14` (exactly 30,000, the FID-30K
  companion): the mean over images of 100 · max(cos, 0) between the CLIP image and prompt embeddings
  (`flexgen.metrics.clip`), with OpenAI CLIP ViT-L/14 or ViT-B/32; `clips_b32_hessel` is CLIP-S of Hessel et al.
  2021 (ViT-B/32, 2.5 · max(cos, 0), captions prefixed "A photo depicts "). The detector's architecture must be
  the protocol's variant (an error otherwise): a number is called a CLIP score of ViT-L/14 only when it is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, runtime_checkable
from typing import Protocol as TypingProtocol

import numpy as np
import torch

from flexgen.dist import barrier, init, is_distributed, shutdown
from flexgen.files import file_sha256
from flexgen.metrics.clip import CLIP_SCORE_WEIGHTS, CLIP_VARIANTS, ClipScoreStats, clip_score
from flexgen.metrics.frechet import FeatureStats, fid_from_stats, kid_from_stats
from flexgen.metrics.i3d import I3D_SHA256, default_i3d_path
from flexgen.metrics.inception import INCEPTION_SHA256, default_inception_path
from flexgen.video.data import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_frames, probe_frames, read_frame_files
from flexgen.video.data import read_video as read_video_frames

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_BATCH_SIZE = 8

# The detector file each metric is defined with; any other detector gets its name into the metric name.
STANDARD_DETECTORS = {"fvd": I3D_SHA256, "kid": I3D_SHA256, "fid": INCEPTION_SHA256}
STANDARD_DETECTOR_NAMES = {I3D_SHA256: "i3d", INCEPTION_SHA256: "inception"}
# clipscore has no single standard file: its protocol names the CLIP architecture, which the detector must have.
METRICS = (*STANDARD_DETECTORS, "clipscore")
REAL_RESIZES = ("none", "center_crop")


# ---------------------------------------------------------------------------------------------------------------
# Detector contract
# ---------------------------------------------------------------------------------------------------------------
@runtime_checkable
class Detector(TypingProtocol):
    """uint8 videos (N, T, 3, H, W) in 0..255 -> float features (N, D); `sha256` identifies the weights."""

    name: str
    sha256: str | None

    def __call__(self, videos: torch.Tensor) -> torch.Tensor | np.ndarray: ...


def detector_name(detector: Any) -> str:
    """The detector's `name`, else the standard name of its sha256 (I3DDetector has no `name`), else its class."""
    name = getattr(detector, "name", None)
    if name:
        return str(name)
    return STANDARD_DETECTOR_NAMES.get(getattr(detector, "sha256", None) or "", type(detector).__name__)


def metric_name(metric: str, detector: Any) -> str:
    """'fvd' for the standard I3D weights, 'fvd[<detector name>]' for anything else."""
    if getattr(detector, "sha256", None) == STANDARD_DETECTORS.get(metric):
        return metric
    return f"{metric}[{detector_name(detector)}]"


# ---------------------------------------------------------------------------------------------------------------
# Protocol: everything that fixes which clips are compared
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    name: str
    metric: str             # "fvd", "kid" (both on I3D video features), "fid" (images) or "clipscore" (images+prompts)
    num_real: int           # real clips: at most this many (fewer when the real set has fewer usable videos); 0 for
                            # clipscore, which has no real set
    num_fake: int           # generated clips: exactly this many (clipscore: 0 = every generated image)
    num_frames: int         # frames per clip (1 for images)
    real_stride: int        # frame step inside a real clip
    fake_stride: int        # frame step inside a generated clip (which always starts at frame 0)
    min_real_frames: int    # real videos with fewer frames are discarded (and counted)
    seed: int = 0           # draws the real videos (when more than num_real) and each one's offset
    real_resize: str = "none"                   # fid: "center_crop" resizes / crops real images to real_size
    real_size: tuple[int, int] | None = None    # (H, W) of that crop; None until `resolve_protocol` reads it off the
                                                # generated images
    clip_variant: str = ""      # clipscore: the CLIP architecture the score is defined with ("ViT-L/14")
    clip_convention: str = ""   # clipscore: "torchmetrics" (100 · max(cos, 0)) or "hessel" (2.5 · max(cos, 0))
    text_prefix: str = ""       # clipscore: prepended to every prompt (Hessel et al.: "A photo depicts ")

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"protocol {self.name}: unknown metric {self.metric!r} (known: {sorted(METRICS)})")
        if self.metric == "clipscore":
            self._check_clipscore()
        else:
            if self.clip_variant or self.clip_convention or self.text_prefix:
                raise ValueError(f"protocol {self.name}: only clipscore protocols name a CLIP variant, a score "
                                 f"convention or a text prefix")
            for attr in ("num_real", "num_fake"):
                if getattr(self, attr) < 1:
                    raise ValueError(f"protocol {self.name}: {attr} must be >= 1, got {getattr(self, attr)}")
        for attr in ("num_frames", "real_stride", "fake_stride"):
            if getattr(self, attr) < 1:
                raise ValueError(f"protocol {self.name}: {attr} must be >= 1, got {getattr(self, attr)}")
        if self.min_real_frames < self.real_span:
            raise ValueError(f"protocol {self.name}: min_real_frames={self.min_real_frames} is shorter than one "
                             f"real clip ({self.real_span} frames)")
        if self.real_resize not in REAL_RESIZES:
            raise ValueError(f"protocol {self.name}: unknown real_resize {self.real_resize!r} (known: {REAL_RESIZES})")
        if self.real_resize != "none" and self.metric != "fid":
            raise ValueError(f"protocol {self.name}: real_resize={self.real_resize!r} is for fid protocols only")
        if self.real_size is not None:
            if self.real_resize != "center_crop":
                raise ValueError(f"protocol {self.name}: real_size needs real_resize='center_crop'")
            if len(self.real_size) != 2 or not all(isinstance(v, int) and v >= 1 for v in self.real_size):
                raise ValueError(f"protocol {self.name}: real_size must be (H, W) positive ints, got {self.real_size}")

    def _check_clipscore(self) -> None:
        if self.num_real != 0:
            raise ValueError(f"protocol {self.name}: clipscore has no real set, num_real must be 0 (got "
                             f"{self.num_real})")
        if self.num_fake < 0:
            raise ValueError(f"protocol {self.name}: num_fake must be >= 0 (0 = every image), got {self.num_fake}")
        if self.num_frames != 1:
            raise ValueError(f"protocol {self.name}: clipscore is on images, num_frames must be 1")
        if self.clip_variant not in CLIP_VARIANTS:
            raise ValueError(f"protocol {self.name}: unknown CLIP variant {self.clip_variant!r} (known: "
                             f"{', '.join(CLIP_VARIANTS)})")
        if self.clip_convention not in CLIP_SCORE_WEIGHTS:
            raise ValueError(f"protocol {self.name}: unknown CLIP score convention {self.clip_convention!r} (known: "
                             f"{sorted(CLIP_SCORE_WEIGHTS)})")

    @property
    def real_span(self) -> int:
        """Frames a real clip covers, first to last."""
        return (self.num_frames - 1) * self.real_stride + 1

    @property
    def fake_span(self) -> int:
        return (self.num_frames - 1) * self.fake_stride + 1

    def with_counts(self, num_real: int | None = None, num_fake: int | None = None) -> Protocol:
        """The same protocol with other clip counts, under a new name (fvd2048_16f -> fvd64_16f, fvd64x128_16f;
        clipscore_l14 -> clipscore100_l14, which has only generated images)."""
        if self.metric == "clipscore":
            if num_real not in (None, 0):
                raise ValueError(f"protocol {self.name}: clipscore has no real images; num_real cannot be set")
            num_real = 0
        num_real = self.num_real if num_real is None else num_real
        num_fake = self.num_fake if num_fake is None else num_fake
        if (num_real, num_fake) == (self.num_real, self.num_fake):
            return self
        match = re.fullmatch(r"([a-z]+)(?:\d+k?(?:x\d+k?)?)?(.*)", self.name)     # fid50k -> fid8, not fid8k
        if match is None:
            raise ValueError(f"protocol name {self.name!r} does not start with <metric><count>; cannot rename it")
        if self.metric == "clipscore":
            counts = str(num_fake) if num_fake else ""
        else:
            counts = str(num_real) if num_real == num_fake else f"{num_real}x{num_fake}"
        return dataclasses.replace(self, name=f"{match.group(1)}{counts}{match.group(2)}", num_real=num_real,
                                   num_fake=num_fake)


def _clip_protocol(name: str, variant: str, num_fake: int = 0, convention: str = "torchmetrics",
                   text_prefix: str = "") -> Protocol:
    """A clipscore protocol: no real set, one frame, the CLIP variant and score convention it is defined with."""
    return Protocol(name, "clipscore", num_real=0, num_fake=num_fake, num_frames=1, real_stride=1, fake_stride=1,
                    min_real_frames=1, clip_variant=variant, clip_convention=convention, text_prefix=text_prefix)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    # StyleGAN-V / Latte: realdata_subsample_factor=3, discard_short_videos (16 x 3 frames), gen clips from frame 0.
    Protocol("fvd2048_16f", "fvd", num_real=2048, num_fake=2048, num_frames=16, real_stride=3, fake_stride=1,
             min_real_frames=48),
    # The Taichi-HD setting of the Latte maintainer (realdata_subsample_factor=6, Latte issue #115).
    Protocol("fvd2048_16f_stride6", "fvd", num_real=2048, num_fake=2048, num_frames=16, real_stride=6,
             fake_stride=1, min_real_frames=96),
    # KID (unbiased, cubic kernel) on the same I3D features and clips as fvd2048_16f.
    Protocol("kid2048_16f", "kid", num_real=2048, num_fake=2048, num_frames=16, real_stride=3, fake_stride=1,
             min_real_frames=48),
    # Image FID over 50k images (clean-fid "clean" Inception features; image folders, not videos).
    Protocol("fid50k", "fid", num_real=50_000, num_fake=50_000, num_frames=1, real_stride=1, fake_stride=1,
             min_real_frames=1),
    # PixArt-α / ToCa FID-30K: 30k images (one per COCO-2014-val caption) vs a seed-0 random 30k of COCO val2014,
    # real images resized / centre-cropped to the generated size (see the module docstring).
    Protocol("fid30k_coco", "fid", num_real=30_000, num_fake=30_000, num_frames=1, real_stride=1, fake_stride=1,
             min_real_frames=1, real_resize="center_crop"),
    # CLIP score, torchmetrics convention 100 · max(cos, 0), over every generated image (or exactly 30k).
    _clip_protocol("clipscore_l14", "ViT-L/14"),
    _clip_protocol("clipscore_b32", "ViT-B/32"),
    _clip_protocol("clipscore30k_l14", "ViT-L/14", num_fake=30_000),
    # Hessel et al. 2021 CLIP-S: ViT-B/32, 2.5 · max(cos, 0), "A photo depicts " + caption.
    _clip_protocol("clips_b32_hessel", "ViT-B/32", convention="hessel", text_prefix="A photo depicts "),
)}

DEFAULT_PROTOCOLS = {"fvd": "fvd2048_16f", "kid": "kid2048_16f", "fid": "fid50k", "clipscore": "clipscore_l14"}


def get_protocol(protocol: str | Protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise KeyError(f"unknown protocol {protocol!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[protocol]


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
        return read_video_frames(self.path, list(indices))


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_sources(root: str | Path) -> list[Source]:
    """Every video file (any depth) and every folder that directly holds image files, sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no video folder at {root}")
    sources = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        here = Path(folder)
        rel_folder = here.relative_to(root).as_posix()
        files = sorted(f for f in files if _visible(f))
        if here != root and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            sources.append(Source(root, rel_folder, is_frames=True))
        for f in files:
            if Path(f).suffix.lower() in VIDEO_EXTENSIONS:
                sources.append(Source(root, (here / f).relative_to(root).as_posix(), is_frames=False))
    if not sources:
        raise ValueError(f"{root} holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) and no frame folders")
    return sorted(sources, key=lambda s: s.rel)


def manifest(root: str | Path) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every visible video or image file under `root`, sorted."""
    root = Path(root)
    wanted = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if _visible(d)]
        for f in files:
            if _visible(f) and Path(f).suffix.lower() in wanted:
                path = Path(folder) / f
                entries.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return sorted(entries)


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
class ClipSet:
    """The clips a protocol selected; iterating yields uint8 torch batches (N, T, 3, H, W).

    `discarded` lists (relative path, frame count) of the videos too short for the protocol; `num_candidates`
    counts the videos that were long enough (the pool the clips were drawn from)."""

    clips: list[ClipRef]
    discarded: list[tuple[str, int]] = field(default_factory=list)
    num_candidates: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.batch_size)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Batches of up to `batch_size` clips; a clip of another frame size starts a new batch."""
        return _uniform_batches((clip.source.read(clip.indices) for clip in self.clips), batch_size)

    def shard(self, rank: int, world_size: int) -> ClipSet:
        """Rank `rank`'s contiguous block of the clips (gathered in rank order, the blocks give back the order)."""
        return dataclasses.replace(self, clips=self.clips[rank_block(len(self.clips), rank, world_size)])


def rank_block(count: int, rank: int, world_size: int) -> slice:
    """Items [count·r/W, count·(r+1)/W) of rank r: contiguous, sizes differ by at most one, all items covered."""
    return slice(count * rank // world_size, count * (rank + 1) // world_size)


def _uniform_batches(arrays: Iterable[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 channel-last arrays (..., H, W, 3) stacked into channel-first tensors (N, ..., 3, H, W) of up to
    `batch_size`; an array of another shape starts a new batch."""
    pending: list[np.ndarray] = []
    for array in arrays:
        if pending and (len(pending) == batch_size or array.shape != pending[0].shape):
            yield _to_batch(pending)
            pending = []
        pending.append(array)
    if pending:
        yield _to_batch(pending)


def _to_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """(..., H, W, 3) uint8 arrays -> uint8 tensor (N, ..., 3, H, W): clips (N, T, 3, H, W), images (N, 3, H, W)."""
    return torch.from_numpy(np.stack(arrays)).movedim(-1, -3).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Real clips: random subset of the long-enough videos, one clip per video at a random offset
# ---------------------------------------------------------------------------------------------------------------
def sample_real_clips(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipSet:
    """Deterministic given the protocol: same folder + same seed -> same videos and offsets."""
    protocol = get_protocol(protocol)
    long_enough: list[tuple[Source, int]] = []
    discarded: list[tuple[str, int]] = []
    for source in list_sources(root):
        length = source.num_frames()
        if length < protocol.min_real_frames:
            discarded.append((source.rel, length))
        else:
            long_enough.append((source, length))
    if discarded:
        log.info("%s: %d videos shorter than %d frames discarded", root, len(discarded), protocol.min_real_frames)
    if not long_enough:
        raise ValueError(f"{root}: no video has the {protocol.min_real_frames} frames protocol {protocol.name} "
                         f"needs ({len(discarded)} shorter ones discarded)")

    # One generator for the whole draw: first the subset (kept in sorted order), then one offset per chosen video.
    rng = np.random.default_rng(protocol.seed)
    chosen = range(len(long_enough))
    if len(long_enough) > protocol.num_real:
        chosen = sorted(rng.choice(len(long_enough), size=protocol.num_real, replace=False).tolist())
    clips = []
    for i in chosen:
        source, length = long_enough[i]
        offset = int(rng.integers(0, length - protocol.real_span + 1))
        indices = tuple(range(offset, offset + protocol.real_span, protocol.real_stride))
        clips.append(ClipRef(source, indices))
    return ClipSet(clips, discarded=discarded, num_candidates=len(long_enough), batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------------------
# Generated clips: the first frames of the first num_fake videos (sorted names)
# ---------------------------------------------------------------------------------------------------------------
def sample_fake_clips(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipSet:
    """Exactly `num_fake` clips; too few videos, or a video shorter than a clip, is an error (not a silent skip)."""
    protocol = get_protocol(protocol)
    sources = list_sources(root)
    if len(sources) < protocol.num_fake:
        raise ValueError(f"{root}: protocol {protocol.name} needs {protocol.num_fake} generated videos, found "
                         f"{len(sources)}; generate more, or pass a smaller --num-fake (renames the protocol)")
    indices = tuple(range(0, protocol.fake_span, protocol.fake_stride))
    clips = []
    for source in sources[:protocol.num_fake]:
        length = source.num_frames()
        if length < protocol.fake_span:
            raise ValueError(f"{source.path}: {length} frames, protocol {protocol.name} needs {protocol.fake_span}")
        clips.append(ClipRef(source, indices))
    return ClipSet(clips, num_candidates=len(sources), batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------------------
# Images (fid protocols): seeded subset of the real images, the first num_fake generated ones
# ---------------------------------------------------------------------------------------------------------------
def _walk_images(root: Path) -> list[Path]:
    """Every visible image file under `root` (any depth), sorted by relative path; possibly none."""
    images = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if _visible(d)]
        images += [Path(folder) / f for f in files if _visible(f) and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
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


@dataclass
class ImageSet:
    """The images a protocol selected; iterating yields uint8 torch batches (N, 3, H, W) (an image of another size
    starts a new batch). `crop` (H, W) centre-crops every image to that size first (`center_crop_resize`).
    `discarded` is always empty; it mirrors `ClipSet`."""

    paths: list[Path]
    discarded: list[tuple[str, int]] = field(default_factory=list)
    num_candidates: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    crop: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.batch_size)

    def shard(self, rank: int, world_size: int) -> ImageSet:
        """Rank `rank`'s contiguous block of the images."""
        return dataclasses.replace(self, paths=self.paths[rank_block(len(self.paths), rank, world_size)])

    def read(self, path: Path) -> np.ndarray:
        """One image as uint8 RGB (H, W, 3), cropped when the set has a crop."""
        image = read_frame_files([path])[0]
        return image if self.crop is None else center_crop_resize(image, self.crop)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return _uniform_batches((self.read(path) for path in self.paths), batch_size)


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
    """The "images" entries (each with "file" and "prompt") and the grid file name of a `flexgen generate` record;
    None for other JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); a generated folder's .json files are read as flexgen "
                         f"generate records, move other files out") from error
    entries = data.get("images") if isinstance(data, dict) else None
    if not (isinstance(entries, list) and entries and isinstance(entries[0], dict) and "file" in entries[0]
            and "prompt" in entries[0]):
        return None
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                and isinstance(entry.get("prompt"), str)):
            raise ValueError(f"{path}: images[{i}] is not {{'file': str, 'prompt': str, ...}} as flexgen generate "
                             f"writes it: {entry!r}")
    grid = data.get("grid")
    return entries, grid if isinstance(grid, str) else None


def generated_images(root: str | Path, need_prompts: bool = False) -> GeneratedImages:
    """The generated images of `root`: those `flexgen generate` records list, else every image (sorted) with the
    prompts of same-stem .txt files when every image has one. `need_prompts` makes missing prompts an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no generated image folder at {root}")
    records = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        records += [Path(folder) / f for f in files if _visible(f) and f.lower().endswith(".json")]
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


def sample_real_images(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ImageSet:
    """At most `num_real` images: all of them, or a subset drawn from the protocol's seed (kept in sorted order);
    centre-cropped to `real_size` for a center_crop protocol."""
    protocol = get_protocol(protocol)
    if protocol.real_resize == "center_crop" and protocol.real_size is None:
        raise ValueError(f"protocol {protocol.name} crops real images to the generated images' size, which is not "
                         f"fixed yet: resolve it with resolve_protocol(protocol, fake_folder)")
    images = list_images(root)
    chosen = range(len(images))
    if len(images) > protocol.num_real:
        rng = np.random.default_rng(protocol.seed)
        chosen = sorted(rng.choice(len(images), size=protocol.num_real, replace=False).tolist())
    elif len(images) < protocol.num_real and protocol.real_resize == "center_crop":
        log.warning("%s: %d real images, fewer than the %d protocol %s is defined with", root, len(images),
                    protocol.num_real, protocol.name)
    return ImageSet([images[i] for i in chosen], num_candidates=len(images), batch_size=batch_size,
                    crop=protocol.real_size)


def sample_fake_images(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ImageSet:
    """Exactly the first `num_fake` generated images (`generated_images` order); fewer is an error."""
    protocol = get_protocol(protocol)
    images = generated_images(root).paths
    if len(images) < protocol.num_fake:
        raise ValueError(f"{root}: protocol {protocol.name} needs {protocol.num_fake} generated images, found "
                         f"{len(images)}; generate more, or pass a smaller --num-fake (renames the protocol)")
    return ImageSet(images[:protocol.num_fake], num_candidates=len(images), batch_size=batch_size)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header."""
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def resolve_protocol(protocol: str | Protocol, fake: str | Path) -> Protocol:
    """A center_crop protocol with its crop size read off the generated images (all must share one), renamed
    fid30k_coco -> fid30k_coco256 (fid30k_coco256x384 when not square); any other protocol unchanged."""
    protocol = get_protocol(protocol)
    if protocol.real_resize != "center_crop" or protocol.real_size is not None:
        return protocol
    sizes = Counter(image_size(path) for path in sample_fake_images(fake, protocol).paths)
    if len(sizes) != 1:
        common = ", ".join(f"{h}x{w}: {n}" for (h, w), n in sizes.most_common(5))
        raise ValueError(f"{fake}: protocol {protocol.name} crops the real images to the generated images' size, but "
                         f"they have several sizes (H x W: count) {common}")
    (h, w), = sizes
    return dataclasses.replace(protocol, name=f"{protocol.name}{h if h == w else f'{h}x{w}'}", real_size=(h, w))


def sample_real(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipSet | ImageSet:
    """Real images for a fid protocol, real clips otherwise."""
    protocol = get_protocol(protocol)
    sample = sample_real_images if protocol.metric == "fid" else sample_real_clips
    return sample(root, protocol, batch_size=batch_size)


def sample_fake(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE) -> ClipSet | ImageSet:
    """Generated images for a fid protocol, generated clips otherwise."""
    protocol = get_protocol(protocol)
    sample = sample_fake_images if protocol.metric == "fid" else sample_fake_clips
    return sample(root, protocol, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------------------
# Feature statistics of a stream of batches
# ---------------------------------------------------------------------------------------------------------------
def compute_stats(batches: Iterable[torch.Tensor], detector: Callable[[torch.Tensor], Any], keep_features: int = 0,
                  progress: bool = False, metadata: dict[str, Any] | None = None,
                  description: str = "features") -> FeatureStats:
    """Run the detector over every batch and accumulate float64 statistics (keeping up to `keep_features` rows).
    Under torchrun, each rank takes its block of a ClipSet / ImageSet and the statistics are summed over ranks
    (kept features gathered in rank order, so they come in the single-process order)."""
    stats = FeatureStats(keep_features=keep_features, metadata=metadata)
    if is_distributed() and hasattr(batches, "shard"):
        batches = batches.shard(torch.distributed.get_rank(), torch.distributed.get_world_size())
        progress = progress and torch.distributed.get_rank() == 0
    if progress:
        from tqdm import tqdm

        total = len(batches) if isinstance(batches, (ClipSet, ImageSet)) else None
        bar = tqdm(total=total, desc=description, unit="clip")
    for batch in batches:
        features = detector(batch)
        if len(features) != len(batch):
            raise ValueError(f"the detector returned {len(features)} feature rows for a batch of {len(batch)}")
        stats.update(features)
        if progress:
            bar.update(len(batch))
    if progress:
        bar.close()
    return stats.all_reduce()


# ---------------------------------------------------------------------------------------------------------------
# Reference statistics, cached by (real set listing, detector, protocol)
# ---------------------------------------------------------------------------------------------------------------
def reference_key(root: str | Path, detector_sha256: str, protocol: Protocol, keep_features: int) -> str:
    payload = {"version": CACHE_VERSION, "manifest": manifest(root), "detector_sha256": detector_sha256,
               "protocol": dataclasses.asdict(protocol), "keep_features": keep_features}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class Reference:
    stats: FeatureStats
    path: Path | None       # the cached .npz (None when not cached)
    sha256: str | None      # sha256 of that file
    cache_hit: bool
    num_discarded: int


def reference_stats(root: str | Path, protocol: str | Protocol, detector: Any, cache_dir: str | Path | None = None,
                    keep_features: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                    progress: bool = False) -> Reference:
    """Statistics of the protocol's real clips: loaded from the cache when present, else computed (and cached).

    A detector without a sha256 is never cached (its statistics could not be told apart from another's)."""
    protocol = get_protocol(protocol)
    sha = getattr(detector, "sha256", None)
    path = None
    barrier()                  # under torchrun: every rank decides cache hit / miss before any rank writes the file
    if cache_dir is not None and sha:
        key = reference_key(root, sha, protocol, keep_features)
        path = Path(cache_dir) / f"{protocol.name}-{key[:16]}.npz"
        if path.is_file():
            stats = FeatureStats.load(path)
            if stats.metadata.get("key") != key:
                raise ValueError(f"{path}: cached statistics belong to key {stats.metadata.get('key')}, expected "
                                 f"{key} (a 16-digit prefix collision?); delete the file")
            return Reference(stats, path, file_sha256(path), cache_hit=True,
                             num_discarded=int(stats.metadata["num_discarded"]))
    elif cache_dir is not None:
        log.warning("detector %s has no sha256: reference statistics are not cached", detector_name(detector))

    clips = sample_real(root, protocol, batch_size=batch_size)
    metadata = {"protocol": dataclasses.asdict(protocol), "detector": detector_name(detector),
                "detector_sha256": sha, "real": str(Path(root).resolve()), "num_real": len(clips),
                "num_discarded": len(clips.discarded)}
    if path is not None:
        metadata["key"] = key
    stats = compute_stats(clips, detector, keep_features=keep_features, progress=progress, metadata=metadata,
                          description=f"real {protocol.name}")
    if path is None:
        return Reference(stats, None, None, cache_hit=False, num_discarded=len(clips.discarded))
    if not is_distributed() or torch.distributed.get_rank() == 0:
        stats.save(path)       # every rank holds the same totals after compute_stats; one writes them
    barrier()
    return Reference(stats, path, file_sha256(path), cache_hit=False, num_discarded=len(clips.discarded))


# ---------------------------------------------------------------------------------------------------------------
# evaluate: one protocol, one real set, one generated set -> one record
# ---------------------------------------------------------------------------------------------------------------
def evaluate(protocol: str | Protocol, real: str | Path, fake: str | Path, detector: Any,
             cache_dir: str | Path | None = None, *, with_kid: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
             progress: bool = False, kid_subsets: int = 100) -> dict[str, Any]:
    """The protocol's metric of `fake` against `real`, with everything needed to tell numbers apart.

    `with_kid` keeps the raw features (num_real / num_fake rows) so KID is reported beside the Fréchet distance;
    a `kid` protocol always keeps them."""
    protocol = get_protocol(protocol)
    if protocol.metric == "clipscore":
        raise ValueError(f"protocol {protocol.name} is a CLIP score (no real set): use evaluate_clipscore")
    protocol = resolve_protocol(protocol, fake)
    with_kid = with_kid or protocol.metric == "kid"
    ref = reference_stats(real, protocol, detector, cache_dir, keep_features=protocol.num_real if with_kid else 0,
                          batch_size=batch_size, progress=progress)
    fake_clips = sample_fake(fake, protocol, batch_size=batch_size)
    fake_stats = compute_stats(fake_clips, detector, keep_features=protocol.num_fake if with_kid else 0,
                               progress=progress, description=f"generated {protocol.name}")

    fd = fid_from_stats(ref.stats, fake_stats)
    result: dict[str, Any] = {
        "metric": metric_name(protocol.metric, detector),
        "value": fd,
        "protocol": protocol.name,
        "protocol_fields": dataclasses.asdict(protocol),
        "detector": detector_name(detector),
        "detector_sha256": getattr(detector, "sha256", None),
        "reference_stats": str(ref.path) if ref.path else None,
        "reference_stats_sha256": ref.sha256,
        "reference_cache_hit": ref.cache_hit,
        "num_real": ref.stats.count,
        "num_real_discarded": ref.num_discarded,
        "num_fake": fake_stats.count,
        "real": str(Path(real).resolve()),
        "fake": str(Path(fake).resolve()),
        "frechet_distance": fd,
    }
    if protocol.metric == "fid":       # which prompts the generated images came from, when the folder says
        result["fake_prompts_sha256"] = generated_images(fake).prompts_sha256
    if with_kid:
        kid_mean, kid_std = kid_from_stats(ref.stats, fake_stats, num_subsets=kid_subsets, seed=protocol.seed)
        result.update(kid=kid_mean, kid_std=kid_std)
        if protocol.metric == "kid":
            result["value"] = kid_mean
    return result


# ---------------------------------------------------------------------------------------------------------------
# evaluate_clipscore: one clipscore protocol, one generated folder (images + prompts) -> one record
# ---------------------------------------------------------------------------------------------------------------
def check_clip_detector(protocol: Protocol, detector: Any) -> None:
    """A CLIP score is that of the protocol's CLIP variant only: any other detector architecture is an error."""
    variant = getattr(detector, "variant", None)
    if variant != protocol.clip_variant:
        same = [p.name for p in PROTOCOLS.values() if p.metric == "clipscore" and p.clip_variant == variant]
        hint = f"or a protocol of {variant} ({', '.join(same)})" if same else "(no protocol uses its architecture)"
        known = CLIP_VARIANTS.get(protocol.clip_variant)
        raise ValueError(f"protocol {protocol.name} is the CLIP score of CLIP {protocol.clip_variant} "
                         f"({known.hub_id if known else 'unregistered'}); the detector {detector_name(detector)} "
                         f"({getattr(detector, 'path', '?')}) is {variant or 'not a known CLIP variant'}: use a "
                         f"{protocol.clip_variant} folder {hint}")


def _prompted_batches(images: Sequence[Path], prompts: Sequence[str],
                      batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(uint8 images (N, 3, H, W), their prompts) of up to `batch_size`; an image of another size starts a batch."""
    arrays: list[np.ndarray] = []
    texts: list[str] = []
    for path, prompt in zip(images, prompts, strict=True):
        array = read_frame_files([path])[0]
        if arrays and (len(arrays) == batch_size or array.shape != arrays[0].shape):
            yield _to_batch(arrays), texts
            arrays, texts = [], []
        arrays.append(array)
        texts.append(prompt)
    if arrays:
        yield _to_batch(arrays), texts


def evaluate_clipscore(protocol: str | Protocol, fake: str | Path, detector: Any, *,
                       batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> dict[str, Any]:
    """The protocol's CLIP score of the generated images in `fake` against their prompts.

    `detector` has `image_features(uint8 (N, 3, H, W))`, `text_features(list[str])`, `variant`, `name`, `sha256`
    (`CLIPDetector`); its variant must be the protocol's. Every image is scored when the protocol's num_fake is 0,
    else exactly the first num_fake (fewer is an error)."""
    protocol = get_protocol(protocol)
    if protocol.metric != "clipscore":
        raise ValueError(f"protocol {protocol.name} measures {protocol.metric}, not clipscore")
    check_clip_detector(protocol, detector)
    generated = generated_images(fake, need_prompts=True)
    available = len(generated.paths)
    count = protocol.num_fake or available
    if available < count:
        raise ValueError(f"{fake}: protocol {protocol.name} needs {count} generated images with prompts, found "
                         f"{available}; generate more, or pass a smaller --num-fake (renames the protocol)")
    paths, prompts = generated.paths[:count], (generated.prompts or [])[:count]

    stats = ClipScoreStats()
    if is_distributed():                 # under torchrun: each rank scores its block, the sums are reduced
        block = rank_block(count, torch.distributed.get_rank(), torch.distributed.get_world_size())
        paths, prompts = paths[block], prompts[block]
        progress = progress and torch.distributed.get_rank() == 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, desc=f"clipscore {protocol.name}", unit="image")
    for images, texts in _prompted_batches(paths, prompts, batch_size):
        image_features = detector.image_features(images)
        text_features = detector.text_features([protocol.text_prefix + t for t in texts])
        stats.update(clip_score(image_features, text_features, protocol.clip_convention))
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    stats.all_reduce()
    prompts = (generated.prompts or [])[:count]
    summary = stats.to_dict()
    return {
        "metric": "clip_score",
        "value": summary["mean"],
        **summary,
        "protocol": protocol.name,
        "protocol_fields": dataclasses.asdict(protocol),
        "score": f"{CLIP_SCORE_WEIGHTS[protocol.clip_convention]:g} * max(cos, 0) ({protocol.clip_convention})",
        "clip_variant": protocol.clip_variant,
        "detector": detector_name(detector),
        "detector_sha256": getattr(detector, "sha256", None),
        "num_fake": stats.count,
        "num_fake_available": available,
        "fake": str(Path(fake).resolve()),
        "prompts_source": generated.source,
        "prompts_sha256": prompts_sha256(prompts),
    }


# ---------------------------------------------------------------------------------------------------------------
# Command line: flexgen eval fvd|fid|kid --real DIR --fake DIR ... | flexgen eval clipscore --fake DIR ...
# ---------------------------------------------------------------------------------------------------------------
def default_stats_cache() -> Path:
    """`$FLEXGEN_CACHE/ref_stats` (cache default ~/.cache/flexgen)."""
    return Path(os.environ.get("FLEXGEN_CACHE", "~/.cache/flexgen")).expanduser() / "ref_stats"


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("metric", choices=sorted(DEFAULT_PROTOCOLS),
                        help="fvd, kid (I3D video features), fid (images) or clipscore (images and their prompts)")
    parser.add_argument("--real", default=None, help="real videos: video files or frame folders <video>/<frame> "
                                                     "(fid: a folder of images); required except for clipscore")
    parser.add_argument("--fake", required=True, help="generated videos (mp4), the first ones in sorted order (fid, "
                                                      "clipscore: images; with flexgen generate's FILE.json, the "
                                                      "images it lists and their prompts, else same-stem .txt "
                                                      "prompts)")
    parser.add_argument("--protocol", default=None,
                        help=f"named protocol (default per metric: {DEFAULT_PROTOCOLS}); known: "
                             f"{', '.join(sorted(PROTOCOLS))}")
    parser.add_argument("--detector", default=None,
                        help=f"detector weights: I3D TorchScript for fvd/kid (default {default_i3d_path()}, or "
                             f"$FLEXGEN_I3D), Inception for fid (default {default_inception_path()}, or "
                             f"$FLEXGEN_INCEPTION), a Hugging Face CLIP folder for clipscore (default "
                             f"$FLEXGEN_CLIP, else {default_stats_cache().parent / 'detectors'}/"
                             f"<clip-vit-large-patch14 or clip-vit-base-patch32, per the protocol's variant>)")
    parser.add_argument("--cache", default=None, help=f"reference statistics cache (default {default_stats_cache()})")
    parser.add_argument("--num-real", type=int, default=None, help="fewer real clips for quick runs (renames the "
                                                                   "protocol, e.g. fvd64_16f)")
    parser.add_argument("--num-fake", type=int, default=None, help="fewer generated clips (renames the protocol; "
                                                                   "clipscore: the first N images)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-kid", action="store_true", help="skip KID (does not keep raw features)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--records", default=None, metavar="FILE",
                        help="also append the result as a leaderboard record to this JSON Lines file (model, sampler, "
                             "seeds and cost come from samples.json / the generate JSON beside the samples)")
    parser.add_argument("--dataset", default=None, help="dataset name of the record (ffs, sky, ucf101, taichi, "
                                                        "imagenet256, coco30k, ...); required with --records")
    parser.add_argument("--method", default=None, help="record's method (default: baseline / flexdit <layout>)")
    parser.add_argument("--model-name", default=None, help="record's model name (default: from the sample JSON)")
    parser.add_argument("--note", default=None, help="free-text note stored with the record")
    return parser


def eval_main(args: argparse.Namespace) -> dict[str, Any]:
    """Run one evaluation and print its record as one JSON line (and append it to --records)."""
    if getattr(args, "records", None) and not args.dataset:
        raise SystemExit("flexgen eval --records needs --dataset NAME (rows of different datasets never share a table)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # torchrun: each rank its block of clips / images, on its GPU
        args.device = str(init(None if args.device == "cuda" else args.device).device)
    protocol = get_protocol(args.protocol or DEFAULT_PROTOCOLS[args.metric])
    if protocol.metric != args.metric:
        raise SystemExit(f"protocol {protocol.name} measures {protocol.metric}, not {args.metric}")
    if args.metric == "clipscore":
        if args.num_real is not None:
            raise SystemExit("flexgen eval clipscore: --num-real does not apply (a CLIP score has no real images)")
        if args.num_fake is not None and args.num_fake < 1:
            raise SystemExit(f"flexgen eval clipscore: --num-fake must be >= 1, got {args.num_fake}")
        return _report(_clipscore_main(protocol.with_counts(num_fake=args.num_fake), args), args)
    if args.real is None:
        what = "images" if args.metric == "fid" else "videos"
        raise SystemExit(f"flexgen eval {args.metric}: --real DIR is required (the real {what} the generated ones "
                         f"are compared with)")
    protocol = protocol.with_counts(args.num_real, args.num_fake)

    if protocol.metric == "fid":
        from flexgen.metrics.inception import InceptionDetector

        try:  # verifies sha256 before loading; never downloads
            detector: Any = InceptionDetector(path=args.detector, device=args.device, batch_size=args.batch_size)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"flexgen eval fid: {error}") from error
    else:
        from flexgen.metrics.i3d import I3DDetector

        detector = I3DDetector(path=args.detector, device=args.device, batch_size=args.batch_size)  # verifies sha256
    cache = Path(args.cache).expanduser() if args.cache else default_stats_cache()
    result = evaluate(protocol, args.real, args.fake, detector, cache, with_kid=not args.no_kid,
                      batch_size=args.batch_size, progress=args.progress)
    return _report(result, args)


def _report(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Print the result as one JSON line; with --records, also append it as a leaderboard Record (model, sampler,
    seeds and cost read from the generator's JSON beside the samples). Under torchrun, rank 0 reports."""
    if is_distributed():
        world = torch.distributed.get_world_size()
        result["world_size"] = world
        rank = torch.distributed.get_rank()
        shutdown()
        if rank != 0:
            return result
    print(json.dumps(result, sort_keys=True))
    if getattr(args, "records", None):
        from flexgen.metrics.records import append_record, record_from_evaluation

        record = record_from_evaluation(result, args.dataset, args.fake, method=args.method,
                                        model_variant=args.model_name, note=args.note)
        append_record(args.records, record)
        print(f"appended a {record.metric} record to {args.records}", file=sys.stderr)
    return result


def _clipscore_main(protocol: Protocol, args: argparse.Namespace) -> dict[str, Any]:
    """Load the protocol's CLIP variant from --detector (or its default folder) and score --fake."""
    from flexgen.metrics import clip

    try:  # local folder only; its architecture must be the protocol's variant
        detector = clip.CLIPDetector(path=args.detector, device=args.device, batch_size=args.batch_size,
                                     variant=protocol.clip_variant)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"flexgen eval clipscore: {error}") from error
    return evaluate_clipscore(protocol, args.fake, detector, batch_size=args.batch_size, progress=args.progress)
