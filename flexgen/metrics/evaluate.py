"""Evaluating under a protocol: feature statistics, cached reference statistics, `evaluate` (FVD / KID / FID) and
`evaluate_clipscore` (the `flexgen eval` command line: `flexgen.metrics.eval_command`).

- The metric name says which detector was used: only the standard detector file (I3D `bec6519f…` for fvd / kid,
  clean-fid Inception `f58cb9b6…` for fid) earns the plain metric name ("fvd"); any other detector is named in it
  ("fvd[random-i3d]") so such numbers can never pass for FVD. A clipscore's detector must have the protocol's CLIP
  architecture instead (`check_clip_detector`).
- Reference statistics are cached as `<cache_dir>/<protocol>-<key[:16]>.npz`, the key being the sha256 of the real
  set's listing (relative paths and sizes), the detector sha256 and the protocol fields; written atomically.
- A real set with fewer usable items than the protocol's `num_real` (too-short or corrupt ones discarded) is refused
  before any feature is computed, and on a cache hit from the cached count, naming both counts and what was
  discarded. With `allow_fewer` it is evaluated on the M usable items under the protocol
  `protocol.with_counts(num_real=M)` (fvd2048_16f on 16 videos: fvd16x2048_16f), which the result names; the cache
  stays keyed by the requested protocol, so the same file is found either way.
- Under torchrun each rank extracts the features of its block of clips / images and the statistics are summed
  over ranks; rank 0 writes the cache and reports.

The detectors are those of `flexgen.metrics.detectors`; the inputs those of `flexgen.metrics.selection`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flexgen.dist import barrier, is_distributed
from flexgen.files import file_sha256
from flexgen.metrics.clip import CLIP_SCORE_WEIGHTS, CLIP_VARIANTS, ClipScoreStats, clip_score
from flexgen.metrics.detectors import ImageDetector, ImageTextDetector, VideoDetector
from flexgen.metrics.frechet import FeatureStats, fid_from_stats, kid_from_stats
from flexgen.metrics.generated import check_generated_images, generated_images, prompts_sha256
from flexgen.metrics.i3d import I3D_SHA256
from flexgen.metrics.inception import INCEPTION_SHA256
from flexgen.metrics.protocols import PROTOCOLS, Protocol, get_protocol
from flexgen.metrics.selection import resolve_protocol, select_fake, select_real
from flexgen.metrics.sources import (
    DEFAULT_BATCH_SIZE,
    ClipSet,
    ImageSet,
    describe_discards,
    listing,
    prompted_batches,
    rank_block,
)

log = logging.getLogger(__name__)

CACHE_VERSION = 1

# The detector file each metric is defined with; any other detector gets its name into the metric name.
STANDARD_DETECTORS = {"fvd": I3D_SHA256, "kid": I3D_SHA256, "fid": INCEPTION_SHA256}
STANDARD_DETECTOR_NAMES = {I3D_SHA256: "i3d", INCEPTION_SHA256: "inception"}
# clipscore has no single standard file: its protocol names the CLIP architecture, which the detector must have.


# ---------------------------------------------------------------------------------------------------------------
# Metric and detector names
# ---------------------------------------------------------------------------------------------------------------
def detector_name(detector: Any) -> str:
    """The detector's `name`, else the standard name of its sha256 (I3DDetector has no `name`), else its class."""
    name = getattr(detector, "name", None)
    if name:
        return str(name)
    return STANDARD_DETECTOR_NAMES.get(getattr(detector, "sha256", None) or "", type(detector).__name__)


def metric_name(metric: str, detector: Any) -> str:
    """'fvd' for the standard I3D weights; the detector's own name for it where it has one (`metric_names`:
    SynthMotion's Fréchet distance is 'fd_synthmotion'); 'fvd[<detector name>]' for anything else."""
    if getattr(detector, "sha256", None) == STANDARD_DETECTORS.get(metric):
        return metric
    own = getattr(detector, "metric_names", {}).get(metric)
    return own or f"{metric}[{detector_name(detector)}]"


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
    payload = {"version": CACHE_VERSION, "manifest": listing(root), "detector_sha256": detector_sha256,
               "protocol": dataclasses.asdict(protocol), "keep_features": keep_features}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class Reference:
    stats: FeatureStats
    path: Path | None       # the cached .npz (None when not cached)
    sha256: str | None      # sha256 of that file
    cache_hit: bool
    num_discarded: int
    protocol: Protocol      # what was computed: the requested protocol, renamed when allow_fewer gave fewer items
    discarded: dict[str, Any] = dataclasses.field(default_factory=dict)   # `Discards.discard_summary()`


def counted_protocol(root: str | Path, protocol: Protocol, usable: int, num_discarded: int,
                     discarded: dict[str, Any], allow_fewer: bool) -> Protocol:
    """The protocol that `usable` real items compute: `protocol` when there are num_real of them; with fewer, a
    ValueError naming the folder, the protocol, both counts and the discarded items (`discarded`: a
    `Discards.discard_summary()`, or {} for statistics cached without one), unless `allow_fewer`, which gives
    `protocol.with_counts(num_real=usable)` (renamed, e.g. fvd2048_16f -> fvd16x2048_16f)."""
    if usable >= protocol.num_real:
        return protocol
    renamed = protocol.with_counts(num_real=usable)
    if allow_fewer:
        log.warning("%s: %d usable real items, fewer than the %d of protocol %s: evaluated as %s", root, usable,
                    protocol.num_real, protocol.name, renamed.name)
        return renamed
    items = "images" if protocol.metric == "fid" else "videos"
    found = int(discarded.get("found", usable + num_discarded))
    counts = f"{found} found, "
    if not num_discarded:
        counts += "none discarded"
    elif discarded:
        counts += f"{num_discarded} discarded: {describe_discards(discarded, protocol.min_real_frames)}"
    else:
        counts += f"{num_discarded} discarded"
    raise ValueError(f"{root}: protocol {protocol.name} needs {protocol.num_real} real {items}, only {usable} are "
                     f"usable ({counts}); pass --allow-fewer (allow_fewer=True in Python) to evaluate on these "
                     f"{usable} under the name {renamed.name}, or --num-real {usable}, or add real {items}")


def reference_stats(root: str | Path, protocol: str | Protocol, detector: VideoDetector | ImageDetector,
                    cache_dir: str | Path | None = None, keep_features: int = 0,
                    batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False, *,
                    allow_fewer: bool = False) -> Reference:
    """Statistics of the protocol's real clips: loaded from the cache when present, else computed (and cached).

    Fewer usable real items than the protocol's num_real is refused before any feature is computed (and on a
    cache hit), unless `allow_fewer`: then `Reference.protocol` is the protocol renamed by that count
    (`counted_protocol`). The cache is keyed by the requested protocol either way. A detector without a sha256 is
    never cached (its statistics could not be told apart from another's)."""
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
            num_discarded = int(stats.metadata["num_discarded"])
            discarded = dict(stats.metadata.get("discarded", {}))
            computed = counted_protocol(root, protocol, stats.count, num_discarded, discarded, allow_fewer)
            return Reference(stats, path, file_sha256(path), cache_hit=True, num_discarded=num_discarded,
                             protocol=computed, discarded=discarded)
    elif cache_dir is not None:
        log.warning("detector %s has no sha256: reference statistics are not cached", detector_name(detector))

    clips = select_real(root, protocol, batch_size=batch_size)
    discarded = clips.discard_summary()
    computed = counted_protocol(root, protocol, len(clips), clips.num_discarded, discarded,
                                allow_fewer)                                  # refused before any feature
    metadata = {"protocol": dataclasses.asdict(protocol), "detector": detector_name(detector),
                "detector_sha256": sha, "real": str(Path(root).resolve()), "num_real": len(clips),
                "num_discarded": clips.num_discarded, "discarded": discarded}
    if path is not None:
        metadata["key"] = key
    stats = compute_stats(clips, detector, keep_features=keep_features, progress=progress, metadata=metadata,
                          description=f"real {computed.name}")
    reference = Reference(stats, None, None, cache_hit=False, num_discarded=clips.num_discarded, protocol=computed,
                          discarded=discarded)
    if path is None:
        return reference
    if not is_distributed() or torch.distributed.get_rank() == 0:
        stats.save(path)       # every rank holds the same totals after compute_stats; one writes them
    barrier()
    return dataclasses.replace(reference, path=path, sha256=file_sha256(path))


# ---------------------------------------------------------------------------------------------------------------
# evaluate: one protocol, one real set, one generated set -> one record
# ---------------------------------------------------------------------------------------------------------------
def evaluate(protocol: str | Protocol, real: str | Path, fake: str | Path, detector: VideoDetector | ImageDetector,
             cache_dir: str | Path | None = None, *, with_kid: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
             progress: bool = False, kid_subsets: int = 100, allow_fewer: bool = False,
             intervals: bool = False) -> dict[str, Any]:
    """The protocol's metric of `fake` against `real`, with everything needed to tell numbers apart.

    `with_kid` keeps the raw features (num_real / num_fake rows) so KID is reported beside the Fréchet distance;
    a `kid` protocol always keeps them. `intervals` adds the value's 95% interval ("interval") and KID's
    ("kid_interval"), from `flexgen.metrics.intervals`; it keeps the features too. The generated set must have
    exactly num_fake readable items (else an error naming the file); a real set with fewer usable items than
    num_real is refused unless `allow_fewer`, which renames the protocol by the count (`counted_protocol`):
    "protocol" and "protocol_fields" of the result are those of what was computed."""
    protocol = get_protocol(protocol)
    if protocol.metric == "clipscore":
        raise ValueError(f"protocol {protocol.name} is a CLIP score (no real set): use evaluate_clipscore")
    protocol = resolve_protocol(protocol, fake)
    with_kid = with_kid or intervals or protocol.metric == "kid"
    fake_clips = select_fake(fake, protocol, batch_size=batch_size)    # a corrupt generated file: refused first
    ref = reference_stats(real, protocol, detector, cache_dir, keep_features=protocol.num_real if with_kid else 0,
                          batch_size=batch_size, progress=progress, allow_fewer=allow_fewer)
    protocol = ref.protocol
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
        "real_discarded": ref.discarded,
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
    if intervals:
        from flexgen.metrics.intervals import distance_intervals

        spread = distance_intervals(ref.stats, fake_stats, seed=protocol.seed)
        result.update(kid=spread["kid"], kid_interval=spread["kid_interval"],
                      interval=spread["kid_interval" if protocol.metric == "kid" else "interval"])
        if protocol.metric == "kid":
            result["value"] = spread["kid"]
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


def evaluate_clipscore(protocol: str | Protocol, fake: str | Path, detector: ImageTextDetector, *,
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
    check_generated_images(paths)            # a corrupt image is refused by name before any feature

    stats = ClipScoreStats()
    if is_distributed():                 # under torchrun: each rank scores its block, the sums are reduced
        block = rank_block(count, torch.distributed.get_rank(), torch.distributed.get_world_size())
        paths, prompts = paths[block], prompts[block]
        progress = progress and torch.distributed.get_rank() == 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, desc=f"clipscore {protocol.name}", unit="image")
    for images, texts in prompted_batches(paths, prompts, batch_size):
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
