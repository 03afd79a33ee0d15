"""Batched generation with per-sample seeds and rank sharding (what `flexgen sample`, the bench and the demo draw).

- Sample i is drawn with seed `seed + i`: its initial noise and every DDPM step noise come from a CPU generator
  seeded with it (`flexgen.diffusion.sample`), so a sample does not depend on the batch size, its position in a
  batch, the rank that draws it or the number of ranks (up to floating-point rounding of batched matmuls).
- Its class label (class-conditional models) is a function of its seed alone (`flexgen.sampling.labels`).
- Sharding: rank r of W draws the indices i ≡ r (mod W), in increasing order (`manifest.shard_indices`).
- Classifier-free guidance (Ho & Salimans 2022) through `flexgen.diffusion.classifier_free_guidance`: at
  cfg_scale 1 the conditional model runs alone. A measured policy's meter (DyDiT) runs in the model's place and
  adds up the MACs of what every forward ran.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from flexgen.sampling.labels import resolve_labels

if TYPE_CHECKING:
    import torch

    from flexgen.autoencoder import Autoencoder
    from flexgen.backbones.base import Denoiser


class SampleBatch(NamedTuple):
    """One batch from `generate`; unpacks as (indices, labels, videos)."""
    indices: list[int]              # global sample indices
    labels: list[int] | None        # class label per sample (None for an unconditional model)
    videos: torch.Tensor            # uint8 on the CPU: (B, F, 3, H, W) for video models, (B, 3, H, W) for DiT


def check_options(model: Denoiser, cfg_scale: float, batch_size: int, cfg_channels: int | None = None) -> None:
    """Options `generate` refuses, checked before anything is written."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cfg_channels is not None and cfg_channels > model.config.in_channels:
        raise ValueError(f"sample.cfg_channels = {cfg_channels} exceeds the model's {model.config.in_channels} "
                         "ε channels")
    if cfg_scale != 1 and not model.config.num_classes:
        raise ValueError(f"classifier-free guidance (cfg_scale = {cfg_scale}) needs a class-conditional model; "
                         "this one is unconditional: use cfg_scale 1")


def run_options(run: Any) -> dict[str, Any]:
    """`draw`'s keyword arguments that a run config fixes (its noise schedule, x_0 clipping, guided channels), so
    every sampling of a run (flexgen sample, calibrate, the cached bench) draws the same trajectory."""
    from flexgen.diffusion import linear_betas

    d = run.diffusion
    return {"betas": linear_betas(d.num_timesteps, d.beta_start, d.beta_end),
            "clip_denoised": run.sample.clip_denoised, "cfg_channels": run.sample.cfg_channels}


def draw(model: Denoiser, seeds: Sequence[int], cond: dict, *, sampler: str, steps: int, cfg_scale: float = 1.0,
         cfg_channels: int | None = None, betas: torch.Tensor | None = None, clip_denoised: bool = False,
         device: torch.device | str = "cpu", dtype: torch.dtype | None = None, meter: Any = None) -> torch.Tensor:
    """Latents (B, *latent_shape) of one batch: sample b from seed `seeds[b]`, conditioned on `cond` (guided with
    `cfg_scale` against `model.null_condition(cond)` when the model is conditional), through `meter` if given."""
    from flexgen.diffusion import classifier_free_guidance, sample

    net = model if meter is None else meter
    if cond:
        net = classifier_free_guidance(net, cfg_scale, cond, model.null_condition(cond), cfg_channels)
    dtype = dtype if dtype is not None else next(model.parameters()).dtype
    model.policy.new_run(steps)                             # (a step cache starts over)
    return sample(net, model.latent_shape(), list(seeds), sampler=sampler, steps=steps, betas=betas,
                  learned_sigma=model.learned_sigma, clip_denoised=clip_denoised,
                  prediction=model.run.diffusion.prediction, device=device, dtype=dtype)


def generate(model: Denoiser, autoencoder: Autoencoder, *, num_samples: int, seed: int = 0, sampler: str = "ddpm",
             steps: int = 250, cfg_scale: float = 1.0, batch_size: int = 1,
             labels: int | Sequence[int] | None = None, rank: int = 0, world_size: int = 1,
             indices: Sequence[int] | None = None,
             betas: torch.Tensor | None = None, clip_denoised: bool = False, device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None, progress: bool = False, cfg_channels: int | None = None,
             meter: Any = None) -> Iterator[SampleBatch]:
    """Draw this rank's share of `num_samples` samples in batches of up to `batch_size` and decode them.

    `model` (the Denoiser of a Latte / DiT / FlexLatte, in eval mode) and `autoencoder` must already be on `device`; the
    diffusion runs in `dtype` (default: the model's). Latents have the model's shape per sample, (F, C, h, w)
    for video models and (C, h, w) for DiT. `betas` defaults to the linear DDPM schedule of 1000 steps.
    `labels`: None draws a label per sample from its seed; an int or one label per index fixes them. `indices`
    (default: this rank's shard) are the samples to draw. `cfg_channels` guides only the first k ε channels
    (DiT's release: 3). `meter` (the policy's `CostMeter` of `model`) runs in its place and adds
    up the MACs of a DyDiT model's forwards. See the module docstring for seeds, labels and sharding."""
    import torch
    from tqdm.auto import tqdm

    from flexgen.autoencoder import to_uint8
    from flexgen.sampling.manifest import shard_indices

    config = model.config
    check_options(model, cfg_scale, batch_size, cfg_channels)
    mine = shard_indices(num_samples, rank, world_size) if indices is None else list(indices)
    all_labels = resolve_labels(num_samples, seed, config.num_classes, labels)
    dtype = dtype if dtype is not None else next(model.parameters()).dtype

    with tqdm(total=len(mine), desc=f"sampling ({sampler}, {steps} steps)", unit="sample",
              disable=not progress) as bar:
        for start in range(0, len(mine), batch_size):
            indices = mine[start:start + batch_size]
            batch_labels = None if all_labels is None else [all_labels[i] for i in indices]
            cond = {} if batch_labels is None else \
                {"y": torch.tensor(batch_labels, dtype=torch.long, device=device)}              # (B,)
            latents = draw(model, [seed + i for i in indices], cond, sampler=sampler, steps=steps,
                           cfg_scale=cfg_scale, cfg_channels=cfg_channels, betas=betas, clip_denoised=clip_denoised,
                           device=device, dtype=dtype, meter=meter)                           # (B, *shape)
            videos = to_uint8(autoencoder.decode(latents)).cpu()        # (B, F, 3, H, W) or (B, 3, H, W)
            bar.update(len(indices))
            yield SampleBatch(indices, batch_labels, videos)
