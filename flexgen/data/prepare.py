"""The `flexgen data` tools: `prepare` checks and indexes a downloaded video dataset and writes FVD reference frame
folders; `cache_text` fills the T5 embedding cache of an image–caption folder.

    flexgen data prepare <dataset> --src DIR [--dst DIR] [--size 256]    (add_prepare_arguments / prepare_main)
    flexgen data cache-text --root DIR --text-encoder DIR --cache DIR    (add_cache_text_arguments / cache_text_main)

`prepare` reports usable clips, skipped items with reasons, and the clips too short for the preset's training clip
(F frames at stride s need (F-1)·s+1 frames; `--num-frames` / `--frame-interval` to match another run), named by the
same rule the training loader drops them with (`flexgen.data.video_index.too_short`). Reference frame folders are
`dst/<video>/<%06d>.jpg` (depth exactly 2): every clip of the split, whatever its length.
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flexgen.arguments import COUNT, POSITIVE
from flexgen.data.base import DataWarning, Skipped, describe_error
from flexgen.data.captions import CACHE_DTYPES, MANIFEST_NAME, NULL_CAPTION, CaptionDataset, TextEmbeddingCache
from flexgen.data.media import iter_video, list_frames, read_frame_files
from flexgen.data.video import VideoClipDataset
from flexgen.data.video_index import DATASETS, Clip, clip_span, too_short
from flexgen.files import atomic_directory
from flexgen.text_encoder import MAX_LENGTH, encoder_identity, load_text_encoder

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
    num_frames: int = 16            # the training clip the lengths were checked against: F frames ...
    frame_interval: int = 3         # ... at stride s
    too_short: list[Skipped] = field(default_factory=list)     # clips the training loader would drop (still written)


class _NoFrames(Exception):
    """A clip that decoded to no frames (its folder is not written)."""


def _convert_clip(job: tuple[str, bool, str, int, int]) -> tuple[int, str | None]:
    """Write one clip as dst/<video>/000000.jpg, ...: centre square crop of the short side, LANCZOS resize, JPEG
    (the order and rounding of Latte's tools/convert_videos_to_frames.py). Returns (frames written, None) or
    (0, reason). The frames go into a hidden folder beside dst/<video>, renamed into place (replacing an earlier
    one) when the clip is complete (`flexgen.files.atomic_directory`): a killed conversion leaves no partial
    frame folder for FVD to read as a video. A failed clip's folder (an earlier one too) is removed so the
    reference set stays clean."""
    source, is_folder, out_dir, size, quality = job
    out = Path(out_dir)
    count = 0
    try:
        with atomic_directory(out) as tmp:
            frames = (read_frame_files([p])[0] for p in list_frames(source)) if is_folder else iter_video(source)
            for count, frame in enumerate(frames, start=1):
                image = Image.fromarray(frame)
                side = min(image.size)
                left, top = int(round((image.width - side) / 2.0)), int(round((image.height - side) / 2.0))
                image = image.crop((left, top, left + side, top + side)).resize((size, size),
                                                                                Image.Resampling.LANCZOS)
                image.save(tmp / f"{count - 1:06d}.jpg", quality=quality)
            if count == 0:
                raise _NoFrames
    except _NoFrames:
        shutil.rmtree(out, ignore_errors=True)
        return 0, "no frames decoded"
    except Exception as e:                                      # reported by prepare, folder removed
        shutil.rmtree(out, ignore_errors=True)
        return 0, f"conversion failed after {count} frames ({describe_error(e)})"
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


def _too_short_summary(report: PrepareReport, root: Path) -> str:
    """"N clip(s) too short for training (F frames at stride s need n): name (k frames), ..." (relative to the
    root): the one place the report names them."""
    span = clip_span(report.num_frames, report.frame_interval)
    names = ", ".join(f"{Path(s.path).relative_to(root).as_posix() if Path(s.path) != root else root.name} "
                      f"({s.reason.split(': ', 1)[-1].split(',')[0]})" for s in report.too_short)
    return (f"{len(report.too_short)} clip(s) too short for training ({report.num_frames} frames at stride "
            f"{report.frame_interval} need {span}; the training loader drops them)" + (f": {names}" if names else ""))


def prepare(dataset: str, src: str | Path, dst: str | Path | None = None, *, size: int = 256, split: str = "train",
            quality: int = 95, max_videos: int | None = None, seed: int = 0, workers: int = 1,
            cache_dir: str | Path | None = None, split_dir: str | Path | None = None,
            num_frames: int | None = None, frame_interval: int | None = None,
            out: Callable[[str], None] = print) -> PrepareReport:
    """Check and index `src` with the layout of `dataset` (counts, skipped files and reasons are printed through
    `out`), and name the clips shorter than the training clip, `num_frames` frames at stride `frame_interval`
    (default: the preset's), as the training loader would drop them (listed in `report.too_short` and in the
    closing summary). With `dst`, also write every clip of the split (or `max_videos` of them, drawn with `seed`),
    short ones included, as an FVD reference frame folder: dst/<video>/<%06d>.jpg, centre-cropped and resized to
    size × size, JPEG `quality` (Latte's tools/convert_videos_to_frames.py: pass the split the model was trained
    on)."""
    if any(value is not None and value < 1 for value in (num_frames, frame_interval)):
        raise ValueError(f"num_frames and frame_interval must be at least 1, got {num_frames} and {frame_interval}")
    with warnings.catch_warnings():                             # the report below names every skipped item
        warnings.simplefilter("ignore", DataWarning)
        data = VideoClipDataset(src, dataset, num_frames=1, frame_interval=1, image_size=size, hflip=False,
                                split=split, seed=seed, cache_dir=cache_dir, split_dir=split_dir)
    num_frames = data.preset.num_frames if num_frames is None else num_frames
    frame_interval = data.preset.frame_interval if frame_interval is None else frame_interval
    counts = [c.frames for c in data.clips]
    report = PrepareReport(dataset, str(data.root), len(data.clips), len(data.classes), sum(counts),
                           list(data.skipped), num_frames=num_frames, frame_interval=frame_interval,
                           too_short=too_short(data.clips, num_frames, frame_interval)[1])
    cached = f"index {data.index_path} ({'reused' if data.index_reused else 'built'})" if data.index_path else \
        "index not cached"
    out(f"{dataset} {data.root}: {len(data.clips)} clips, {len(data.classes)} classes, {sum(counts)} frames "
        f"(per clip {min(counts)}..{max(counts)}, median {int(np.median(counts))}); split {split!r}; {cached}")
    out(f"skipped {len(data.skipped)} item(s)" + "".join(f"\n  {s.path}: {s.reason}" for s in data.skipped))
    if dst is None:
        out(_too_short_summary(report, data.root))
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
    out(_too_short_summary(report, data.root))
    return report


# ----------------------------------------------------------------------------------------------------------
# Command line: `flexgen data prepare <dataset> --src DIR [--dst DIR] [--size 256]` (wired in flexgen/cli.py).


def add_prepare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of `flexgen data prepare` to `parser` (returned)."""
    parser.add_argument("dataset", choices=list(DATASETS), help="dataset preset (its on-disk layout)")
    parser.add_argument("--src", required=True, help="the downloaded dataset folder (see datasets/README.md)")
    parser.add_argument("--dst", default=None, help="write FVD reference frame folders DST/<video>/<%%06d>.jpg; "
                        "without it, only check and index --src")
    parser.add_argument("--size", type=POSITIVE, default=256, help="frame side after centre crop + resize")
    parser.add_argument("--split", default="train", help="train | test | all | a list name (trainlist02) or a .txt "
                        "file; use the split the model was trained on (UCF101 without lists: all clips)")
    parser.add_argument("--split-dir", default=None, help="folder of the split lists (default: --src and "
                        "--src/ucfTrainTestlist; lists beside --src are used only when named here)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--max-videos", type=POSITIVE, default=None, help="convert a random subset of this many clips")
    parser.add_argument("--seed", type=COUNT, default=0, help="seed of the --max-videos subset")
    parser.add_argument("--num-frames", type=POSITIVE, default=None, help="frames of the training clip whose length "
                        "is checked (default: the preset's, 16 for the Latte benchmarks)")
    parser.add_argument("--frame-interval", type=POSITIVE, default=None, help="stride of the training clip (default: "
                        "the preset's, 3 for the Latte benchmarks)")
    parser.add_argument("--workers", type=POSITIVE, default=1, help="conversion processes")
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
                   split_dir=args.split_dir, num_frames=args.num_frames, frame_interval=args.frame_interval)


# ----------------------------------------------------------------------------------------------------------
# Filling the cache for a dataset, and its command line (`flexgen data cache-text`, wired in flexgen/cli.py).


@dataclass
class CacheTextReport:
    root: str
    items: int              # usable image–caption pairs
    skipped: int
    captions: int           # distinct preprocessed captions, the null caption included
    written: int            # entries encoded and written now
    cached: int             # entries that were already there
    cache_dir: str
    encoder_id: str


def cache_text(root: str | Path, text_encoder: str | Path, cache_dir: str | Path, *, manifest: str | Path = "",
               max_length: int = MAX_LENGTH, batch_size: int = 16, device: str = "cpu",
               dtype: torch.dtype = torch.float32, cache_dtype: torch.dtype | str = torch.float16,
               progress: bool = True, out: Callable[[str], None] = print) -> CacheTextReport:
    """Encode every caption of the dataset at `root` (and "") with the T5 encoder at `text_encoder` (a pipeline or
    T5 folder) into `cache_dir`, skipping captions already cached. Counts are printed through `out`."""
    with warnings.catch_warnings():                             # the report below names every skipped item
        warnings.simplefilter("ignore", DataWarning)
        data = CaptionDataset(root, manifest=manifest)
    encoder_id = encoder_identity(text_encoder)
    cache = TextEmbeddingCache(cache_dir, encoder_id, max_length, cache_dtype)
    captions = [NULL_CAPTION, *data.captions]
    distinct = len({cache.key(c) for c in captions})
    source = f"manifest {data.manifest}" if data.manifest is not None else "caption files"
    out(f"{data.root} ({source}): {len(data.items)} items, {distinct} distinct captions with \"\"; "
        f"skipped {len(data.skipped)} item(s)" + "".join(f"\n  {s.path}: {s.reason}" for s in data.skipped))
    written = 0
    if cache.missing(captions):
        tokenizer, encoder = load_text_encoder(text_encoder, device=device, dtype=dtype)
        written = cache.fill(captions, tokenizer, encoder, batch_size=batch_size, device=device, progress=progress)
    out(f"wrote {written} embedding(s), {distinct - written} already cached, in {cache.cache_dir} (encoder "
        f"{encoder_id}, max_length {max_length}, {str(cache.dtype).removeprefix('torch.')})")
    return CacheTextReport(str(data.root), len(data.items), len(data.skipped), distinct, written, distinct - written,
                           str(cache.cache_dir), encoder_id)


ENCODER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_cache_text_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of `flexgen data cache-text` to `parser` (returned)."""
    parser.add_argument("--root", required=True, help="the image–caption folder (images with same-stem .txt "
                        f"captions, or a {MANIFEST_NAME} manifest in it)")
    parser.add_argument("--manifest", default="", help="a JSONL manifest ({\"file_name\": ..., \"text\": ...} per "
                        f"line; paths relative to --root); default: --root/{MANIFEST_NAME} when present")
    parser.add_argument("--text-encoder", required=True, help="a PixArt-α pipeline folder (text_encoder/ + "
                        "tokenizer/) or a T5 encoder folder with its tokenizer files")
    parser.add_argument("--cache", required=True, help="the cache folder (one file per distinct caption)")
    parser.add_argument("--max-length", type=POSITIVE, default=MAX_LENGTH, help="T5 tokens per caption (PixArt-α: 120)")
    parser.add_argument("--batch-size", type=POSITIVE, default=16, help="captions per encoder forward")
    parser.add_argument("--device", default="cpu", help="where the encoder runs (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--dtype", choices=list(ENCODER_DTYPES), default="float32", help="encoder precision")
    parser.add_argument("--cache-dtype", choices=list(CACHE_DTYPES), default="float16",
                        help="precision of the stored embeddings")
    return parser


def cache_text_main(args: argparse.Namespace) -> CacheTextReport:
    """Run `cache_text` from parsed `add_cache_text_arguments` arguments."""
    if args.max_length < 1 or args.batch_size < 1:
        raise ValueError(f"--max-length and --batch-size must be positive (got {args.max_length}, "
                         f"{args.batch_size})")
    return cache_text(args.root, args.text_encoder, args.cache, manifest=args.manifest, max_length=args.max_length,
                      batch_size=args.batch_size, device=args.device, dtype=ENCODER_DTYPES[args.dtype],
                      cache_dtype=args.cache_dtype)
