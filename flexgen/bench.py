"""Latency of dense vs FlexDiT models, measured in one process on the same inputs.

Dense and dynamic passes alternate inside every repeat (so drifting clocks and other load hit both alike), each
number is a median over repeats, and the dynamic model is timed at every grid of its schedule and averaged with
the stages' shares of timesteps, which is what a sampler spending equal time per timestep sees. Targets are
ratios (dynamic / dense) printed beside the MAC ratio; nothing here is asserted in tests.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from flexgen.attention import backend_counts, reset_backend_counts
from flexgen.density.schedules import mean_over_stages
from flexgen.diffusion import classifier_free_guidance, linear_betas, make_scheduler
from flexgen.flops import density_report
from flexgen.video.flex_latte import FlexLatte
from flexgen.video.latte import Latte


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    return run


@torch.no_grad()
def latency_report(config, density, *, device: str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1,
                   repeats: int = 3, warmup: int = 1, cfg_scale: float | None = None, num_timesteps: int = 1000,
                   seed: int = 0) -> dict:
    """Median seconds per forward (and per CFG sampling step, with `cfg_scale`) of the dense model and of its
    FlexDiT conversion at each grid, their time averages over the schedule, and the ratios beside MAC ratios."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    dense = Latte(config).to(dev, dtype).eval()
    for p in dense.parameters():            # non-trivial weights (a fresh model's zero gates skip nothing, but
        torch.nn.init.normal_(p, std=0.02)  # keep the numbers realistic)
    flex = FlexLatte.from_dense(dense, density, num_timesteps).eval()
    grids = sorted({s.grid for s in flex.stages})
    frames = (config.num_frames,) if config.temporal else ()
    x = torch.randn(batch, *frames, config.in_channels, config.input_size, config.input_size, device=dev, dtype=dtype)
    y = torch.randint(0, config.num_classes, (batch,), device=dev) if config.num_classes else None
    t_of = {s.grid: (s.t_start + s.t_end) // 2 for s in flex.stages}     # a timestep inside each grid's stage
    timer = _timer(dev)

    def forward(model, grid=None):
        t = torch.full((batch,), t_of[grid] if grid else 500, device=dev, dtype=torch.long)
        kwargs = {"y": y} if y is not None else {}
        return lambda: model(x, t, **kwargs, **({"grid": grid} if grid else {}))

    def cfg_step(model, grid=None):
        # One DDPM step of the Latte protocol: the doubled CFG batch through the model, then the scheduler.
        scheduler = make_scheduler("ddpm", linear_betas(num_timesteps), 250)
        t_value = t_of[grid] if grid else 500
        t_step = scheduler.timesteps[(scheduler.timesteps - t_value).abs().argmin()]
        guided = classifier_free_guidance(model, cfg_scale, {"y": y}, {"y": torch.full_like(y, config.num_classes)}) \
            if y is not None else model
        t = torch.full((batch,), int(t_step), device=dev, dtype=torch.long)
        return lambda: scheduler.step(guided(x, t).movedim(-3, 1).float(), t_step, x.movedim(-3, 1).float())

    kinds = {"forward": forward}
    if cfg_scale is not None:
        kinds["cfg_step"] = cfg_step
    times: dict[str, dict] = {k: {"dense": [], **{g: [] for g in grids}} for k in kinds}
    reset_backend_counts()
    for r in range(warmup + repeats):
        for kind, make in kinds.items():
            for key in ["dense", *grids]:
                seconds = timer(make(dense) if key == "dense" else make(flex, key))
                if r >= warmup:
                    times[kind][key].append(seconds)

    flops = density_report(config, density, num_timesteps)
    flops_ratio = flops["gmacs"] / flops["gmacs_dense"]
    result = {"device": str(dev), "dtype": str(dtype).removeprefix("torch."), "batch": batch, "repeats": repeats,
              "gmacs_dense": flops["gmacs_dense"], "gmacs": flops["gmacs"], "flops_ratio": flops_ratio,
              "attention_calls": backend_counts()}
    for kind in kinds:
        median = {key: statistics.median(v) for key, v in times[kind].items()}
        dynamic = mean_over_stages(flex.stages, median.__getitem__)
        ratio = dynamic / median["dense"]
        result[kind] = {"dense_s": median["dense"], "dynamic_s": dynamic, "per_grid_s": {g: median[g] for g in grids},
                        "latency_ratio": ratio, "speedup": 1 / ratio, "latency_over_flops": ratio / flops_ratio}
    return result
