"""The FVD detector: Kinetics-400 I3D (Inception-v1 inflated to 3-D), our own network loading the standard weights.

FVD (Unterthiner et al. 2018) embeds every clip with the tf.hub `deepmind/i3d-kinetics-400/1` network and reads
the 400 class logits averaged over time, before softmax. StyleGAN-V (and Latte, which vendors it) ships those
weights as the TorchScript file `i3d_torchscript.pt` (sha256 `bec6519f…60a5e2`), called as
`detector(videos, rescale=True, resize=True, return_features=True)` on uint8 videos (N, 3, T, H, W).

This file re-implements that network (`I3D`) with the same `forward` interface, loads the TorchScript file only
after checking its sha256 (TorchScript is executable code), copies its tensors into `I3D` by an explicit name
mapping, and wraps the result as a detector with the metrics contract "uint8 batches in, float features out"
(`I3DDetector`). Nothing here downloads: the weight file comes from an explicit path, `$FLEXGEN_I3D`, or
`$FLEXGEN_CACHE/detectors/i3d_torchscript.pt` (default cache `~/.cache/flexgen`).

The architecture (Carreira & Zisserman 2017; spec in ../shared/reference/evaluators.md §2.8) is written out in the
`I3D` docstring: TF "SAME" padding everywhere, 224x224 frames, at least 9 frames. The TorchScript parameter names
are assumed to be those of hassony2's `kinetics_i3d_pytorch` port (an inference, checked by the parity test when
the file is present); the name mapping is written out in the `torchscript_name_to_ours` docstring. Batch-norm
epsilon: 1e-3 (Sonnet's default, the tf.hub value) unless the TorchScript module carries its own `eps`, which
`load_weights_from_torchscript` then adopts so that we compute what the file computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flexgen.files import detector_path, verified_detector_file
from flexgen.metrics.detectors import check_uint8_videos

I3D_FILENAME = "i3d_torchscript.pt"
I3D_SHA256 = "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"
I3D_SOURCES = (
    "StyleGAN-V's https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1 "
    "or the Hugging Face mirror flateon/FVD-I3D-torchscript (51,235,320 bytes)"
)
NUM_CLASSES = 400
INPUT_SIZE = 224
BN_EPS = 1e-3

# (name, input channels, branch widths [b0, b1a, b1b, b2a, b2b, b3]); output = b0 + b1b + b2b + b3.
MIXED_BLOCKS: list[tuple[str, int, tuple[int, int, int, int, int, int]]] = [
    ("mixed_3b", 192, (64, 96, 128, 16, 32, 32)),  # 256
    ("mixed_3c", 256, (128, 128, 192, 32, 96, 64)),  # 480
    ("mixed_4b", 480, (192, 96, 208, 16, 48, 64)),  # 512
    ("mixed_4c", 512, (160, 112, 224, 24, 64, 64)),  # 512
    ("mixed_4d", 512, (128, 128, 256, 24, 64, 64)),  # 512
    ("mixed_4e", 512, (112, 144, 288, 32, 64, 64)),  # 528
    ("mixed_4f", 528, (256, 160, 320, 32, 128, 128)),  # 832
    ("mixed_5b", 832, (256, 160, 320, 32, 128, 128)),  # 832
    ("mixed_5c", 832, (384, 192, 384, 48, 128, 128)),  # 1024
]

Triple = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------------------------
# TF "SAME" padding
# ----------------------------------------------------------------------------------------------------------------


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(front, back) padding of one axis under TF "SAME": total = max(k - s, 0) if size % s == 0 else
    max(k - size % s, 0); the odd pixel goes to the back. The output length is ceil(size / stride)."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad a (N, C, T, H, W) tensor so that a VALID conv/pool with (kernel, stride) acts like TF "SAME"."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        pads.extend(tf_same_padding(int(size), k, s))  # F.pad wants (W_front, W_back, H_front, H_back, T_f, T_b)
    if not any(pads):
        return x
    return F.pad(x, pads)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


class Unit3D(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d -> ReLU, with TF "SAME" padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple = (1, 1, 1), stride: Triple = (1, 1, 1),
                 eps: float = BN_EPS):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride=stride, bias=False)
        self.bn = nn.BatchNorm3d(out_ch, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(pad_same(x, self.kernel, self.stride))  # (N, out, ceil(T/s), ceil(H/s), ceil(W/s))
        return F.relu(self.bn(x))


class MaxPoolSame(nn.Module):
    """Max pool with TF "SAME" padding. Padding is zeros (as in the PyTorch ports); every pooled tensor in I3D is
    post-ReLU (>= 0), so this equals TF's pooling that ignores padded positions."""

    def __init__(self, kernel: Triple, stride: Triple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)  # (N, C, ceil(./s))


class Mixed(nn.Module):
    """Inception module: four branches concatenated on channels."""

    def __init__(self, in_ch: int, widths: tuple[int, int, int, int, int, int], eps: float = BN_EPS):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_ch, w0, eps=eps)
        self.b1a = Unit3D(in_ch, w1a, eps=eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), eps=eps)
        self.b2a = Unit3D(in_ch, w2a, eps=eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), eps=eps)  # 3x3x3, not 5x5 (Inception-v1 as in I3D)
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_ch, w3, eps=eps)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.b0(x)  # (N, w0, T, H, W)
        y1 = self.b1b(self.b1a(x))  # (N, w1b, T, H, W)
        y2 = self.b2b(self.b2a(x))  # (N, w2b, T, H, W)
        y3 = self.b3b(self.b3a(x))  # (N, w3, T, H, W)
        return torch.cat([y0, y1, y2, y3], dim=1)  # (N, out_channels, T, H, W)


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------


class I3D(nn.Module):
    """Kinetics-400 I3D, RGB stream, with the TorchScript FVD detector's `forward` interface.

    - every conv and pool uses TF "SAME" padding, computed from the input size at run time; the odd extra pixel goes
      on the back side, exactly like TF;
    - Unit3D = Conv3d (no bias) -> BatchNorm3d -> ReLU; tf.hub has no BN scale, so the converted weight is all ones;
    - stem Conv3d_1a_7x7 (64, k7, s2) -> MaxPool3d_2a (k1x3x3, s1,2,2) -> Conv3d_2b_1x1 (64) -> Conv3d_2c_3x3 (192)
      -> MaxPool3d_3a (k1x3x3, s1,2,2);
    - Mixed_3b, Mixed_3c -> MaxPool3d_4a (k3, s2) -> Mixed_4b..Mixed_4f -> MaxPool3d_5a (k2, s2) -> Mixed_5b,
      Mixed_5c, each with four branches (1x1 | 1x1->3x3x3 | 1x1->3x3x3 | maxpool3x3x3->1x1) concatenated on
      channels;
    - head: AvgPool3d k(2,7,7) stride 1 VALID -> dropout (identity at eval) -> 1x1x1 conv to 400 with bias
      -> mean over the remaining time steps = the 400 FVD logits.

    Input size: 224x224 frames (the head's 7x7 pool needs at least 193 px) and T >= 9 frames (T=16 -> one time
    step)."""

    def __init__(self, num_classes: int = NUM_CLASSES, eps: float = BN_EPS):
        super().__init__()
        self.conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), eps=eps)
        self.maxpool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(64, 64, eps=eps)
        self.conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), eps=eps)
        self.maxpool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.mixed_3b = Mixed(192, MIXED_BLOCKS[0][2], eps=eps)
        self.mixed_3c = Mixed(256, MIXED_BLOCKS[1][2], eps=eps)
        self.maxpool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.mixed_4b = Mixed(480, MIXED_BLOCKS[2][2], eps=eps)
        self.mixed_4c = Mixed(512, MIXED_BLOCKS[3][2], eps=eps)
        self.mixed_4d = Mixed(512, MIXED_BLOCKS[4][2], eps=eps)
        self.mixed_4e = Mixed(512, MIXED_BLOCKS[5][2], eps=eps)
        self.mixed_4f = Mixed(528, MIXED_BLOCKS[6][2], eps=eps)
        self.maxpool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.mixed_5b = Mixed(832, MIXED_BLOCKS[7][2], eps=eps)
        self.mixed_5c = Mixed(832, MIXED_BLOCKS[8][2], eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.logits = nn.Conv3d(1024, num_classes, (1, 1, 1), bias=True)  # no BN, no ReLU

    @staticmethod
    def preprocess(videos: torch.Tensor, rescale: bool, resize: bool) -> torch.Tensor:
        """rescale: [0, 255] -> [-1, 1] as 2x/255 - 1; resize: every frame bilinearly to 224x224 (stretch, no crop,
        no antialiasing, align_corners=False; done as a trilinear resize that keeps T, which is per-frame
        bilinear since the time positions map exactly onto the input frames)."""
        x = videos.float()
        if rescale:
            x = x * (2.0 / 255.0) - 1.0
        if resize and tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(x.shape[2], INPUT_SIZE, INPUT_SIZE), mode="trilinear", align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1024-d average-pooled features per remaining time step, (N, 1024, T', 1, 1)."""
        x = self.conv3d_1a_7x7(x)  # (N, 64, T/2, 112, 112)
        x = self.maxpool3d_2a_3x3(x)  # (N, 64, T/2, 56, 56)
        x = self.conv3d_2b_1x1(x)  # (N, 64, T/2, 56, 56)
        x = self.conv3d_2c_3x3(x)  # (N, 192, T/2, 56, 56)
        x = self.maxpool3d_3a_3x3(x)  # (N, 192, T/2, 28, 28)
        x = self.mixed_3c(self.mixed_3b(x))  # (N, 480, T/2, 28, 28)
        x = self.maxpool3d_4a_3x3(x)  # (N, 480, T/4, 14, 14)
        x = self.mixed_4b(x)  # (N, 512, T/4, 14, 14)
        x = self.mixed_4c(x)  # (N, 512, T/4, 14, 14)
        x = self.mixed_4d(x)  # (N, 512, T/4, 14, 14)
        x = self.mixed_4e(x)  # (N, 528, T/4, 14, 14)
        x = self.mixed_4f(x)  # (N, 832, T/4, 14, 14)
        x = self.maxpool3d_5a_2x2(x)  # (N, 832, T/8, 7, 7)
        x = self.mixed_5c(self.mixed_5b(x))  # (N, 1024, T/8, 7, 7)
        return F.avg_pool3d(x, (2, 7, 7), stride=1)  # (N, 1024, T/8 - 1, 1, 1), VALID

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        """videos: (N, 3, T, H, W), float or uint8, values in [0, 255] if `rescale` else in [-1, 1]; H = W = 224
        unless `resize`. Returns the 400 logits averaged over time, before softmax (N, 400), when
        `return_features` (what FVD uses); otherwise their softmax, the class probabilities."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"I3D expects videos (N, 3, T, H, W), got shape {tuple(videos.shape)}")
        x = self.preprocess(videos, rescale, resize)  # (N, 3, T, 224, 224) in [-1, 1]
        x = self.dropout(self.features(x))  # (N, 1024, T', 1, 1)
        logits = self.logits(x).flatten(2).mean(dim=2)  # (N, 400), mean over T'
        return logits if return_features else logits.softmax(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Weight file: locate, verify, load
# ----------------------------------------------------------------------------------------------------------------


def default_i3d_path() -> Path:
    """`$FLEXGEN_I3D` if set, else `$FLEXGEN_CACHE/detectors/i3d_torchscript.pt` (cache default ~/.cache/flexgen)."""
    return detector_path(I3D_FILENAME, "FLEXGEN_I3D")


def load_i3d_torchscript(path: str | Path | None = None, sha256: str = I3D_SHA256) -> torch.jit.ScriptModule:
    """Load the FVD TorchScript detector from a local file after checking its sha256 (before torch.jit.load)."""
    path = verified_detector_file(path, label="I3D", filename=I3D_FILENAME, env_var="FLEXGEN_I3D", sha256=sha256,
                                  source=I3D_SOURCES)
    return torch.jit.load(str(path), map_location="cpu")


# ----------------------------------------------------------------------------------------------------------------
# Name mapping TorchScript (hassony2 naming) <-> ours
# ----------------------------------------------------------------------------------------------------------------

_BRANCH_TO_OURS = {"branch_0.": "b0.", "branch_1.0.": "b1a.", "branch_1.1.": "b1b.", "branch_2.0.": "b2a.",
                   "branch_2.1.": "b2b.", "branch_3.1.": "b3b."}
_UNIT_TO_OURS = {"conv3d.": "conv.", "batch3d.": "bn."}
_OPTIONAL = "num_batches_tracked"  # a BN counter, unused at eval; older files may lack it


def torchscript_name_to_ours(name: str) -> str | None:
    """Our parameter/buffer name for a TorchScript one, or None when the name does not fit the mapping.

    The TorchScript class is `src.i3dpt_jit.I3D`, which by its name derives from hassony2's `kinetics_i3d_pytorch`
    port (`i3dpt.py`); we assume its parameter names (an inference, checked only by the parity test when the file
    is present, and every name is checked strictly):

        TorchScript (hassony2 naming)                    ours
        <unit>.conv3d.weight                             <unit>.conv.weight
        <unit>.batch3d.{weight,bias,running_*,num_*}     <unit>.bn.{same}
        mixed_XY.branch_0.                               mixed_XY.b0.
        mixed_XY.branch_1.0. / branch_1.1.               mixed_XY.b1a. / b1b.
        mixed_XY.branch_2.0. / branch_2.1.               mixed_XY.b2a. / b2b.
        mixed_XY.branch_3.1.  (branch_3.0 is the pool)   mixed_XY.b3b.
        conv3d_0c_1x1.conv3d.{weight,bias}               logits.{weight,bias}

    with units `conv3d_1a_7x7`, `conv3d_2b_1x1`, `conv3d_2c_3x3` named alike on both sides. The TF-Hub variable
    names have a typo (Mixed_5b/Branch_2's 3x3 conv is `Conv3d_0a_3x3` instead of `Conv3d_0b_3x3`); it was
    resolved when the TorchScript file was made, whose branch_2.1 is the 3x3 conv in every module, so it maps to
    `b2b` here."""
    if name.startswith("conv3d_0c_1x1.conv3d."):
        return "logits." + name.removeprefix("conv3d_0c_1x1.conv3d.")
    head, _, rest = name.partition(".")
    if head.startswith("mixed_"):
        branch = next((b for b in _BRANCH_TO_OURS if rest.startswith(b)), None)
        if branch is None:
            return None
        head, rest = f"{head}.{_BRANCH_TO_OURS[branch][:-1]}", rest.removeprefix(branch)
    elif not head.startswith("conv3d_"):
        return None
    unit = next((u for u in _UNIT_TO_OURS if rest.startswith(u)), None)
    if unit is None:
        return None
    return f"{head}.{_UNIT_TO_OURS[unit]}{rest.removeprefix(unit)}"


def ours_name_to_torchscript(name: str) -> str:
    """The inverse mapping (used to build TorchScript-named state dicts, e.g. in tests)."""
    if name.startswith("logits."):
        return "conv3d_0c_1x1.conv3d." + name.removeprefix("logits.")
    parts = name.split(".")
    if parts[0].startswith("mixed_"):
        branch = {v[:-1]: k[:-1] for k, v in _BRANCH_TO_OURS.items()}[parts[1]]
        parts = [parts[0], branch, *parts[2:]]
    unit = {v[:-1]: k[:-1] for k, v in _UNIT_TO_OURS.items()}
    parts = [unit.get(p, p) for p in parts]
    return ".".join(parts)


def load_weights_from_torchscript(model: I3D, scripted: nn.Module | Mapping[str, torch.Tensor]) -> I3D:
    """Copy the TorchScript detector's tensors (a module or its state_dict) into `model`, strictly by name.

    Every source tensor must map to one of ours with the same shape, and every tensor of ours must be filled
    (except BN `num_batches_tracked`); otherwise a ValueError lists the offenders. If `scripted` is a module whose
    batch norms carry `eps`, our batch norms adopt it."""
    source = scripted.state_dict() if isinstance(scripted, nn.Module) else dict(scripted)
    target = model.state_dict()
    unmapped, mismatched, mapped = [], [], {}
    for name, tensor in source.items():
        ours = torchscript_name_to_ours(name)
        if ours is None or ours not in target:
            unmapped.append(name)
        elif tuple(tensor.shape) != tuple(target[ours].shape):
            mismatched.append(f"{name} {tuple(tensor.shape)} -> {ours} {tuple(target[ours].shape)}")
        else:
            mapped[ours] = tensor
    missing = [k for k in target if k not in mapped and not k.endswith(_OPTIONAL)]
    if unmapped or mismatched or missing:
        raise ValueError("TorchScript I3D weights do not fit our I3D:"
                         f"\n  unmapped source tensors ({len(unmapped)}): {unmapped}"
                         f"\n  shape mismatches ({len(mismatched)}): {mismatched}"
                         f"\n  our tensors left unfilled ({len(missing)}): {missing}")
    with torch.no_grad():
        for name, tensor in mapped.items():
            target[name].copy_(tensor)
    if isinstance(scripted, nn.Module):
        ours_modules = dict(model.named_modules())
        for name, module in scripted.named_modules():
            eps = getattr(module, "eps", None)
            ours = torchscript_name_to_ours(name + ".weight") if name.endswith(".batch3d") else None
            if isinstance(eps, float) and ours is not None:
                ours_modules[ours.removesuffix(".weight")].eps = eps  # "<unit>.bn"
    return model


# ----------------------------------------------------------------------------------------------------------------
# Detector: uint8 batches in, float features out
# ----------------------------------------------------------------------------------------------------------------


class I3DDetector:
    """FVD features of uint8 videos, frame-first like the rest of flexgen: (N, T, 3, H, W), values 0..255, any
    H, W (frames are stretched to 224x224 bilinearly), T >= 9. Returns float64 CPU features (N, 400): the I3D
    logits averaged over time, before softmax, i.e. StyleGAN-V's `rescale=True, resize=True, return_features=True`.

    The weights come from `path` (default `default_i3d_path()`), verified by sha256 and copied into our `I3D`;
    `model` injects an already-built network instead (tests, or a model with weights loaded elsewhere)."""

    def __init__(self, path: str | Path | None = None, model: nn.Module | None = None, device: str = "cpu",
                 batch_size: int = 8):
        if model is None:
            scripted = load_i3d_torchscript(path)
            model = load_weights_from_torchscript(I3D(), scripted)
            self.sha256: str | None = I3D_SHA256
        else:
            self.sha256 = None
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        check_uint8_videos(videos, "I3DDetector")
        out = []
        for chunk in videos.split(self.batch_size):
            x = chunk.to(self.device).permute(0, 2, 1, 3, 4)  # (n, 3, T, H, W)
            out.append(self.model(x, rescale=True, resize=True, return_features=True).double().cpu())  # (n, 400)
        return torch.cat(out) if out else torch.empty(0, NUM_CLASSES, dtype=torch.float64)
