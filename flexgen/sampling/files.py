"""The files of one sample (an mp4 for video models, a png for one-frame models, written atomically), reading them
back, and ADM's `samples.npz` batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sample_file(out: Path, index: int, video_model: bool) -> Path:
    """DIR/{index:04d}.mp4 for video models, DIR/{index:04d}.png for one-frame models."""
    return out / f"{index:04d}.{'mp4' if video_model else 'png'}"


def write_sample(path: Path, pixels: torch.Tensor, fps: int = 8) -> None:
    """One uint8 sample: a video (F, 3, H, W) as mp4, or an image (3, H, W) (or a one-frame video) as png; written
    to a hidden temporary name, then renamed (an interrupted run never leaves a truncated file; `write_video`
    does the same for mp4)."""
    from PIL import Image

    from flexgen.data.media import write_video
    from flexgen.files import atomic_write

    if path.suffix == ".mp4":
        write_video(path, pixels, fps=fps)
        return
    with atomic_write(path) as tmp:
        image = pixels.reshape(pixels.shape[-3:]).permute(1, 2, 0).numpy()                  # (H, W, 3)
        Image.fromarray(image).save(str(tmp), format="PNG")


def read_sample(path: Path):
    """A written sample back as uint8 frames (F, H, W, 3) (an image is one frame)."""
    import numpy as np
    from PIL import Image

    from flexgen.data.media import read_video

    if path.suffix == ".mp4":
        return read_video(path)
    return np.asarray(Image.open(path).convert("RGB"))[None]


ADM_NPZ = "samples.npz"


def write_adm_npz(path: Path, files: Sequence[Path], labels: Sequence[int] | None = None) -> Path:
    """The batch file ADM's evaluator (guided-diffusion `evaluations/evaluator.py`) reads: `arr_0` uint8 (N, H, W, 3)
    in sample-index order (and `arr_1` the labels, as DiT's sample_ddp.py omits but ADM's own sampler writes),
    streamed image by image into the zip so 50k samples never sit in memory; written atomically."""
    import zipfile

    import numpy as np

    from flexgen.files import atomic_write

    first = read_sample(files[0])[0]
    shape = (len(files), *first.shape)
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                     "fortran_order": False, "shape": shape})
            for file in files:
                image = read_sample(file)[0]
                if image.shape != first.shape:
                    raise ValueError(f"{file}: shape {image.shape}, expected {first.shape} like {files[0]}")
                f.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        if labels is not None:
            with zf.open("arr_1.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    return path
