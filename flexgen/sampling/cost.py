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


# What a run's record measures (the rest is counted, the same in every invocation): seconds, and a measured policy's
# MACs from what ran (DyDiT's kept counts, a step cache's computed steps).
MEASURED = ("seconds_per_sample", "gmacs_per_sample", "gmacs_per_forward", "gmacs_per_sample_measured",
            "gmacs_per_forward_measured", "flops_fraction", "reduction", "gmacs_per_sample_at_t")


def resumed_cost(counted: dict[str, Any], now: dict[str, Any], drawn: int, before: dict[str, Any] | None,
                 had: int) -> dict[str, Any]:
    """The cost a folder's record keeps over several invocations of one run: `counted` (the static count), updated
    with `now` (what this invocation measured over the `drawn` samples it drew) and `before` (the previous record's
    cost, over `had` samples): each measured number the mean weighted by samples, a re-run that draws nothing keeping
    the previous ones (else a resumed folder would carry the static count, or no time). `samples_measured` says over
    how many samples."""
    before = {} if before is None or had <= 0 else before
    out = {**counted, **{k: v for k, v in before.items() if k not in MEASURED and k not in counted}, **now}
    for key in MEASURED:
        if key in before and key in now and drawn:
            out[key] = _weighted(before[key], had, now[key], drawn)
        elif key in before and not (key in now and drawn):
            out[key] = before[key]
    out["samples_measured"] = (had if before else 0) + drawn
    return out


def _weighted(a: Any, n: int, b: Any, m: int) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):          # (per-timestep numbers: JSON's keys are strings)
        a, b = {str(k): v for k, v in a.items()}, {str(k): v for k, v in b.items()}
        return {k: _weighted(a[k], n, b[k], m) if k in a and k in b else b.get(k, a.get(k)) for k in sorted({*a, *b})}
    return (a * n + b * m) / (n + m)
