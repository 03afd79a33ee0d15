"""Preset -> family: the one place that tells the model families apart.

The table is data (preset names from the families' data-only preset modules, the family's module and class,
which datasets it trains on, and which configuration fields mean nothing for it), so `flexgen.config` can
validate a run against it without importing any model code; the family class is imported when a model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from flexgen.presets import LATTE_PRESETS, PIXART_PRESETS


@dataclass(frozen=True)
class Family:
    name: str
    presets: tuple[str, ...]
    denoiser: str                   # "module:Class" of its `flexgen.backbones.base.Denoiser`
    datasets: tuple[str, ...]       # `data.dataset` values it trains on
    unused: tuple[str, ...]         # config fields ("section.key", or a whole "section") it has no use for
    samplers: tuple[str, ...]       # sampler names it offers (flexgen.diffusion.SCHEDULERS), its default first
    default_steps: int              # the default sampler's steps in the family's papers
    sample_command: str             # the command that samples it

    @property
    def default_sampler(self) -> str:
        return self.samplers[0]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("latte", tuple(LATTE_PRESETS), "flexgen.backbones.latte:LatteDenoiser",
           datasets=("ffs", "sky", "ucf101", "taichi", "synthetic", "imagenet", "latents"),
           unused=("model.caption_channels", "data.manifest", "data.text_encoder", "data.text_cache",
                   "data.max_length", "dydit.cross_attention"),
           samplers=("ddpm", "ddim", "dpm-solver++"), default_steps=250,
           sample_command="flexgen sample"),        # Latte / DiT: DDPM-250
    Family("pixart", tuple(PIXART_PRESETS), "flexgen.backbones.pixart:PixArtDenoiser",
           datasets=("captions",),
           unused=("model.num_classes", "data.num_frames", "data.frame_interval", "data.num_images", "data.class_list",
                   "density.pool_frames", "sample"),
           samplers=("dpm-solver++", "dpm-solver", "sa-solver", "ddim", "euler", "ddpm"), default_steps=20,
           sample_command="flexgen generate"),   # PixArt-α: DPM-20
)}

PRESET_FAMILY: dict[str, str] = {preset: f.name for f in FAMILIES.values() for preset in f.presets}


def family_of(preset: str) -> Family:
    """The family of a preset name; an error listing the presets for an unknown one."""
    if preset not in PRESET_FAMILY:
        raise ValueError(f"unknown model preset {preset!r}; choose one of: {', '.join(PRESET_FAMILY)}")
    return FAMILIES[PRESET_FAMILY[preset]]


def denoiser_class(preset: str) -> type:
    module, _, name = family_of(preset).denoiser.partition(":")
    return getattr(importlib.import_module(module), name)


def build_denoiser(run: Any):
    """The `Denoiser` of a run configuration, random weights: dense, or with the run's density policy
    (`train.init_from`, `flexgen convert` or `load_pretrained` bring pretrained weights)."""
    return denoiser_class(run.model.preset).from_run(run)
