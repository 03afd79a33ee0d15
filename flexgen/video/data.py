"""Video clip datasets: the four Latte benchmarks and a synthetic UCF-style set, read from their real layouts.

    dataset = build_dataset(cfg.data, split="train", seed=0)
    item = dataset[0]   # {"video": (F, 3, S, S) float32 in [-1, 1], "label": int, "path": str}

Presets (`DATASETS`, after Latte's `datasets/` folder, Ma et al. 2024):

| name | layout on disk | flip | spatial transform | labels |
|---|---|---|---|---|
| ffs | video files anywhere under the root (`preprocess_ffs/train/videos`) | yes | short side, crop | 0 |
| sky | frame folders: every folder holding image files is a clip (`sky_train`) | no | crop, resize | 0 |
| ucf101 | `<root>/<Class>/v_<Class>_gXX_cYY.avi` | yes | short side, crop | sorted class folders |
| taichi | frame folders (`taichi/train/<video>/0000000.png`) | yes | short side, crop | 0 |
| synthetic | as ucf101, mp4 files (`datasets/make_synthetic.py`) | no | short side, crop | sorted class folders |

Frames inside a folder are ordered by the integer that ends their name (`img_2.jpg` before `img_10.jpg`), Latte's
key. Video files are decoded with decord, and with PyAV when decord is missing or cannot read a file.

Clip sampling (Latte's `TemporalRandomCrop`, made exact):
- A clip of F frames at stride s needs (F-1)·s+1 frames. The start is drawn uniformly among every start at which
  the clip fits, and the frames are start + k·s. Latte's video-file loaders spread F indices with np.linspace
  over an F·s window (stride ≈3.13, irregular); its frame-folder loaders use the exact stride. We use the exact
  stride for every layout, so a clip covers the same time however it is stored.
- Shorter clips are dropped when the dataset is built (Latte drops Sky clips of ≤ F·s frames and asserts ≥ F
  frames for videos), named in a warning and listed in `dataset.skipped`.
- Randomness of item i in epoch e comes from a numpy Generator seeded with (seed, e, i, ...): results do not
  depend on the worker or the order of access. Call `set_epoch(e)` to get new clips. (One exception: a clip that
  fails to decode is not used again by that process, so a clip broken in only some frames can make items differ
  between workers that did and did not hit the broken part.)
- Random horizontal flip of the whole clip where the preset flips and `hflip` is on; values (x / 127.5 - 1).
- Splits: "train" is trainlist01.txt when the root (or `split_dir`) holds UCF-style lists, else every clip (Latte
  trains UCF101 on train + test); "test", "all", "trainlist02" or a list file's path select others.
- Joint image-video training (`num_images` > 0): still frames of other clips (random clip, random frame, same
  transform, own flip) are appended after the video frames, with their labels in "image_labels". Unlike Latte's
  `*_img` sets, an epoch is still one pass over the clips, not over all frames.

Bad input never ends an epoch. Unreadable, empty or too short clips are found while indexing (frame counts are
probed once) and skipped; a clip that fails later, while decoding, is replaced by the next clip of the index and
recorded. Every skipped item is named in a `DataWarning` and listed, with its reason, in `dataset.skipped`.
(With DataLoader workers, decode-time failures are recorded in the worker's copy of the dataset.)

The index (relative paths, frame counts, labels, unreadable files) is cached as JSON: in the root
(`.flexgen-index-<dataset>.json`), or under `~/.cache/flexgen/index/` when the root is read-only, or in
`cache_dir`. A fingerprint of every relative path, size and mtime invalidates it; unchanged files are not probed
again.

`prepare` checks a downloaded dataset and writes the frame folders of FVD reference sets
(`dst/<video>/<%06d>.jpg`, depth exactly 2); `add_prepare_arguments` / `prepare_main` are its command line,
`flexgen data prepare <dataset> --src DIR --dst DIR --size 256`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from flexgen.config import DataConfig

try:
    import decord
except ImportError:         # optional: PyAV decodes every video when decord is not installed
    decord = None

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLIT_FOLDERS = ("ucfTrainTestlist",)      # folders of split lists, never class folders
INDEX_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# Errors and warnings.


class DatasetLayoutError(ValueError):
    """A dataset root that does not have the layout its preset expects (or does not exist)."""


class VideoDecodeError(RuntimeError):
    """A clip that none of the decoders could read."""


class DataWarning(UserWarning):
    """A clip or file skipped by the data layer (the message names it and says why)."""


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
        expected="class folders of video files: <root>/<Class>/v_<Class>_gXX_cYY.mp4 (datasets/make_synthetic.py); "
                 "no flip, which would turn a left-to-right clip into a right-to-left one"),
}


# ----------------------------------------------------------------------------------------------------------
# Index records.


@dataclass(frozen=True)
class Clip:
    path: str           # absolute: a video file or a frame folder
    frames: int         # frame count found while indexing
    label: int          # class index (0 for unlabelled datasets)


@dataclass(frozen=True)
class Skipped:
    path: str           # the file or folder left out
    reason: str


# ----------------------------------------------------------------------------------------------------------
# Video files: frame counts and frames, decord first, PyAV as the fallback.


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _as_numpy(frames) -> np.ndarray:
    """decord's NDArray (native bridge) or a torch tensor (torch bridge) -> numpy."""
    return frames.asnumpy() if hasattr(frames, "asnumpy") else np.asarray(frames)


def _decord_reader(path: str | Path):
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _pyav_count(path: str | Path) -> int:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        if next(container.decode(stream), None) is None:         # the first frame must decode
            raise VideoDecodeError("no decodable frame")
        if stream.frames > 0:
            return stream.frames
        container.seek(0)
        return sum(1 for packet in container.demux(stream) if packet.size)


def _pyav_read(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    wanted, last, got = set(indices), max(indices), {}
    decoded = 0
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            decoded = i + 1
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if len(got) < len(wanted):
        raise VideoDecodeError(f"the video ended after {decoded} frames, frame {last} was needed")
    return np.stack([got[i] for i in indices])


def _decord_read(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    reader = _decord_reader(path)
    if max(indices) >= len(reader):
        raise VideoDecodeError(f"frame {max(indices)} was needed, decord finds {len(reader)} frames")
    return _as_numpy(reader.get_batch(list(indices)))


def probe_frames(path: str | Path) -> int:
    """Frame count of a video file (decord; PyAV when decord is missing or cannot open it)."""
    errors = []
    if decord is not None:
        try:
            return len(_decord_reader(path))
        except Exception as e:                                  # DECORDError, RuntimeError: try PyAV
            errors.append(f"decord: {_describe(e)}")
    try:
        return _pyav_count(path)
    except Exception as e:                                      # av.error.*, StopIteration, VideoDecodeError
        errors.append(f"PyAV: {_describe(e)}")
    raise VideoDecodeError("; ".join(errors))


def read_video(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Frames `indices` of a video file as uint8 (len(indices), H, W, 3); decord, then PyAV."""
    errors = []
    for name, reader in (("decord", _decord_read if decord is not None else None), ("PyAV", _pyav_read)):
        if reader is None:
            continue
        try:
            frames = reader(path, indices)
        except Exception as e:                                  # try the next decoder, then report both
            errors.append(f"{name}: {_describe(e)}")
            continue
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            errors.append(f"{name}: got frames of shape {tuple(frames.shape)}")
            continue
        return frames
    raise VideoDecodeError("; ".join(errors))


def iter_video(path: str | Path, chunk: int = 32) -> Iterator[np.ndarray]:
    """Every frame of a video file in order, uint8 (H, W, 3); PyAV when decord is missing or cannot open it."""
    reader = None
    if decord is not None:
        try:
            reader = _decord_reader(path)
        except Exception as e:                                  # decode with PyAV instead
            log.info("decord cannot open %s (%s); decoding with PyAV", path, _describe(e))
    if reader is not None:
        for begin in range(0, len(reader), chunk):
            yield from _as_numpy(reader.get_batch(list(range(begin, min(begin + chunk, len(reader))))))
        return
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


# ----------------------------------------------------------------------------------------------------------
# Frame folders: Latte's integer sort key.

_TRAILING_INT = re.compile(r"(\d+)$")


def frame_number(name: str) -> int | None:
    """The integer that ends a frame's stem ('img_10.jpg' -> 10, '0000007.png' -> 7), or None."""
    match = _TRAILING_INT.search(Path(name).stem)
    return int(match.group(1)) if match else None


def list_frames(folder: str | Path) -> list[Path]:
    """The image files of a frame folder, ordered by frame number (not by name: img_2 < img_10)."""
    folder = Path(folder)
    names = [n for n in os.listdir(folder) if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    unnumbered = [n for n in names if frame_number(n) is None]
    if unnumbered:
        raise VideoDecodeError(f"frame names must end in an integer, e.g. img_12.jpg; found {unnumbered[0]!r}")
    return [folder / n for n in sorted(names, key=lambda n: (frame_number(n), n))]


def read_frame_files(paths: Sequence[Path]) -> np.ndarray:
    """Image files as uint8 (len(paths), H, W, 3)."""
    frames = []
    for path in paths:
        with Image.open(path) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


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
        listing.unreadable.append((rel, _describe(error)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        if rel_dir == ".":
            listing.top_dirs = list(dirnames)
        elif not dirnames:
            listing.leaf_dirs.append(rel_dir)
        for name in sorted(f for f in filenames if not f.startswith(".")):
            try:
                stat = os.stat(os.path.join(dirpath, name))
            except OSError as e:                                # a broken link: recorded, skipped with its reason
                listing.unreadable.append((prefix + name, _describe(e)))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


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
            warnings.warn(f"index cache {location} is unreadable ({_describe(e)}); rebuilding it", DataWarning,
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
                log.info("cannot write the index cache %s (%s)", location, _describe(e))
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


class VideoClipDataset(Dataset):
    """Clips of one preset's layout under `root`; see the module docstring for sampling and bad-input rules.

    Attributes: `clips` (usable clips), `classes` (sorted class folders; empty when unlabelled), `skipped`
    (every item left out, with its reason), `index_path` / `index_reused` (the index cache)."""

    def __init__(self, root: str | Path, dataset: str, *, num_frames: int = 16, frame_interval: int = 3,
                 image_size: int = 256, hflip: bool = True, num_images: int = 0, split: str = "train",
                 seed: int = 0, cache_dir: str | Path | None = None, split_dir: str | Path | None = None):
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        for name, value, least in (("num_frames", num_frames, 1), ("frame_interval", frame_interval, 1),
                                   ("image_size", image_size, 1), ("num_images", num_images, 0), ("seed", seed, 0)):
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        self.preset = DATASETS[dataset]
        self.num_frames, self.frame_interval = num_frames, frame_interval
        self.span = (num_frames - 1) * frame_interval + 1        # frames a clip must have
        self.image_size, self.num_images, self.seed, self.split = image_size, num_images, seed, split
        self.flip = hflip and self.preset.hflip
        self.epoch = 0

        index = index_clips(root, dataset, cache_dir)
        self.root, self.classes = index.root, index.classes
        self.index_path, self.index_reused = index.path, index.reused
        self.skipped: list[Skipped] = list(index.skipped)
        clips = self._select_split(index, split, split_dir)
        self.clips: list[Clip] = []
        for clip in clips:
            if clip.frames < self.span:
                self.skipped.append(Skipped(clip.path, f"too short: {clip.frames} frames, {num_frames} frames at "
                                                       f"stride {frame_interval} need {self.span}"))
            else:
                self.clips.append(clip)
        self._failed: set[int] = set()                          # clips that failed to decode in this process

        if self.skipped:
            lines = "\n".join(f"  {s.path}: {s.reason}" for s in self.skipped)
            warnings.warn(f"{dataset} {self.root}: skipped {len(self.skipped)} item(s), kept {len(self.clips)} "
                          f"clips:\n{lines}", DataWarning, stacklevel=2)
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

    def set_epoch(self, epoch: int) -> None:
        """New random clips, flips and still images for every item (same epoch + seed = same items)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, stream: int, attempt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, stream, attempt])

    def _decode(self, clip: Clip, indices: Sequence[int]) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) of a clip; raises on any failure."""
        if self.preset.layout != "frames":
            return read_video(clip.path, indices)
        paths = list_frames(clip.path)
        if max(indices) >= len(paths):
            raise VideoDecodeError(f"frame {max(indices)} was needed, the folder has {len(paths)} frames")
        return read_frame_files([paths[i] for i in indices])

    def _fail(self, j: int, error: Exception) -> None:
        self._failed.add(j)
        skipped = Skipped(self.clips[j].path, f"decoding failed ({_describe(error)})")
        self.skipped.append(skipped)
        warnings.warn(f"{skipped.path}: {skipped.reason}; another clip is used instead", DataWarning, stacklevel=3)

    def _read_clip(self, index: int) -> tuple[torch.Tensor, int]:
        """(F, 3, S, S) of item `index` and the index of the clip it came from (the next readable clip when
        `index` fails; the draws depend only on (seed, epoch, index, attempt), not on earlier failures)."""
        n = len(self.clips)
        for attempt in range(n):
            j = (index + attempt) % n
            if j in self._failed:
                continue
            rng = self._rng(index, 0, attempt)
            clip = self.clips[j]
            start = int(rng.integers(0, clip.frames - self.span + 1))
            flip = bool(rng.random() < 0.5) and self.flip
            indices = list(range(start, start + self.span, self.frame_interval))        # F indices
            try:
                frames = self._decode(clip, indices)
            except Exception as e:                              # counted, warned, replaced by the next clip
                self._fail(j, e)
                continue
            return transform_frames(frames, self.image_size, self.preset.crop, flip), j
        raise VideoDecodeError(f"none of the {n} clips of {self.root} could be decoded; see dataset.skipped")

    def _read_images(self, index: int, exclude: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_images` still frames of random other clips: (I, 3, S, S) and their labels (I,)."""
        rng = self._rng(index, 1)
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
                self._fail(j, e)
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
                            seed=seed, cache_dir=cache_dir, split_dir=split_dir)


# ----------------------------------------------------------------------------------------------------------
# Preparation: check and index a downloaded dataset; write FVD reference frame folders.


@dataclass
class PrepareReport:
    dataset: str
    root: str
    clips: int                      # usable clips in the split
    classes: int
    frames: int                     # frames in those clips
    skipped: list[Skipped]
    dst: str | None = None
    videos_written: int = 0
    frames_written: int = 0


def _convert_clip(job: tuple[str, bool, str, int, int]) -> tuple[int, str | None]:
    """Write one clip as dst/<video>/000000.jpg, ...: centre square crop of the short side, LANCZOS resize, JPEG
    (the order and rounding of Latte's tools/convert_videos_to_frames.py). Returns (frames written, None) or
    (0, reason); a failed clip's folder is removed so the reference set stays clean."""
    source, is_folder, out_dir, size, quality = job
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    count = 0
    try:
        frames = (read_frame_files([p])[0] for p in list_frames(source)) if is_folder else iter_video(source)
        for count, frame in enumerate(frames, start=1):
            image = Image.fromarray(frame)
            side = min(image.size)
            left, top = int(round((image.width - side) / 2.0)), int(round((image.height - side) / 2.0))
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
            image.save(out / f"{count - 1:06d}.jpg", quality=quality)
    except Exception as e:                                      # reported by prepare, folder removed
        shutil.rmtree(out, ignore_errors=True)
        return 0, f"conversion failed after {count} frames ({_describe(e)})"
    if count == 0:
        shutil.rmtree(out, ignore_errors=True)
        return 0, "no frames decoded"
    return count, None


def _video_names(clips: Sequence[Clip], root: Path) -> list[str]:
    """One folder name per clip: the file (or folder) stem, or its relative path joined by "_" on a collision."""
    stems = [Path(c.path).stem if Path(c.path) != root else root.name for c in clips]
    repeated = {s for s in stems if stems.count(s) > 1}
    names = []
    for clip, stem in zip(clips, stems, strict=True):
        rel = Path(clip.path).relative_to(root).with_suffix("").as_posix()
        names.append(rel.replace("/", "_") if stem in repeated else stem)
    return names


def prepare(dataset: str, src: str | Path, dst: str | Path | None = None, *, size: int = 256, split: str = "train",
            quality: int = 95, max_videos: int | None = None, seed: int = 0, workers: int = 1,
            cache_dir: str | Path | None = None, split_dir: str | Path | None = None,
            out: Callable[[str], None] = print) -> PrepareReport:
    """Check and index `src` with the layout of `dataset` (counts, skipped files and reasons are printed through
    `out`). With `dst`, also write every clip of the split (or `max_videos` of them, drawn with `seed`) as an FVD
    reference frame folder: dst/<video>/<%06d>.jpg, centre-cropped and resized to size × size, JPEG `quality`
    (Latte's tools/convert_videos_to_frames.py: pass the split the model was trained on)."""
    with warnings.catch_warnings():                             # the report below names every skipped item
        warnings.simplefilter("ignore", DataWarning)
        data = VideoClipDataset(src, dataset, num_frames=1, frame_interval=1, image_size=size, hflip=False,
                                split=split, seed=seed, cache_dir=cache_dir, split_dir=split_dir)
    counts = [c.frames for c in data.clips]
    report = PrepareReport(dataset, str(data.root), len(data.clips), len(data.classes), sum(counts),
                           list(data.skipped))
    cached = f"index {data.index_path} ({'reused' if data.index_reused else 'built'})" if data.index_path else \
        "index not cached"
    out(f"{dataset} {data.root}: {len(data.clips)} clips, {len(data.classes)} classes, {sum(counts)} frames "
        f"(per clip {min(counts)}..{max(counts)}, median {int(np.median(counts))}); split {split!r}; {cached}")
    out(f"skipped {len(data.skipped)} item(s)" + "".join(f"\n  {s.path}: {s.reason}" for s in data.skipped))
    if dst is None:
        return report

    clips = list(data.clips)
    if max_videos is not None and max_videos < len(clips):
        chosen = np.random.default_rng(seed).choice(len(clips), size=max_videos, replace=False)
        clips = [clips[i] for i in sorted(chosen)]
    dst = Path(dst).expanduser().absolute()
    dst.mkdir(parents=True, exist_ok=True)
    is_folder = data.preset.layout == "frames"
    jobs = [(c.path, is_folder, str(dst / name), size, quality) for c, name in zip(clips, _video_names(clips,
                                                                                                     data.root),
                                                                                   strict=True)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_convert_clip, jobs, chunksize=4))
    else:
        results = [_convert_clip(job) for job in jobs]
    for clip, (written, reason) in zip(clips, results, strict=True):
        if reason is None:
            report.videos_written += 1
            report.frames_written += written
        else:
            report.skipped.append(Skipped(clip.path, reason))
            warnings.warn(f"{clip.path}: {reason}", DataWarning, stacklevel=2)
            out(f"  {clip.path}: {reason}")
    report.dst = str(dst)
    out(f"wrote {report.videos_written} videos, {report.frames_written} frames ({size}x{size} JPEG q{quality}) to "
        f"{dst}/<video>/<%06d>.jpg")
    stray = [p for p in dst.iterdir() if not p.is_dir() or any(q.is_dir() for q in p.iterdir())]
    if stray:
        warnings.warn(f"{dst} is not a depth-2 frame-folder tree (the FVD tool will refuse it): "
                      f"{', '.join(str(p) for p in stray[:5])}", DataWarning, stacklevel=2)
    return report


# ----------------------------------------------------------------------------------------------------------
# Command line: `flexgen data prepare <dataset> --src DIR [--dst DIR] [--size 256]` (wired in flexgen/cli.py).


def add_prepare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of `flexgen data prepare` to `parser` (returned)."""
    parser.add_argument("dataset", choices=list(DATASETS), help="dataset preset (its on-disk layout)")
    parser.add_argument("--src", required=True, help="the downloaded dataset folder (see datasets/README.md)")
    parser.add_argument("--dst", default=None, help="write FVD reference frame folders DST/<video>/<%%06d>.jpg; "
                        "without it, only check and index --src")
    parser.add_argument("--size", type=int, default=256, help="frame side after centre crop + resize")
    parser.add_argument("--split", default="train", help="train | test | all | a list name (trainlist02) or a .txt "
                        "file; use the split the model was trained on (UCF101 without lists: all clips)")
    parser.add_argument("--split-dir", default=None, help="folder of the split lists (default: --src and "
                        "--src/ucfTrainTestlist; lists beside --src are used only when named here)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--max-videos", type=int, default=None, help="convert a random subset of this many clips")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-videos subset")
    parser.add_argument("--workers", type=int, default=1, help="conversion processes")
    parser.add_argument("--cache-dir", default=None, help="where to cache the index (default: in --src, or "
                        "~/.cache/flexgen/index when --src is read-only)")
    return parser


def prepare_main(args: argparse.Namespace) -> PrepareReport:
    """Run `prepare` from parsed `add_prepare_arguments` arguments."""
    if args.size < 1 or not 1 <= args.quality <= 100 or args.workers < 1:
        raise ValueError(f"--size must be positive, --quality in 1..100 and --workers ≥ 1 (got {args.size}, "
                         f"{args.quality}, {args.workers})")
    return prepare(args.dataset, args.src, args.dst, size=args.size, split=args.split, quality=args.quality,
                   max_videos=args.max_videos, seed=args.seed, workers=args.workers, cache_dir=args.cache_dir,
                   split_dir=args.split_dir)
