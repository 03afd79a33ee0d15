"""Writing and reading videos (PyAV) and PNG preview grids (PIL).

Videos on disk are mp4. The codec is H.264 (libx264) when this PyAV build has it, else MPEG-4 part 2:

- H.264 at constant rate factor 5, which is what Latte's `imageio.mimwrite(..., quality=9)` asks ffmpeg for
  (imageio-ffmpeg maps quality q to crf int((1 - q/10) · 51)). Pixel format yuv420p, the format every player
  and video reader understands, when both sides are even; x264 cannot subsample odd sizes to 4:2:0, so frames
  with an odd side are stored as yuv444p (H.264 High 4:4:4) at their exact size: no padding, no resizing.
- MPEG-4 part 2 (fallback): yuv420p (its only format; it accepts odd sizes) at the constant quantiser 4 that
  imageio-ffmpeg uses for quality 9.

RGB <-> YUV conversions are libswscale's defaults (BT.601, limited range) in both directions, so a written and
re-read video matches its frames up to compression error. Frames are uint8 RGB, (F, H, W, 3) or (F, 3, H, W);
`read_video` always returns (F, H, W, 3).
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

Frames = torch.Tensor | np.ndarray

H264_CRF = 5            # Latte: imageio quality 9 -> libx264 -crf 5
MPEG4_QSCALE = 4        # imageio quality 9 -> -qscale:v 4 for codecs other than libx264


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
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(path: str | Path, frames: Frames, fps: int = 8, codec: str | None = None,
                options: dict[str, str] | None = None, threads: int | None = None) -> None:
    """Write uint8 RGB frames (F, 3, H, W) or (F, H, W, 3) as an mp4 at `fps` frames per second.

    `codec` (libx264 or mpeg4) defaults to `video_codec()`; see the module docstring for pixel formats.
    `options` replace the default encoder options (e.g. {"crf": "0"} for lossless H.264); `threads=1` makes
    the encoding byte-reproducible."""
    array = _channels_last(_as_uint8_numpy(frames, "frames"), "frames")
    if array.ndim != 4 or array.shape[0] == 0:
        raise ValueError(f"frames must be (F, H, W, 3) or (F, 3, H, W) with F >= 1, got shape {array.shape}")
    codec = codec or video_codec()
    if codec not in ("libx264", "mpeg4"):
        raise ValueError(f"codec must be libx264 or mpeg4, got {codec!r}")
    _, height, width, _ = array.shape
    with av.open(str(path), mode="w") as container:
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
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():                  # flush the encoder's delayed frames
            container.mux(packet)


# ----------------------------------------------------------------------------------------------------------
# Reading one video.


def read_video(path: str | Path) -> np.ndarray:
    """All frames of the first video stream of a file, uint8 RGB (F, H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: the video stream has no frames")
    return np.stack(frames)


# ----------------------------------------------------------------------------------------------------------
# Preview grid.


def save_grid(path: str | Path, samples: Frames, nrow: int = 4, frames_per_video: int = 4, padding: int = 2,
              background: int = 255) -> None:
    """A PNG preview of uint8 samples: videos (N, F, 3, H, W) or (N, F, H, W, 3), images (N, 3, H, W) or
    (N, H, W, 3).

    Each cell is one sample: for a video, `frames_per_video` frames evenly spaced over the clip (first and last
    included; all frames if the clip is shorter) side by side; for an image, the image. Cells fill rows of
    `nrow`, left to right and top to bottom, separated by `padding` pixels of gray level `background`."""
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
    Image.fromarray(canvas).save(str(path))
