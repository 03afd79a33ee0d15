"""A sampling run's cost per sample: counted on the meta device (MACs of each step at its timestep's grid, doubled by
classifier-free guidance), or measured from what a policy ran (DyDiT's kept counts, through its meter)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def flops_per_sample(model, sampler: str, steps: int, cfg_scale: float,
                     betas: torch.Tensor | None = None) -> dict[str, Any]:
    """Network MACs (×1e-9; papers call them FLOPs) to draw one sample with `sampler` (`flexgen.policies.cost`):
    one forward per sampler timestep at its grid, two with classifier-free guidance (the doubled batch). The
    autoencoder's decoding is not included."""
    from flexgen.diffusion import linear_betas, make_scheduler
    from flexgen.policies.cost import sampling_cost

    betas = linear_betas() if betas is None else betas
    learned_sigma = model.learned_sigma
    timesteps = [int(t) for t in make_scheduler(sampler, betas, steps, learned_sigma=learned_sigma).timesteps]
    return sampling_cost(model.cost(), timesteps, cfg_passes(model, cfg_scale))


def cfg_passes(model, cfg_scale: float) -> int:
    """Forwards per sample and step: 2 with classifier-free guidance (its doubled batch), else 1."""
    return 2 if cfg_scale != 1 and model.conditional else 1


def measured_cost(model, meter, num_samples: int) -> dict[str, Any]:
    """A measured policy's cost over `num_samples` samples of a run (its meter's `cost`: the measured GMACs per
    sample and per forward, the realised reduction, the weight-slice patterns)."""
    return meter.cost(num_samples, model.cost().forward_macs(None).gmacs, model.policy.patterns())
