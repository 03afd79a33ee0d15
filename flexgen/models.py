"""The model of a run configuration, for every backbone: Latte / DiT (video and class-conditional images) and
PixArt-α (text-to-image); dense, or FlexDiT when the run's `density.layout` is set."""

from __future__ import annotations

from torch import nn


def build_model(run) -> nn.Module:
    """Random weights; `train.init_from` (or `flexgen convert`) brings pretrained ones."""
    if run.model.is_t2i:
        from flexgen.t2i.pixart import build_denoiser
        return build_denoiser(run)
    from flexgen.video import build_model as build_video_model
    return build_video_model(run)


def is_dynamic(model: nn.Module) -> bool:
    """A FlexDiT model (its forward uses one sparse grid per batch, chosen by the timesteps)."""
    return bool(getattr(model, "roles", ""))
