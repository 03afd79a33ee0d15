"""Which items a protocol takes from a real and a generated folder ("select" here is the seeded choice of evaluation
items, not diffusion sampling).

- Real clips (`select_real_clips`): a random subset of the videos long enough for the protocol (when there are
  more than `num_real`), one clip per video from a random offset, all drawn from the protocol's seed. Generated
  clips (`select_fake_clips`): the first frames of the first `num_fake` videos.
- Real images (`select_real_images`): a seeded random subset when there are more than `num_real` (kept in sorted
  order), centre-cropped to the generated size for a `center_crop` protocol (`resolve_protocol` reads that size
  off the generated images); generated images (`select_fake_images`): the first `num_fake`.
- `select_real` / `select_fake`: images for a fid protocol, clips otherwise.

Real items too short or corrupt are discarded and counted against `num_real`, which `flexgen.metrics.evaluate`
enforces; a generated file that is missing, too short or corrupt is refused by name (`flexgen.metrics.sources`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from flexgen.metrics.generated import check_generated_images, check_sample_manifest, generated_images
from flexgen.metrics.protocols import Protocol, get_protocol
from flexgen.metrics.sources import (
    DEFAULT_BATCH_SIZE,
    ClipRef,
    ClipSet,
    ImageSet,
    Source,
    check_each,
    describe_discards,
    generated_file_error,
    image_problem,
    image_size,
    list_images,
    list_sources,
    warn_corrupt,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Real clips: random subset of the long-enough videos, one clip per video at a random offset
# ---------------------------------------------------------------------------------------------------------------
def select_real_clips(root: str | Path, protocol: str | Protocol, batch_size: int = DEFAULT_BATCH_SIZE,
                      exclude: frozenset[str] = frozenset()) -> ClipSet:
    """Deterministic given the protocol: same folder + same seed -> same videos and offsets. Videos whose relative
    path is in `exclude` are not drawn (a second draw disjoint from a first one: the real-vs-real floor).

    At most `num_real` clips: fewer when the folder has fewer usable videos (`flexgen.metrics.evaluate` decides
    whether that is allowed). Videos too short, and video files no decoder opens, are left out before the draw;
    a frame folder whose chosen clip has an unreadable frame is left out after it (its place is not redrawn)."""
    protocol = get_protocol(protocol)
    sources = [source for source in list_sources(root) if source.rel not in exclude]
    long_enough: list[tuple[Source, int]] = []
    too_short: list[tuple[str, int]] = []
    corrupt: list[tuple[str, str]] = []
    for source in sources:
        length, problem = source.probe()
        if problem is not None:                             # no decoder opens it, or it cannot be read at all
            corrupt.append((source.rel, problem))
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
    for clip, problem in zip(drawn, check_each(ClipRef.frame_problem, drawn), strict=True):
        if problem is None:
            clips.append(clip)
        else:
            corrupt.append((clip.source.rel, problem))

    if too_short:
        log.info("%s: %d videos shorter than %d frames discarded", root, len(too_short), protocol.min_real_frames)
    warn_corrupt(root, corrupt, "video")
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
        length, problem = source.probe()
        if problem is not None:                             # a corrupt generated video is refused, never skipped
            bad.append((source.path, problem))
            continue
        if length < protocol.fake_span:
            raise ValueError(f"{source.path}: {length} frames, protocol {protocol.name} needs {protocol.fake_span}")
        clips.append(ClipRef(source, indices))
    if bad:
        raise generated_file_error(bad, "video")
    return ClipSet(clips, num_found=len(sources), num_candidates=len(sources), batch_size=batch_size,
                   role="generated")


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
    for path, problem in zip(images, check_each(image_problem, images), strict=True):
        if problem is None:
            usable.append(path)
        else:
            corrupt.append((path.relative_to(root).as_posix(), problem))
    warn_corrupt(root, corrupt, "image")
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
