"""Reading and writing media: video files (decord first, PyAV as the fallback), frame folders, mp4s and PNG grids.

Reading: `read_video(path, indices)` gives chosen frames (decord, then PyAV when decord is missing or cannot read
the file), `read_video(path)` every frame (PyAV, the library `write_video` encodes with), `probe_frames` a frame
count, `iter_video` every frame in order. Frame folders are ordered by the integer that ends a frame's name
(`img_2.jpg` before `img_10.jpg`), Latte's key. Frames are uint8 RGB (F, H, W, 3).

Writing (atomic: a hidden temporary file renamed into place, `flexgen.files.atomic_write`): videos are mp4 (or
another container named by the suffix). The codec is H.264 (libx264) when this PyAV build has it, else MPEG-4 part 2:
- H.264 at constant rate factor 5, which is what Latte's `imageio.mimwrite(..., quality=9)` asks ffmpeg for
  (imageio-ffmpeg maps quality q to crf int((1 - q/10) · 51)). Pixel format yuv420p, the format every player
  and video reader understands, when both sides are even; x264 cannot subsample odd sizes to 4:2:0, so frames
  with an odd side are stored as yuv444p (H.264 High 4:4:4) at their exact size: no padding, no resizing.
- MPEG-4 part 2 (fallback): yuv420p (its only format; it accepts odd sizes) at the constant quantiser 4 that
  imageio-ffmpeg uses for quality 9.
RGB <-> YUV conversions are libswscale's defaults (BT.601, limited range) in both directions, so a written and
re-read video matches its frames up to compression error. Frames to write are uint8 RGB, (F, H, W, 3) or
(F, 3, H, W).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flexgen.data.base import VideoDecodeError, describe_error
from flexgen.files import atomic_write, visible

try:
    import av
except ImportError as err:  # needed only to read and write videos: the benches and image paths run without it
    av, _AV_MISSING = None, err

try:
    import decord
except ImportError:         # optional: PyAV decodes every video when decord is not installed
    decord = None


def _pyav():
    """PyAV, or a clear error where it is not installed (`pip install av`)."""
    if av is None:
        raise ImportError(f"reading or writing video files needs PyAV: pip install av ({_AV_MISSING})")
    return av

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska", ".webm": "webm"}

Frames = torch.Tensor | np.ndarray

H264_CRF = 5            # Latte: imageio quality 9 -> libx264 -crf 5
MPEG4_QSCALE = 4        # imageio quality 9 -> -qscale:v 4 for codecs other than libx264


# ----------------------------------------------------------------------------------------------------------
# Video files: frame counts and frames, decord first, PyAV as the fallback.


def _as_numpy(frames) -> np.ndarray:
    """decord's NDArray (native bridge) or a torch tensor (torch bridge) -> numpy."""
    return frames.asnumpy() if hasattr(frames, "asnumpy") else np.asarray(frames)


def _decord_reader(path: str | Path):
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _pyav_count(path: str | Path) -> int:
    with _pyav().open(str(path)) as container:
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
    with _pyav().open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            decoded = i + 1
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if len(got) < len(wanted):
        raise VideoDecodeError(f"the video ended after {decoded} frames, frame {last} was needed")
    return np.stack([got[i] for i in indices])


def _pyav_read_all(path: Path) -> np.ndarray:
    with _pyav().open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path} has no video stream")
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise VideoDecodeError(f"{path}: the video stream has no frames")
    return np.stack(frames)


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
            errors.append(f"decord: {describe_error(e)}")
    try:
        return _pyav_count(path)
    except ImportError:                                         # PyAV missing: not a property of this file
        raise
    except Exception as e:                                      # av.error.*, StopIteration, VideoDecodeError
        errors.append(f"PyAV: {describe_error(e)}")
    raise VideoDecodeError("; ".join(errors))


def read_video(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """Frames of a video file as uint8 RGB (F, H, W, 3): frames `indices` (F = len(indices); decord, then PyAV),
    or with `indices` None every frame of the first video stream (PyAV, the library `write_video` encodes with).
    A missing file is a FileNotFoundError; a file that no decoder can read a VideoDecodeError naming each one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    if indices is None:
        return _pyav_read_all(path)
    errors = []
    for name, reader in (("decord", _decord_read if decord is not None else None), ("PyAV", _pyav_read)):
        if reader is None:
            continue
        try:
            frames = reader(path, indices)
        except ImportError:                                     # PyAV missing: not a property of this file
            raise
        except Exception as e:                                  # try the next decoder, then report both
            errors.append(f"{name}: {describe_error(e)}")
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
            log.info("decord cannot open %s (%s); decoding with PyAV", path, describe_error(e))
    if reader is not None:
        for begin in range(0, len(reader), chunk):
            yield from _as_numpy(reader.get_batch(list(range(begin, min(begin + chunk, len(reader))))))
        return
    with _pyav().open(str(path)) as container:
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
    names = [n for n in folder.iterdir() if visible(n.name) and n.suffix.lower() in IMAGE_EXTENSIONS]
    unnumbered = [n.name for n in names if frame_number(n.name) is None]
    if unnumbered:
        raise VideoDecodeError(f"frame names must end in an integer, e.g. img_12.jpg; found {unnumbered[0]!r}")
    return sorted(names, key=lambda n: (frame_number(n.name), n.name))


def read_frame_files(paths: Sequence[Path]) -> np.ndarray:
    """Image files as uint8 (len(paths), H, W, 3)."""
    frames = []
    for path in paths:
        with Image.open(path) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


# ----------------------------------------------------------------------------------------------------------
# Array helpers: torch or numpy uint8 in, numpy uint8 channel-last out.


def _as_uint8_numpy(x: Frames, name: str) -> np.ndarray:
    """A uint8 numpy array from a torch tensor or numpy array; anything else than uint8 is an error."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (use flexgen.autoencoder.to_uint8), got {array.dtype}")
    return array


def _channels_last(frames: np.ndarray, name: str) -> np.ndarray:
    """(..., 3, H, W) or (..., H, W, 3) -> (..., H, W, 3). A last axis of 3 wins when both axes are 3."""
    if frames.shape[-1] == 3:
        return frames
    if frames.shape[-3] == 3:
        return np.moveaxis(frames, -3, -1)
    raise ValueError(f"{name} must have 3 RGB channels on axis -3 or -1, got shape {frames.shape}")


# ----------------------------------------------------------------------------------------------------------
# Writing one video.


def video_codec() -> str:
    """The codec `write_video` uses: libx264 when this PyAV build has it, else mpeg4."""
    return "libx264" if "libx264" in _pyav().codecs_available else "mpeg4"


def write_video(path: str | Path, frames: Frames, fps: int = 8, codec: str | None = None,
                options: dict[str, str] | None = None, threads: int | None = None) -> None:
    """Write uint8 RGB frames (F, 3, H, W) or (F, H, W, 3) as a video at `fps` frames per second, atomically; the
    container is named by the suffix (.mp4, .avi, .mov, .mkv, .webm, .m4v).

    `codec` (libx264 or mpeg4) defaults to `video_codec()`; see the module docstring for pixel formats.
    `options` replace the default encoder options (e.g. {"crf": "0"} for lossless H.264); `threads=1` makes
    the encoding byte-reproducible."""
    path = Path(path)
    array = _channels_last(_as_uint8_numpy(frames, "frames"), "frames")
    if array.ndim != 4 or array.shape[0] == 0:
        raise ValueError(f"frames must be (F, H, W, 3) or (F, 3, H, W) with F >= 1, got shape {array.shape}")
    codec = codec or video_codec()
    if codec not in ("libx264", "mpeg4"):
        raise ValueError(f"codec must be libx264 or mpeg4, got {codec!r}")
    if path.suffix.lower() not in MUXERS:
        raise ValueError(f"{path}: the video suffix must be one of {', '.join(MUXERS)}")
    _, height, width, _ = array.shape
    pyav = _pyav()
    with atomic_write(path) as tmp, pyav.open(str(tmp), mode="w", format=MUXERS[path.suffix.lower()]) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        if threads is not None:
            stream.codec_context.thread_count = threads
        if codec == "libx264":
            stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
            stream.options = options or {"crf": str(H264_CRF)}
        else:
            stream.pix_fmt = "yuv420p"
            stream.options = options or {"qmin": str(MPEG4_QSCALE), "qmax": str(MPEG4_QSCALE)}
        for frame in array:
            for packet in stream.encode(pyav.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():                  # flush the encoder's delayed frames
            container.mux(packet)


# ----------------------------------------------------------------------------------------------------------
# Preview grid.


def save_grid(path: str | Path, samples: Frames, nrow: int = 4, frames_per_video: int = 4, padding: int = 2,
              background: int = 255) -> None:
    """A PNG preview of uint8 samples: videos (N, F, 3, H, W) or (N, F, H, W, 3), images (N, 3, H, W) or
    (N, H, W, 3); written atomically, in the image format of the suffix (PNG when PIL does not know it).

    Each cell is one sample: for a video, `frames_per_video` frames evenly spaced over the clip (first and last
    included; all frames if the clip is shorter) side by side; for an image, the image. Cells fill rows of
    `nrow`, left to right and top to bottom, separated by `padding` pixels of gray level `background`."""
    path = Path(path)
    array = _as_uint8_numpy(samples, "samples")
    if array.ndim not in (4, 5) or array.shape[0] == 0:
        raise ValueError(f"samples must be videos (N, F, 3, H, W) or images (N, 3, H, W), got shape {array.shape}")
    array = _channels_last(array, "samples")
    if array.ndim == 4:
        array = array[:, None]                                              # images: one-frame videos
    count, num_frames, height, width, _ = array.shape
    shown = min(frames_per_video, num_frames)
    picks = np.linspace(0, num_frames - 1, shown).round().astype(int)      # (shown,) frame indices
    strips = np.concatenate(list(array[:, picks].transpose(1, 0, 2, 3, 4)), axis=2)  # (N, H, shown·W, 3)

    cols = min(nrow, count)
    rows = math.ceil(count / cols)
    cell_h, cell_w = height + padding, strips.shape[2] + padding
    canvas = np.full((rows * cell_h + padding, cols * cell_w + padding, 3), background, dtype=np.uint8)
    for i, strip in enumerate(strips):
        top, left = padding + (i // cols) * cell_h, padding + (i % cols) * cell_w
        canvas[top:top + height, left:left + strip.shape[1]] = strip
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_write(path) as tmp:
        Image.fromarray(canvas).save(str(tmp), format=image_format)
