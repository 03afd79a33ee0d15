"""The Latte / DiT family (`flexgen.video.latte`) behind the `Denoiser` interface.

The network is `Latte` running the run's policy (`flexgen.policies.from_run`: dense, FlexDiT, DyDiT or both); its
exchange format is our safetensors file with the model configuration in its metadata (`flexgen.checkpoint`), which
`flexgen sample` and `load_model` read, and it loads the official Latte / DiT / DyDiT checkpoints too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flexgen import policies
from flexgen.backbones.base import Denoiser
from flexgen.flops import FlopReport, count_macs
from flexgen.policies import FlexDiT
from flexgen.policies.cost import CountedCost, SpatialSequence
from flexgen.presets import LATTE_PRESETS as PRESETS
from flexgen.video.latte import Latte, LatteConfig, latte_config


def latte_config_from_run(run: Any) -> LatteConfig:
    """The network of a run configuration (`flexgen.config.Config`): preset, sizes and conditioning, with the
    latent side derived from the image size and the autoencoder's downsampling."""
    m, data, ae = run.model, run.data, run.autoencoder
    if data.image_size % ae.downsample:
        raise ValueError(f"data.image_size {data.image_size} is not divisible by "
                         f"autoencoder.downsample {ae.downsample}")
    sizes = {k: v for k, v in (("depth", m.depth), ("hidden_size", m.hidden_size), ("num_heads", m.num_heads))
             if v is not None}
    temporal, patch = PRESETS[m.preset]["temporal"], PRESETS[m.preset]["patch_size"]
    if (data.image_size // ae.downsample) % patch:
        raise ValueError(f"data.image_size {data.image_size} gives latents of side {data.image_size // ae.downsample} "
                         f"(autoencoder.downsample {ae.downsample}), not divisible by {m.preset}'s patch size {patch}")
    return latte_config(m.preset, input_size=data.image_size // ae.downsample,
                        num_frames=data.num_frames if temporal else 1, in_channels=m.in_channels,
                        num_classes=m.num_classes, class_dropout_prob=m.class_dropout_prob,
                        learn_sigma=m.learn_sigma, **sizes)


# ----------------------------------------------------------------------------------------------------------
# Cost: MACs of one sample's forward on the meta device.


@dataclasses.dataclass(frozen=True)
class LatteCost(CountedCost):
    """`flexgen.policies.cost.CostModel` of a Latte / DiT network, dense or with a FlexDiT density."""
    config: LatteConfig
    density: Any = None                     # flexgen.policies.flexdit.DensityConfig, or None for the dense model
    num_timesteps: int = 1000
    _counted: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)   # grid -> FlopReport

    @property
    def num_blocks(self) -> int:
        return self.config.num_spatial

    def _count(self, grid: int | None) -> FlopReport:
        c = self.config

        def inputs():
            frames = (c.num_frames,) if c.temporal else ()
            x = torch.zeros(1, *frames, c.in_channels, c.input_size, c.input_size)
            kwargs = {"y": torch.zeros(1, dtype=torch.long)} if c.num_classes else {}
            return (x, torch.zeros(1, dtype=torch.long)), (kwargs if grid is None else {**kwargs, "grid": grid})

        if self.density is None or grid is None:
            return count_macs(lambda: Latte(c), inputs)
        return count_macs(lambda: Latte(c, policy=FlexDiT(self.density, self.num_timesteps)), inputs)

    def spatial_sequence(self) -> SpatialSequence:
        return SpatialSequence(self.config.num_frames, self.config.grid_size, self.config.hidden_size,
                               self.config.num_spatial)


# ----------------------------------------------------------------------------------------------------------
# The family's Denoiser.


class LatteDenoiser(Denoiser):
    """`denoiser(x_t, t, y=None, num_images=0, y_images=None)` around a Latte / DiT network and its policy."""

    family = "latte"

    @classmethod
    def from_run(cls, run: Any) -> LatteDenoiser:
        config = latte_config_from_run(run)
        return cls(Latte(config, policy=policies.from_run(run)), run)

    @property
    def config(self) -> LatteConfig:
        return self.net.config

    def load_pretrained(self, path: str | Path, sha256: str | None = None, *, routers_required: bool = False) -> None:
        from flexgen.checkpoint import load_weights

        # dense weights into a FlexDiT or DyDiT network: the policy's conversion
        load_weights(self.net, path, sha256=sha256, routers_required=routers_required)

    export_name = "ema.safetensors"

    def export(self, path: str | Path) -> Path:
        """Our safetensors file, the model configuration (and what its policy records) in its metadata."""
        from flexgen.checkpoint import save_weights

        save_weights(self.net, path)
        return Path(path)

    def describe(self) -> str:
        return f"{self.config.num_spatial} spatial + {self.config.num_temporal} temporal blocks"

    def converted(self, density: Any) -> LatteDenoiser:
        run = dataclasses.replace(self.run, density=density)
        return LatteDenoiser(self.net.converted(FlexDiT(density, self.num_timesteps)), run)

    @classmethod
    def training_dataset(cls, run: Any, *, is_main: bool, device: torch.device, progress: bool = True):
        if run.data.dataset in ("imagenet", "latents"):
            from flexgen.data.latents import build_image_dataset

            if PRESETS[run.model.preset]["temporal"]:
                raise ValueError(f"data.dataset {run.data.dataset} holds images: train a DiT preset on it, not "
                                 f"{run.model.preset}")
            return build_image_dataset(run.data, run.autoencoder, seed=run.train.seed)
        from flexgen.data.video import build_dataset

        return build_dataset(run.data, split="train", seed=run.train.seed)

    def use_dataset(self, dataset: Any) -> None:
        """A class-conditional model needs a labelled training set with no more classes than it embeds (more
        embeddings than classes is allowed: fine-tuning a 1000-class model on a subset)."""
        classes = getattr(dataset, "classes", None)     # a VideoClipDataset's sorted class folders; None: unknown
        n, where = self.config.num_classes, getattr(dataset, "root", "the training set")
        if classes is None or not n:
            return
        if not classes:
            raise ValueError(f"model.num_classes={n}, but {where} is unlabelled (0 classes): set "
                             "model.num_classes=0 for an unconditional model, or use a labelled dataset")
        if len(classes) > n:
            raise ValueError(f"model.num_classes={n} does not fit the {len(classes)} classes of {where}: set "
                             f"model.num_classes={len(classes)}")

    def shard_units(self) -> list[nn.Module]:
        return [*self.net.spatial_blocks, *self.net.temporal_blocks]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.net.set_grad_checkpointing(enabled)

    def prepare_batch(self, batch: dict, device: torch.device, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, dict]:
        """Clips (B, F + images, 3, H, W) (or images (B, 3, H, W) for DiT) and the labels; a label (of the clip,
        and of each still image) drops to the null class `num_classes` at rate class_dropout_prob (DiT, CFG)."""
        c, data = self.config, self.run.data
        video = batch["video"].to(device, non_blocking=True)
        cond: dict = {}
        if data.num_images:
            cond["num_images"] = data.num_images
        if not c.num_classes:
            return video, cond
        labels = {"y": batch["label"]}
        if data.num_images:
            labels["y_images"] = batch["image_labels"]
        p = self.run.model.class_dropout_prob
        for key, value in labels.items():
            if generator is not None and p > 0:
                drop = torch.rand(value.shape, generator=generator) < p
                value = torch.where(drop, torch.full_like(value, c.num_classes), value)
            cond[key] = value.to(device)
        return video, cond

    def cost(self) -> LatteCost:
        """The network's cost model, made once (it caches each grid's count)."""
        if self._cost is None:
            flex = self.policy.part(FlexDiT)
            self._cost = LatteCost(self.config, None if flex is None else flex.density, self.num_timesteps)
        return self._cost

    _cost: LatteCost | None = None

    def latent_shape(self) -> tuple[int, ...]:
        c = self.config
        frames = (c.num_frames,) if c.temporal else ()
        return (*frames, c.in_channels, c.input_size, c.input_size)

    @property
    def conditional(self) -> bool:
        return bool(self.config.num_classes)

    def example_condition(self, batch: int, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> dict:
        if not self.config.num_classes:
            return {}
        return {"y": torch.randint(0, self.config.num_classes, (batch,), device=device)}

    def example_batch(self, batch: int, generator: torch.Generator | None = None) -> dict:
        """Clips (B, F, 3, S, S) (DiT: images (B, 3, S, S)) in [-1, 1] and labels, as the clip datasets give them."""
        data, c = self.run.data, self.config
        frames = (data.num_frames,) if c.temporal else ()
        out = {"video": torch.rand(batch, *frames, 3, data.image_size, data.image_size, generator=generator) * 2 - 1}
        if c.num_classes:
            out["label"] = torch.randint(0, c.num_classes, (batch,), generator=generator)
        return out

    def sampling_condition(self, num_samples: int, seed: int, device: torch.device | str = "cpu",
                           dtype: torch.dtype = torch.float32) -> dict:
        from flexgen.sampling.labels import resolve_labels

        labels = resolve_labels(num_samples, seed, self.config.num_classes)
        return {} if labels is None else {"y": torch.tensor(labels, device=device)}

    def condition_summary(self) -> dict:
        return {"num_classes": self.config.num_classes}

    @classmethod
    def preset_overrides(cls, preset: str, *, image_size: int | None, frames: int | None, num_classes: int | None,
                         in_channels: int, vae_factor: int) -> list[str]:
        """Latte: 16 frames, unconditional; DiT: one frame, ImageNet's 1000 classes; 256 px."""
        temporal = PRESETS[preset]["temporal"]
        image_size = 256 if image_size is None else image_size
        if image_size % vae_factor:
            raise ValueError(f"--image-size {image_size} is not divisible by --vae-factor {vae_factor}")
        frames = frames if frames is not None else (16 if temporal else 1)
        num_classes = num_classes if num_classes is not None else (0 if temporal else 1000)
        return [f"model.preset={preset}", f"data.image_size={image_size}", f"data.num_frames={frames}",
                f"model.num_classes={num_classes}", f"model.in_channels={in_channels}",
                f"autoencoder.downsample={vae_factor}", "data.dataset=synthetic"]

    def null_condition(self, cond: dict) -> dict:
        return {**cond, **{k: torch.full_like(cond[k], self.config.num_classes) for k in ("y", "y_images")
                           if k in cond}}

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        """x: (B, F, C, H, W) latents (DiT: (B, C, H, W)), t: (B,) -> (B, F, C_out, H, W)."""
        return self.net(x, t, **cond)
