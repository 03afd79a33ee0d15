"""Fine-tuning throughput: one training step (the policy's objective, backward, AdamW step) of a dynamic model
beside the dense model's, on the same weights, inputs and timesteps, alternated inside every repeat.

A step is what `flexgen train` runs: `Denoiser.training_losses` (FlexDiT: one sparse grid per micro-batch from its
stage of t; DyDiT: the masked forward at full width with its routers and the budget loss, after the warm-up stage
unless `complete` asks for the complete model's rows), `backward`, `AdamW.step`. Timesteps come from the dynamic
model's own training sampler (FlexDiT: its stages as training draws them, so the median is over the stages met);
the dense model takes the same t. The models are copies: the bench's weights stay as they
are for the other rows.
"""

from __future__ import annotations

import copy
import statistics

import torch

from flexgen.bench.measure import no_denormals, timer
from flexgen.bench.models import BenchSetup, on_dense_weights
from flexgen.diffusion import GaussianDiffusion


def train_step_report(bench: BenchSetup, run, *, repeats: int = 3, warmup: int = 1, complete: bool = False) -> dict:
    """Seconds per training step of the dense model and of `run`'s dynamic model at the bench's batch (medians of
    `repeats` after `warmup`), their ratio and samples per second. `complete`: DyDiT's warm-up stage (each
    micro-batch also runs the complete model on the same x_t)."""
    dense = copy.deepcopy(bench.dense).train()
    # (DyDiT's fresh routers: the masked training forward costs the same whatever they choose)
    dynamic = on_dense_weights(run, bench.dense, bench.device).to(dtype=bench.dtype).train()
    diffusion = GaussianDiffusion.from_config(run.diffusion)
    sampler = dynamic.timestep_sampler()
    x0 = bench.x
    batch = x0.shape[0]
    step = 0 if complete else 10 ** 9                  # (DyDiT: past every warm-up and anneal)
    time_one = timer(bench.device)
    optimizers = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-6) for m in (dense, dynamic)}

    def one_step(model, t, noise):
        terms = model.training_losses(diffusion, model, x0, t, noise, bench.cond, step)
        terms["loss"].mean().backward()
        optimizers[id(model)].step()
        optimizers[id(model)].zero_grad(set_to_none=True)

    times = {"dense": [], "dynamic": []}
    generator = torch.Generator().manual_seed(0)
    with no_denormals():
        for i in range(warmup + repeats):
            t = sampler(batch, generator, generator, 0, 1).to(bench.device)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(bench.device)
            pair = (("dense", dense), ("dynamic", dynamic))
            for name, model in pair if i % 2 else pair[::-1]:           # each goes first every other repeat
                seconds = time_one(lambda m=model, t=t, noise=noise: one_step(m, t, noise))
                if i >= warmup:
                    times[name].append(seconds)
    dense_s, dynamic_s = (statistics.median(times[k]) for k in ("dense", "dynamic"))
    return {"dense_s": dense_s, "dynamic_s": dynamic_s, "ratio": dynamic_s / dense_s, "batch": batch,
            "samples_per_s_dense": batch / dense_s, "samples_per_s_dynamic": batch / dynamic_s,
            "complete_rows": complete}
