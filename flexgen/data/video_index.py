"""The video datasets' presets, the cached index of a dataset root, and UCF-style split lists.

Presets (`DATASETS`, after Latte's `datasets/` folder, Ma et al. 2024):

| name | layout on disk | flip | spatial transform | labels |
|---|---|---|---|---|
| ffs | video files anywhere under the root (`preprocess_ffs/train/videos`) | yes | short side, crop | 0 |
| sky | frame folders: every folder holding image files is a clip (`sky_train`) | no | crop, resize | 0 |
| ucf101 | `<root>/<Class>/v_<Class>_gXX_cYY.avi` | yes | short side, crop | sorted class folders |
| taichi | frame folders (`taichi/train/<video>/0000000.png`) | yes | short side, crop | 0 |
| synthetic | as ucf101, mp4 files (`flexgen.synthetic`) | no | short side, crop | sorted class folders |

The index (relative paths, frame counts, labels, unreadable files) is cached as JSON: in the root
(`.flexgen-index-<dataset>.json`), or under `~/.cache/flexgen/index/` when the root is read-only, or in
`cache_dir`. A fingerprint of every relative path, size and mtime invalidates it; unchanged files are not probed
again. Unreadable, empty or misplaced items are found while indexing and kept in the index with their reason.
A clip of F frames at stride s needs (F-1)·s+1 frames (`clip_span`); `too_short` is the rule by which the dataset
drops shorter clips and `flexgen data prepare` names them.

Splits: "train" is trainlist01.txt when the root (or `split_dir`) holds UCF-style lists, else every clip (Latte
trains UCF101 on train + test); "test", "all", "trainlist02" or a list file's path select others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flexgen.data.base import DatasetLayoutError, DataWarning, Skipped, VideoDecodeError, describe_error
from flexgen.data.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, frame_number, probe_frames
from flexgen.files import atomic_write_text, walk_visible

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("ucfTrainTestlist",)      # folders of split lists, never class folders
INDEX_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# Presets: where each dataset keeps its clips and how Latte transforms them.


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    layout: str         # "videos": video files anywhere under the root; "classes": <root>/<Class>/<video file>;
                        # "frames": frame folders, every folder holding image files is one clip
    hflip: bool         # Latte flips this dataset at random (config `data.hflip` switches flips off)
    crop: str           # "resize_crop": short side to S, centre crop; "crop_resize": centre square, resize to S
    labelled: bool      # labels are indices into the sorted class folders (else 0)
    expected: str       # the layout in words, for error messages
    num_frames: int = 16        # the training clip of the preset's run configs: F frames ...
    frame_interval: int = 3     # ... at stride s (Latte: 16 at stride 3 for every benchmark)


DATASETS: dict[str, DatasetPreset] = {
    "ffs": DatasetPreset(
        "ffs", "videos", hflip=True, crop="resize_crop", labelled=False,
        expected="video files (.mp4, .avi, ...) anywhere under the root, e.g. <root>/000.avi "
                 "(StyleGAN-V preprocess_ffs: .../train/videos/)"),
    "sky": DatasetPreset(
        "sky", "frames", hflip=False, crop="crop_resize", labelled=False,
        expected="frame folders, one per clip: <root>/<clip>/<name>_<int>.jpg (SkyTimelapse sky_train/)"),
    "ucf101": DatasetPreset(
        "ucf101", "classes", hflip=True, crop="resize_crop", labelled=True,
        expected="class folders of video files: <root>/<Class>/v_<Class>_gXX_cYY.avi (UCF-101/)"),
    "taichi": DatasetPreset(
        "taichi", "frames", hflip=True, crop="resize_crop", labelled=False,
        expected="frame folders, one per clip: <root>/<clip>/<int>.png (Taichi-HD taichi/train/)"),
    "synthetic": DatasetPreset(
        "synthetic", "classes", hflip=False, crop="resize_crop", labelled=True,
        expected="class folders of video files: <root>/<Class>/v_<Class>_gXX_cYY.mp4 (flexgen.synthetic, "
                 "datasets/make_synthetic.py); no flip, which would turn a left-to-right clip into a right-to-left one",
        num_frames=8, frame_interval=2),                        # configs/demo/tiny.yaml
}


# ----------------------------------------------------------------------------------------------------------
# Index records and the clip length rule.


@dataclass(frozen=True)
class Clip:
    path: str           # absolute: a video file or a frame folder
    frames: int         # frame count found while indexing
    label: int          # class index (0 for unlabelled datasets)


def clip_span(num_frames: int, frame_interval: int) -> int:
    """Frames a clip must have for `num_frames` frames at stride `frame_interval`: (F - 1)·s + 1."""
    return (num_frames - 1) * frame_interval + 1


def too_short(clips: Sequence[Clip], num_frames: int, frame_interval: int) -> tuple[list[Clip], list[Skipped]]:
    """(the clips long enough for F = `num_frames` frames at stride s = `frame_interval`, the others with their
    reason): the rule by which `VideoClipDataset` drops clips, and `flexgen data prepare` reports them."""
    span = clip_span(num_frames, frame_interval)
    kept = [c for c in clips if c.frames >= span]
    short = [Skipped(c.path, f"too short: {c.frames} frames, {num_frames} frames at stride {frame_interval} need "
                             f"{span}") for c in clips if c.frames < span]
    return kept, short


# ----------------------------------------------------------------------------------------------------------
# Walking a root: every visible file with its size and mtime (hidden names, such as the index cache, are left out).


@dataclass
class _Listing:
    files: list[tuple[str, int, int]] = field(default_factory=list)   # (relative posix path, size, mtime_ns)
    top_dirs: list[str] = field(default_factory=list)                   # visible folders directly in the root
    leaf_dirs: list[str] = field(default_factory=list)                  # folders without visible sub-folders
    unreadable: list[tuple[str, str]] = field(default_factory=list)     # (relative path, error)

    def fingerprint(self, dataset: str) -> str:
        digest = hashlib.sha256(f"flexgen index v{INDEX_VERSION} {dataset}\n".encode())
        for rel, size, mtime in self.files:
            digest.update(f"f {rel}\t{size}\t{mtime}\n".encode())
        for rel in self.leaf_dirs:
            digest.update(f"d {rel}\n".encode())
        for rel, error in self.unreadable:
            digest.update(f"x {rel}\t{error}\n".encode())
        return digest.hexdigest()


def _walk(root: Path) -> _Listing:
    listing = _Listing()

    def unreadable(error: OSError) -> None:
        rel = Path(error.filename).relative_to(root).as_posix() if error.filename else "?"
        listing.unreadable.append((rel, describe_error(error)))

    for folder, dirnames, filenames in walk_visible(root, onerror=unreadable, followlinks=True):
        rel_dir = folder.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        if rel_dir == ".":
            listing.top_dirs = list(dirnames)
        elif not dirnames:
            listing.leaf_dirs.append(rel_dir)
        for name in filenames:
            try:
                stat = os.stat(folder / name)
            except OSError as e:                                # a broken link: recorded, skipped with its reason
                listing.unreadable.append((prefix + name, describe_error(e)))
                continue
            listing.files.append((prefix + name, stat.st_size, stat.st_mtime_ns))
    return listing


# ----------------------------------------------------------------------------------------------------------
# Scanning a listing into index entries, by layout.


def _kind(rel: str) -> str:
    suffix = Path(rel).suffix.lower()
    return "video" if suffix in VIDEO_EXTENSIONS else "image" if suffix in IMAGE_EXTENSIONS else "other"


def _probe_entry(root: Path, rel: str, size: int, mtime: int, previous: dict[str, dict]) -> dict:
    """{"path", "size", "mtime_ns"} and "frames" or "reason"; an unchanged file keeps its earlier result."""
    old = previous.get(rel)
    if old is not None and old.get("size") == size and old.get("mtime_ns") == mtime:
        return {k: old[k] for k in ("path", "size", "mtime_ns", "frames", "reason") if k in old}
    entry = {"path": rel, "size": size, "mtime_ns": mtime}
    if size == 0:
        entry["reason"] = "empty file"
        return entry
    try:
        frames = probe_frames(root / rel)
    except VideoDecodeError as e:
        entry["reason"] = f"unreadable video ({e})"
        return entry
    if frames > 0:
        entry["frames"] = frames
    else:
        entry["reason"] = "no frames"
    return entry


def _scan(root: Path, preset: DatasetPreset, listing: _Listing, previous: dict[str, dict]) -> dict:
    """The index of a root: {"classes", "clips": [{path, frames, label, ...}], "skipped": [{path, reason}]}."""
    videos = [f for f in listing.files if _kind(f[0]) == "video"]
    images = [f for f in listing.files if _kind(f[0]) == "image"]
    skipped = [{"path": rel, "reason": f"unreadable ({error})"} for rel, error in listing.unreadable]
    expected = f"the {preset.name} layout is {preset.expected}"
    classes: list[str] = []
    clips: list[dict] = []

    if preset.layout == "videos":
        if not videos:
            found = f"found {len(images)} image files instead (a frame-folder dataset?)" if images else \
                "found no video files"
            raise DatasetLayoutError(f"{root}: {found}; {expected}")
        entries = [_probe_entry(root, *video, previous) for video in videos]

    elif preset.layout == "classes":
        classes = sorted(d for d in listing.top_dirs if d not in SPLIT_FOLDERS)
        in_class = [v for v in videos if "/" in v[0] and v[0].split("/")[0] in classes]
        if not classes or not in_class:
            found = (f"found {len(videos)} video files outside class folders" if videos and not classes else
                     f"found {len(images)} image files and no video files" if images else
                     f"found {len(classes)} folders and no video files in them")
            raise DatasetLayoutError(f"{root}: {found}; {expected}")
        placed = {v[0] for v in in_class}
        skipped += [{"path": v[0], "reason": "video file outside a class folder"} for v in videos if v[0] not in placed]
        counts = defaultdict(int)
        for video in in_class:
            counts[video[0].split("/")[0]] += 1
        skipped += [{"path": c, "reason": "class folder without videos (its label index is kept)"}
                    for c in classes if not counts[c]]
        label = {c: i for i, c in enumerate(classes)}
        entries = [_probe_entry(root, *video, previous) for video in in_class]
        for entry in entries:
            entry["label"] = label[entry["path"].split("/")[0]]

    else:                                                       # frame folders
        folders: dict[str, list[str]] = defaultdict(list)
        for rel, _, _ in images:
            folders[rel.rpartition("/")[0] or "."].append(rel.rpartition("/")[2])
        if not folders:
            found = f"found {len(videos)} video files instead" if videos else "found no image files"
            raise DatasetLayoutError(f"{root}: {found}; {expected}")
        entries = []
        for folder, names in sorted(folders.items()):
            unnumbered = [n for n in names if frame_number(n) is None]
            if unnumbered:
                entries.append({"path": folder, "reason": f"frame names must end in an integer, e.g. img_12.jpg; "
                                                          f"found {unnumbered[0]!r}"})
            else:
                entries.append({"path": folder, "frames": len(names)})
        with_videos = {v[0].rpartition("/")[0] for v in videos}
        skipped += [{"path": d, "reason": "empty clip folder (no image files)"}
                    for d in listing.leaf_dirs if d not in folders and d not in with_videos]
        skipped += [{"path": v[0], "reason": "video file in a frame-folder dataset"} for v in videos]

    for entry in entries:
        if "frames" in entry:
            clips.append({"label": 0, **entry})
        else:
            skipped.append(entry)
    return {"classes": classes, "clips": clips, "skipped": sorted(skipped, key=lambda s: s["path"])}


# ----------------------------------------------------------------------------------------------------------
# The cached index.


@dataclass
class ClipIndex:
    root: Path
    dataset: str
    classes: list[str]
    clips: list[Clip]               # every readable clip (any length), in path order
    skipped: list[Skipped]          # unreadable, empty or misplaced items, with reasons
    path: Path | None               # where the index is cached (None if no location was writable)
    reused: bool                    # True when the cached index was still valid


def _index_locations(root: Path, dataset: str, cache_dir: str | Path | None) -> list[Path]:
    key = hashlib.sha256(f"{root}\n{dataset}".encode()).hexdigest()[:16]
    if cache_dir is not None:
        return [Path(cache_dir).expanduser() / f"{dataset}-{key}.json"]
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flexgen" / "index"
    return [root / f".flexgen-index-{dataset}.json", user_cache / f"{dataset}-{key}.json"]


def _write_index(path: Path, data: dict) -> None:
    """Write atomically (a hidden temporary file, then rename), so readers never see half an index."""
    atomic_write_text(path, json.dumps(data))


def index_clips(root: str | Path, dataset: str, cache_dir: str | Path | None = None) -> ClipIndex:
    """Index the clips of `root` with the layout of preset `dataset`, reusing the cached index when the folder is
    unchanged (same relative paths, sizes and mtimes). Raises DatasetLayoutError for a missing or wrong root."""
    preset = DATASETS[dataset]
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} is not a folder; the {dataset} layout is {preset.expected}")
    listing = _walk(root)
    fingerprint = listing.fingerprint(dataset)
    locations = _index_locations(root, dataset, cache_dir)

    data, previous, written = None, {}, None
    for location in locations:
        if not location.is_file():
            continue
        try:
            cached = json.loads(location.read_text())
        except (OSError, ValueError) as e:
            warnings.warn(f"index cache {location} is unreadable ({describe_error(e)}); rebuilding it", DataWarning,
                          stacklevel=2)
            continue
        if cached.get("version") != INDEX_VERSION or cached.get("dataset") != dataset:
            continue                                            # (paths are relative: a moved root keeps its index)
        if cached.get("fingerprint") == fingerprint:
            data, written = cached, location
            break
        if not previous:                                        # unchanged files keep their frame counts
            previous = {e["path"]: e for e in cached.get("clips", []) + cached.get("skipped", [])}

    reused = data is not None
    if data is None:
        data = {"version": INDEX_VERSION, "dataset": dataset, "root": str(root), "fingerprint": fingerprint,
                **_scan(root, preset, listing, previous)}
        for location in locations:
            try:
                _write_index(location, data)
            except OSError as e:                                # read-only root: try the next location
                log.info("cannot write the index cache %s (%s)", location, describe_error(e))
                continue
            written = location
            break
        else:
            warnings.warn(f"the index of {root} could not be cached in {', '.join(map(str, locations))}; it will "
                          "be rebuilt next time", DataWarning, stacklevel=2)

    return ClipIndex(
        root=root, dataset=dataset, classes=list(data["classes"]),
        clips=[Clip(str(root / c["path"]), int(c["frames"]), int(c["label"])) for c in data["clips"]],
        skipped=[Skipped(str(root / s["path"]), s["reason"]) for s in data["skipped"]],
        path=written, reused=reused)


# ----------------------------------------------------------------------------------------------------------
# Split lists (UCF101 `ucfTrainTestlist/trainlist01.txt` style: `Class/v_Class_g08_c01.avi [label]`).


def find_split_list(root: str | Path, split: str, split_dir: str | Path | None = None) -> Path | None:
    """The list file of `split`: a path to a .txt file, or a name looked up in `split_dir` (default: the root and
    root/ucfTrainTestlist). "train" / "test" mean trainlist01.txt / testlist01.txt (or train.txt / test.txt).
    None for "all", or when no file is found.

    Lists beside the root (the official unpacking: UCF-101/ next to ucfTrainTestlist/) are not searched: there,
    "train" keeps every clip, Latte's UCF101 protocol (train + test, as StyleGAN-V and DIGAN). Pass `split_dir`,
    or put the lists in the root, to train on trainlist01 only."""
    if split == "all":
        return None
    if split.endswith(".txt") and Path(split).expanduser().is_file():
        return Path(split).expanduser()
    root = Path(root)
    names = [f"{split}list01.txt", f"{split}.txt"] if split in ("train", "test") else [f"{split}.txt", split]
    folders = [Path(split_dir).expanduser()] if split_dir is not None else [root, root / SPLIT_FOLDERS[0]]
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def read_split_list(path: str | Path) -> list[str]:
    """The relative video paths of a split list (the first field of each non-empty line)."""
    lines = Path(path).read_text().splitlines()
    return [line.split()[0].replace("\\", "/").removeprefix("./") for line in lines if line.strip()]
