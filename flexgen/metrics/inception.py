"""Image FID features exactly as clean-fid 0.1.35 computes them in mode "clean", without ever downloading.

clean-fid's "clean" mode resizes each image with PIL bicubic to 299x299, one channel at a time in 32-bit float
('F' mode, which antialiases), clips to [0, 255] and keeps float32 (no requantisation to uint8); then its
`InceptionV3W` wrapper normalises (x - 128) / 128 and runs the TF-Inception TorchScript
`inception-2015-12-05.pt`, returning the 2048-d pool3 features. Both pieces are taken from clean-fid itself
(`cleanfid.resize.build_resizer("clean")` and `InceptionV3W.forward`); only the loading differs: clean-fid downloads
the file to /tmp when it is missing, whereas here the file must already be on disk, and its sha256 is checked before
`torch.jit.load` (TorchScript is executable code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from flexgen.files import detector_path, verified_detector_file
from flexgen.metrics.detectors import check_uint8_images

INCEPTION_FILENAME = "inception-2015-12-05.pt"
# The digest k-diffusion and others use for this file (not hashed first-hand here; the parity test checks it).
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
INCEPTION_SOURCE = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048


def default_inception_path() -> Path:
    """`$FLEXGEN_INCEPTION` if set, else `$FLEXGEN_CACHE/detectors/inception-2015-12-05.pt` (cache ~/.cache/flexgen)."""
    return detector_path(INCEPTION_FILENAME, "FLEXGEN_INCEPTION")


def load_inception_torchscript(path: str | Path | None = None, sha256: str = INCEPTION_SHA256) -> nn.Module:
    """clean-fid's `InceptionV3W` (mode "clean": resize outside, normalise inside) around the TorchScript file at
    `path`, loaded only after its sha256 matched. Never downloads."""
    path = verified_detector_file(path, label="Inception", filename=INCEPTION_FILENAME, env_var="FLEXGEN_INCEPTION",
                                  sha256=sha256, source=INCEPTION_SOURCE)
    from cleanfid.inception_torchscript import InceptionV3W

    class _LocalInceptionV3W(InceptionV3W):
        """`InceptionV3W` with its forward unchanged, built from one verified file instead of `<dir>/<name>` (whose
        constructor would download when asked to and cannot take another file name)."""

        def __init__(self, file: Path):
            nn.Module.__init__(self)
            self.base = torch.jit.load(str(file), map_location="cpu").eval()
            self.layers = self.base.layers
            self.resize_inside = False

    return _LocalInceptionV3W(path)


def clean_resizer():
    """clean-fid's own "clean" resizer: uint8 (H, W, 3) -> float32 (299, 299, 3), PIL bicubic per channel in 'F'."""
    from cleanfid.resize import build_resizer

    return build_resizer("clean")


def clean_resize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, 299, 299) in [0, 255], image by image as clean-fid does."""
    resize = clean_resizer()
    hwc = images.permute(0, 2, 3, 1).numpy()
    out = np.stack([resize(np.ascontiguousarray(img)) for img in hwc]) if len(hwc) else \
        np.empty((0, INCEPTION_SIZE, INCEPTION_SIZE, 3), np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class InceptionDetector:
    """clean-fid "clean" FID features of uint8 images (N, 3, H, W), values 0..255, any H, W -> float64 (N, 2048).

    The weights come from `path` (default `default_inception_path()`), verified by sha256 before loading; `model`
    injects another network taking float (n, 3, 299, 299) in [0, 255] (tests); such a detector has no sha256 unless
    one is given, so its metric is named `fid[<name>]` and its reference statistics are not cached."""

    def __init__(self, path: str | Path | None = None, model: nn.Module | None = None, device: str = "cpu",
                 batch_size: int = 32, name: str | None = None, sha256: str | None = None):
        if model is None:
            model = load_inception_torchscript(path)
            self.sha256: str | None = INCEPTION_SHA256
            self.name = name or "inception"
        else:
            self.sha256 = sha256
            self.name = name or f"custom-{type(model).__name__}"
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_uint8_images(images, "InceptionDetector")
        out = []
        for chunk in images.cpu().split(self.batch_size) if len(images) else ():
            x = clean_resize(chunk).to(self.device)
            out.append(self.model(x).reshape(len(chunk), -1).double().cpu())
        return torch.cat(out) if out else torch.empty(0, FEATURE_DIM, dtype=torch.float64)
