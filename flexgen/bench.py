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


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights (a fresh model's zero gates skip no work, but keep the numbers realistic)."""
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model


def _models(config, density, num_timesteps: int, dev: torch.device, dtype: torch.dtype, batch: int,
            cfg_scale: float | None, attention: str = "diffusers"):
    """(dense, FlexDiT, call(model, x, t, grid, cfg), latent x) for a Latte / DiT config or PixArt-α arguments (a dict).
    `call` runs one forward, or with `cfg` the doubled classifier-free-guidance batch and the guided ε."""
    if isinstance(config, dict):                                   # PixArt-α: 120 T5 tokens per caption
        from flexgen.t2i.pixart import TEXT_TOKENS, FlexPixArtTransformer2DModel

        dense = FlexPixArtTransformer2DModel(**config).to(device=dev)
        if next(dense.parameters()).dtype != dtype:        # (diffusers warns on every dtype cast)
            dense = dense.to(dtype=dtype)
        dense = _randomised(dense.eval())
        flex = FlexPixArtTransformer2DModel.from_dense(dense, density, num_timesteps).eval()
        if attention == "flexgen":
            from flexgen.t2i.pixart import use_flexgen_attention

            dense, flex = use_flexgen_attention(dense), use_flexgen_attention(flex)
        side = config["sample_size"]
        x = torch.randn(batch, config.get("in_channels", 4), side, side, device=dev, dtype=dtype)
        text = torch.randn(2 * batch, TEXT_TOKENS, config["caption_channels"], device=dev, dtype=dtype)
        mask = torch.ones(2 * batch, TEXT_TOKENS, device=dev, dtype=torch.long)
        extra = {}
        if dense.use_additional_conditions:
            extra["added_cond_kwargs"] = {"resolution": torch.full((2 * batch, 2), 8.0 * side, device=dev),
                                          "aspect_ratio": torch.ones(2 * batch, 1, device=dev)}

        def call(model, x, t, grid, cfg):
            n = 2 * batch if cfg else batch
            kwargs = {k: {kk: vv[:n] for kk, vv in v.items()} for k, v in extra.items()}
            x_in, t_in = (torch.cat([x, x]), torch.cat([t, t])) if cfg else (x, t)
            out = model(x_in, text[:n], t_in, encoder_attention_mask=mask[:n], return_dict=False,
                        **kwargs, **({"grid": grid} if grid else {}))[0]
            if not cfg:
                return out
            uncond, cond = out.chunk(2)
            channels = x.shape[1]                 # guided ε, and the conditional half's variance channels
            return torch.cat([uncond[:, :channels] + cfg_scale * (cond[:, :channels] - uncond[:, :channels]),
                              cond[:, channels:]], dim=1)
        return dense, flex, call, x

    dense = _randomised(Latte(config).to(dev, dtype).eval())
    flex = FlexLatte.from_dense(dense, density, num_timesteps).eval()
    frames = (config.num_frames,) if config.temporal else ()
    x = torch.randn(batch, *frames, config.in_channels, config.input_size, config.input_size, device=dev, dtype=dtype)
    y = torch.randint(0, config.num_classes, (batch,), device=dev) if config.num_classes else None

    def call(model, x, t, grid, cfg):
        grid_kwargs = {"grid": grid} if grid else {}
        if not cfg or y is None:
            return model(x, t, **({"y": y} if y is not None else {}), **grid_kwargs)
        guided = classifier_free_guidance(lambda *a, **k: model(*a, **k, **grid_kwargs), cfg_scale, {"y": y},
                                          {"y": torch.full_like(y, config.num_classes)})
        return guided(x, t)
    return dense, flex, call, x


@torch.no_grad()
def latency_report(config, density, *, device: str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1,
                   repeats: int = 3, warmup: int = 1, cfg_scale: float | None = None, num_timesteps: int = 1000,
                   sampler: str | None = None, steps: int | None = None, seed: int = 0,
                   attention: str = "diffusers") -> dict:
    """Median seconds per forward (and per sampling step with CFG, with `cfg_scale`) of the dense model and of its
    FlexDiT conversion at each grid, their time averages over the schedule, and the ratios beside MAC ratios.
    `config` is a LatteConfig or PixArt-α arguments (a dict). With `cfg_scale`, the whole sampling run of `sampler`
    (default: DDPM 250 steps for Latte / DiT, DPM-Solver++ 20 steps for PixArt-α) is also timed, as the sum of its
    steps, each at the grid of its timestep."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    dense, flex, call, x = _models(config, density, num_timesteps, dev, dtype, batch, cfg_scale, attention)
    grids = sorted({s.grid for s in flex.stages})
    t_of = {s.grid: (s.t_start + s.t_end) // 2 for s in flex.stages}     # a timestep inside each grid's stage
    pixart = isinstance(config, dict)
    sampler = sampler or ("dpm-solver++" if pixart else "ddpm")
    steps = steps or (20 if pixart else 250)
    timer = _timer(dev)

    def forward(model, grid=None):
        t = torch.full((batch,), t_of[grid] if grid else 500, device=dev, dtype=torch.long)
        return lambda: call(model, x, t, grid, False)

    def cfg_step(model, grid=None):
        # One sampling step: the doubled CFG batch through the model, guidance, then the scheduler's update
        # (a fresh scheduler each time, made outside the timed call: multistep solvers keep state).
        scheduler = make_scheduler(sampler, linear_betas(num_timesteps), steps)
        t_value = t_of[grid] if grid else 500
        t_step = scheduler.timesteps[(scheduler.timesteps - t_value).abs().argmin()]
        t = torch.full((batch,), int(t_step), device=dev, dtype=torch.long)
        latents = x.movedim(-3, 1).float()              # (B, C, F, H, W) for video; images unchanged

        def run():
            eps = call(model, x, t, grid, True).movedim(-3, 1)
            channels = latents.shape[1]
            model_output = eps.float() if sampler == "ddpm" and eps.shape[1] == 2 * channels else eps[:, :channels]
            scheduler.step(model_output.float(), t_step, latents)
        return run

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
    if pixart and attention != "flexgen":   # diffusers' own attention processors (SDPA), not flexgen.attention
        processors = [type(p).__name__ for p in dense.attn_processors.values()]
        result["attention_calls"] = {f"diffusers {name} modules": processors.count(name) for name in set(processors)}
    for kind in kinds:
        median = {key: statistics.median(v) for key, v in times[kind].items()}
        dynamic = mean_over_stages(flex.stages, median.__getitem__)
        ratio = dynamic / median["dense"]
        result[kind] = {"dense_s": median["dense"], "dynamic_s": dynamic, "per_grid_s": {g: median[g] for g in grids},
                        "latency_ratio": ratio, "speedup": 1 / ratio, "latency_over_flops": ratio / flops_ratio}
    if cfg_scale is not None:          # a whole sampling run: each step at the grid of its own timestep
        timesteps = make_scheduler(sampler, linear_betas(num_timesteps), steps).timesteps
        step_grids = [flex.grid_for(torch.tensor([int(t)])) for t in timesteps]
        median = result["cfg_step"]
        dense_s = median["dense_s"] * len(step_grids)
        dynamic_s = sum(median["per_grid_s"][g] for g in step_grids)
        result["sampling"] = {"sampler": sampler, "steps": len(step_grids), "dense_s": dense_s,
                              "dynamic_s": dynamic_s, "speedup": dense_s / dynamic_s,
                              "grids": {g: step_grids.count(g) for g in grids if g in step_grids}}
    return result
