"""The frozen autoencoder between pixels and the diffusion model's latents, applied frame by frame.

- "sd-vae": a diffusers `AutoencoderKL` read from a local folder (Stable Diffusion's VAE; Latte uses
  sd-vae-ft-ema), latents scaled by 0.18215, 8× downsampling, 4 channels.
- "pixel": the identity, for tiny CPU runs in pixel space.

Video tensors are frame-first: pixels (B, F, 3, H, W) in [-1, 1], latents (B, F, C, H/d, W/d); images may be
(B, 3, H, W). Frames go through the VAE in chunks to bound memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VAE_SOURCES = "stabilityai/sd-vae-ft-ema on the Hugging Face hub (the folder with config.json and the weights)"


def local_load_options() -> dict:
    """Keywords for diffusers' `from_pretrained` of a local folder: local files only, and low_cpu_mem_usage off
    where accelerate is not installed (diffusers 0.42 `ModelMixin.from_pretrained` turns it off itself then, after
    a six-line warning on every load)."""
    import importlib.util

    return {"local_files_only": True, **({} if importlib.util.find_spec("accelerate") else
                                          {"low_cpu_mem_usage": False})}


def vae_folder(cfg) -> Path:
    """The AutoencoderKL folder of an `AutoencoderConfig` of kind sd-vae (`autoencoder.path`, or its vae/
    subfolder), checked without loading it: commands call it before their data checks."""
    if not cfg.path:
        raise FileNotFoundError(f"autoencoder.path is not set: the sd-vae autoencoder is a local diffusers folder, "
                                f"e.g. {VAE_SOURCES}")
    path = Path(cfg.path)
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no AutoencoderKL at {path!s} (autoencoder.path): expected a diffusers folder "
                                f"with config.json and weights, e.g. {VAE_SOURCES}; download it on a machine "
                                "with internet access and set autoencoder.path to it")
    return folder


class Autoencoder(nn.Module):
    def __init__(self, vae: nn.Module | None = None, scale_factor: float = 0.18215, chunk: int = 16):
        super().__init__()
        self.vae = vae
        self.scale_factor = scale_factor if vae is not None else 1.0
        self.chunk = chunk
        if vae is not None:
            self.vae.requires_grad_(False).eval()

    @classmethod
    def from_config(cls, cfg) -> Autoencoder:
        """From an `AutoencoderConfig`: the identity for kind "pixel", else a local diffusers AutoencoderKL."""
        if cfg.kind == "pixel":
            if cfg.downsample != 1:
                raise ValueError(f"autoencoder kind 'pixel' has downsample 1, got {cfg.downsample}")
            return cls()
        from diffusers import AutoencoderKL

        folder = vae_folder(cfg)
        vae = AutoencoderKL.from_pretrained(folder, **local_load_options())
        downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        if downsample != cfg.downsample:
            raise ValueError(f"{folder}: the AutoencoderKL downsamples by {downsample}, the config says "
                             f"autoencoder.downsample = {cfg.downsample}")
        return cls(vae, cfg.scale_factor)

    @property
    def is_identity(self) -> bool:
        return self.vae is None

    def _frames(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Apply fn to frames (N, C, H, W) in chunks; x is (B, F, C, H, W) or (B, C, H, W)."""
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        out = torch.cat([fn(part) for part in flat.split(self.chunk)])
        return out.reshape(*lead, *out.shape[1:])

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> latents (a sample of the posterior, scaled), frame by frame."""
        if self.vae is None:
            return x
        return self.sample_moments(self.encode_moments(x), self.scale_factor, generator, self.chunk).to(x.dtype)

    @torch.no_grad()
    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> the posterior's parameters (mean ‖ log-variance, 2C channels), frame by frame: what a
        latent store keeps (`flexgen.data.latents`)."""
        dtype = next(self.vae.parameters()).dtype
        return self._frames(x, lambda f: self.vae.encode(f.to(dtype)).latent_dist.parameters)

    @staticmethod
    def sample_moments(moments: torch.Tensor, scale_factor: float, generator: torch.Generator | None = None,
                       chunk: int = 16) -> torch.Tensor:
        """A posterior sample × scale_factor from its parameters, by diffusers' own `DiagonalGaussianDistribution`,
        in the frame chunks `encode` uses (so the same generator draws the same noise)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        lead = moments.shape[:-3]
        flat = moments.reshape(-1, *moments.shape[-3:])
        out = torch.cat([DiagonalGaussianDistribution(part).sample(generator) * scale_factor
                         for part in flat.split(chunk)])
        return out.reshape(*lead, *out.shape[1:])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [-1, 1], frame by frame."""
        if self.vae is None:
            return z.clamp(-1, 1)
        dtype = next(self.vae.parameters()).dtype
        pixels = self._frames(z, lambda f: self.vae.decode(f.to(dtype) / self.scale_factor).sample)
        return pixels.clamp(-1, 1).to(z.dtype)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> uint8 in [0, 255] (as Latte saves samples: (x + 1) / 2 · 255, rounded)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
