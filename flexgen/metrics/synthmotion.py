"""SynthMotion: a small video classifier of the synthetic set's motion classes, the demo's offline detector.

The standard video detector (I3D, for FVD) needs a weights file that a fresh machine does not have. This one is
trained by the demo on its own training clips in seconds, saved as safetensors (its sha256 identifies it like any
detector file) and used through the detector contract (`flexgen.metrics.detectors.VideoDetector`): uint8 videos
(N, T, 3, H, W) -> float64 features (N, D), here the pooled last convolution. Numbers made with it are named for it:
the Fréchet distance in its feature space is `fd_synthmotion` (never "FVD"; `metric_names`), and `accuracy` is
the share of videos whose predicted motion class is the one they were asked for (class-conditional samples).

Input: any T >= 2 frames and any size; frames are resized (area, i.e. box-filter averaging) to `size` × `size`,
and mapped to [-1, 1], as the demo's models see them. A real clip for it is `num_frames` frames taken every
`stride`-th frame (the demo's training clip), a generated one its first `num_frames` consecutive frames.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from flexgen.data.video_index import clip_span
from flexgen.files import atomic_write, file_sha256
from flexgen.metrics.detectors import check_uint8_videos
from flexgen.metrics.protocols import Protocol

CONFIG_KEY = "flexgen_synthmotion_config"


@dataclass(frozen=True)
class SynthMotionConfig:
    classes: tuple[str, ...]        # sorted class folder names (the dataset's labels)
    num_frames: int = 8             # frames of a clip
    stride: int = 2                 # frame step of a real clip (the demo's data.frame_interval)
    size: int = 16                  # side the frames are resized to
    width: int = 32                 # channels of the last convolution = feature dimension


def protocol(config: SynthMotionConfig, num_real: int, num_fake: int | None = None) -> Protocol:
    """The demo's protocol for this detector: one clip per real video, `num_frames` every `stride`-th frame from a
    seeded offset; the first `num_frames` frames of each generated video."""
    num_fake = num_real if num_fake is None else num_fake
    counts = str(num_real) if num_real == num_fake else f"{num_real}x{num_fake}"
    span = clip_span(config.num_frames, config.stride)
    return Protocol(f"synthmotion{counts}_{config.num_frames}f", "fvd", num_real=num_real, num_fake=num_fake,
                    num_frames=config.num_frames, real_stride=config.stride, fake_stride=1, min_real_frames=span)


class SynthMotionNet(nn.Module):
    """Three 3-D convolutions (spatial pooling after the first two), global average pooling, a linear classifier."""

    def __init__(self, config: SynthMotionConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.convs = nn.ModuleList([nn.Conv3d(3, w // 2, 3, padding=1), nn.Conv3d(w // 2, w, 3, padding=1),
                                    nn.Conv3d(w, w, 3, padding=1)])
        self.head = nn.Linear(w, len(config.classes))

    def preprocess(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 (N, T, 3, H, W) -> float (N, 3, T, size, size) in [-1, 1]."""
        n, t = videos.shape[:2]
        x = videos.flatten(0, 1).float() / 127.5 - 1                                   # (N·T, 3, H, W)
        if x.shape[-2:] != (self.config.size,) * 2:
            x = F.interpolate(x, size=(self.config.size,) * 2, mode="area")
        return x.unflatten(0, (n, t)).transpose(1, 2)                                  # (N, 3, T, s, s)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, s, s) -> (N, width)."""
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i < len(self.convs) - 1:
                x = F.avg_pool3d(x, (1, 2, 2))                                          # halve H, W
        return x.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))                                             # (N, classes) logits


# ---------------------------------------------------------------------------------------------------------------
# Training on the clips of a synthetic-set folder
# ---------------------------------------------------------------------------------------------------------------
def read_clip_set(root: str | Path) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Every video of a `<root>/<Class>/<video>.mp4` folder, uint8 (F, H, W, 3) each, with its label (index into
    the sorted class folders) and the classes; read through `flexgen.metrics.sources` (sorted by relative path)."""
    from flexgen.metrics.sources import list_sources

    root = Path(root)
    sources = [s for s in list_sources(root) if s.rel.count("/") == 1 and s.rel.endswith(".mp4")]
    classes = sorted({s.rel.split("/")[0] for s in sources})
    if not classes:
        raise ValueError(f"{root}: no class folders (expected <root>/<Class>/<video>.mp4)")
    videos = [s.read(range(s.num_frames())) for s in sources]
    labels = [classes.index(s.rel.split("/")[0]) for s in sources]
    return videos, labels, classes


def random_clips(videos: Sequence[np.ndarray], config: SynthMotionConfig, generator: np.random.Generator
                 ) -> torch.Tensor:
    """One clip per video, from a random offset: uint8 (N, num_frames, 3, H, W)."""
    span = clip_span(config.num_frames, config.stride)
    clips = []
    for video in videos:
        if len(video) < span:
            raise ValueError(f"a video of {len(video)} frames is shorter than one clip ({span} frames)")
        start = int(generator.integers(0, len(video) - span + 1))
        clips.append(video[start:start + span:config.stride])
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).contiguous()


def train_classifier(root: str | Path, *, num_frames: int = 8, stride: int = 2, size: int = 16, width: int = 64,
                     steps: int = 400, batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> SynthMotionNet:
    """A SynthMotionNet trained on random clips of every video under `root` (AdamW, cosine decay; seeded), with
    the colour channels of each batch permuted at random so that it learns the motion, not the colours."""
    videos, labels, classes = read_clip_set(root)
    config = SynthMotionConfig(tuple(classes), num_frames, stride, size, width)
    torch.manual_seed(seed)
    net = SynthMotionNet(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = np.random.default_rng(seed)
    targets = torch.tensor(labels)
    for _ in range(steps):
        chosen = rng.choice(len(videos), size=min(batch_size, len(videos)), replace=False)
        clips = random_clips([videos[i] for i in chosen], config, rng)              # (B, F, 3, H, W) uint8
        clips = clips[:, :, torch.from_numpy(rng.permutation(3))]        # colours carry no class: shuffle them
        x = net.preprocess(clips)
        loss = F.cross_entropy(net(x), targets[torch.from_numpy(chosen)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


def save(net: SynthMotionNet, path: str | Path) -> str:
    """safetensors with the config in the metadata; returns the file's sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={CONFIG_KEY: json.dumps(dataclasses.asdict(net.config))})
    return file_sha256(path)


# ---------------------------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------------------------
class SynthMotionDetector:
    """A saved SynthMotionNet as a `VideoDetector`; its metrics are named for it (`metric_names`)."""

    name = "synthmotion"
    metric_names = {"fvd": "fd_synthmotion", "kid": "kid_synthmotion"}

    def __init__(self, path: str | Path, sha256: str | None = None, batch_size: int = 64):
        from flexgen.checkpoint import CheckpointError, read_metadata, read_state_dict

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SynthMotion detector weights not found: {path} (flexgen demo trains and writes "
                                    "them: <demo out>/detector/synthmotion.safetensors)")
        self.sha256 = file_sha256(path)
        if sha256 is not None and self.sha256 != sha256:
            raise CheckpointError(f"{path}: sha256 {self.sha256} does not match the expected {sha256}")
        meta = read_metadata(path)                      # a damaged file: a CheckpointError naming it
        if CONFIG_KEY not in meta:
            raise CheckpointError(f"{path} is not a SynthMotion detector (no {CONFIG_KEY} metadata)")
        fields = json.loads(meta[CONFIG_KEY])
        self.config = SynthMotionConfig(**{**fields, "classes": tuple(fields["classes"])})
        self.net = SynthMotionNet(self.config).eval()
        self.net.load_state_dict(read_state_dict(path))
        self.path, self.batch_size = path, batch_size

    @torch.no_grad()
    def _batched(self, head, videos: torch.Tensor) -> torch.Tensor:
        """`head` (the network or its features) of uint8 videos, `batch_size` at a time."""
        check_uint8_videos(videos, "SynthMotionDetector")
        return torch.cat([head(self.net.preprocess(videos[i:i + self.batch_size]))
                          for i in range(0, len(videos), self.batch_size)])

    def logits(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 (N, T, 3, H, W) -> class logits (N, classes)."""
        return self._batched(self.net, videos)

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 (N, T, 3, H, W) -> float64 features (N, width)."""
        return self._batched(self.net.features, videos).double()

    def accuracy(self, videos: torch.Tensor, labels: Sequence[int]) -> float:
        """Share of `videos` whose predicted class is `labels`."""
        predicted = self.logits(videos).argmax(dim=1)
        return float((predicted == torch.as_tensor(list(labels))).float().mean())

