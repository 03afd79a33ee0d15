"""Parameter and MAC counts of a model, measured on the `meta` device (no weights, no memory).

Papers in this field quote multiply-accumulates as "FLOPs"; we report MACs (`gmacs` = MACs × 1e-9), counted by
`torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per MAC) over one forward pass. Every matrix
product is counted: linear layers, the patch-embedding convolution and the attention products q·kᵀ and a·v.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class FlopReport:
    params: int                                     # trainable parameters
    gmacs: float                                    # MACs of one forward pass for one sample, ×1e-9
    breakdown: dict[str, float] = field(default_factory=dict)  # GMACs per top-level component
    by_op: dict[str, float] = field(default_factory=dict)      # GMACs per aten op (addmm: linear, bmm: attention)

    def to_dict(self) -> dict:
        return {"params": self.params, "gmacs": self.gmacs, "breakdown": self.breakdown, "by_op": self.by_op}


def count_macs(build: Callable[[], torch.nn.Module], inputs: Callable[[], tuple[tuple, dict]]) -> FlopReport:
    """Build the model and its example inputs on the meta device and count one forward pass.
    `inputs()` returns (args, kwargs) for a batch of one sample."""
    with torch.device("meta"):
        model = build().eval()
        args, kwargs = inputs()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    per_module = {name: sum(ops.values()) / 2e9 for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    breakdown = {}
    for name, child in model.named_children():                   # top-level components; lists by their items
        names = [f"{root}.{name}.{i}" for i in range(len(child))] if isinstance(child, torch.nn.ModuleList) \
            else [f"{root}.{name}"]
        if any(n in per_module for n in names):
            breakdown[name] = sum(per_module.get(n, 0.0) for n in names)
    total = counter.get_total_flops() / 2e9
    by_op = {str(op).removeprefix("aten."): macs / 2e9 for op, macs in counter.get_flop_counts()["Global"].items()}
    return FlopReport(params=params, gmacs=total, breakdown=breakdown, by_op=by_op)


def latte_macs(config, density=None, grid: int | None = None, num_timesteps: int = 1000) -> FlopReport:
    """Count a Latte / DiT model (`flexgen.video.latte.LatteConfig`) on one sample of its input size; with a
    `flexgen.density.DensityConfig`, its FlexDiT version at sparse grid side `grid`."""
    from flexgen.video.flex_latte import FlexLatte
    from flexgen.video.latte import Latte

    def inputs():
        frames = (config.num_frames,) if config.temporal else ()
        x = torch.zeros(1, *frames, config.in_channels, config.input_size, config.input_size)
        t = torch.zeros(1, dtype=torch.long)
        kwargs = {"y": torch.zeros(1, dtype=torch.long)} if config.num_classes else {}
        return (x, t), (kwargs if density is None else {**kwargs, "grid": grid})

    if density is None:
        return count_macs(lambda: Latte(config), inputs)
    return count_macs(lambda: FlexLatte(config, density, num_timesteps), inputs)


def pixart_macs(config: dict, density=None, grid: int | None = None, num_timesteps: int = 1000,
                text_tokens: int = 120) -> FlopReport:
    """Count a PixArt-α transformer (`PixArtTransformer2DModel` arguments, e.g. `flexgen.t2i.pixart.PRESETS`) on one
    sample of its sample size with `text_tokens` T5 tokens; with a DensityConfig, its FlexDiT version at `grid`."""
    from flexgen.t2i.pixart import FlexPixArtTransformer2DModel, density_config_entries

    def build():
        extra = {} if density is None else {**density_config_entries(density), "num_train_timesteps": num_timesteps}
        return FlexPixArtTransformer2DModel(**config, **extra)

    def inputs():
        side = config["sample_size"]
        kwargs = {"encoder_attention_mask": torch.ones(1, text_tokens)}
        if config.get("use_additional_conditions", side == 128):         # 1024-MS: resolution, aspect ratio
            kwargs["added_cond_kwargs"] = {"resolution": torch.ones(1, 2), "aspect_ratio": torch.ones(1, 1)}
        if density is not None:
            kwargs["grid"] = grid
        x = torch.zeros(1, config.get("in_channels", 4), side, side)
        return (x, torch.zeros(1, text_tokens, config["caption_channels"]), torch.zeros(1, dtype=torch.long)), kwargs

    return count_macs(build, inputs)


def model_macs(config, density=None, grid: int | None = None, num_timesteps: int = 1000) -> FlopReport:
    """`latte_macs` for a LatteConfig, `pixart_macs` for PixArt-α arguments (a dict)."""
    count = pixart_macs if isinstance(config, dict) else latte_macs
    return count(config, density, grid, num_timesteps)


def released_poolingformer_extra_gmacs(config, density) -> float:
    """GMACs the released FlexDiT code spends beyond ours on its Poolingformers: it projects V for all N tokens,
    multiplies an N×N all-ones softmax with V and projects all N outputs (2NC² + N²C per sequence), where we
    project the token mean once (2C²). Per sample: one spatial sequence per frame."""
    from flexgen.density import parse_layout
    if isinstance(config, dict):                                   # PixArt-α: one frame
        grid, C = config["sample_size"] // config["patch_size"], config["num_attention_heads"] * \
            config["attention_head_dim"]
        blocks, frames = config["num_layers"], 1
    else:
        grid, C, blocks, frames = config.grid_size, config.hidden_size, config.num_spatial, config.num_frames
    N = grid ** 2
    pf = parse_layout(density.layout, blocks).count("P")
    return pf * frames * (2 * N * C * C + N * N * C - 2 * C * C) / 1e9


def density_report(config, density, num_timesteps: int = 1000) -> dict:
    """Dense vs FlexDiT MACs (Latte / DiT config or PixArt-α arguments): per grid of the schedule, the time average
    over t uniform in [0, T), the reduction, and the same average as the released code would count it."""
    from flexgen.density import stages
    from flexgen.density.schedules import mean_over_stages

    stage_list = stages(density.schedule, num_timesteps)
    per_grid = {s.grid: model_macs(config, density, s.grid, num_timesteps).gmacs for s in stage_list}
    dense = model_macs(config)
    gmacs = mean_over_stages(stage_list, per_grid.__getitem__)
    released = gmacs + released_poolingformer_extra_gmacs(config, density)
    return {"params": model_macs(config, density, stage_list[0].grid, num_timesteps).params,
            "params_dense": dense.params, "gmacs_dense": dense.gmacs, "gmacs": gmacs,
            "reduction": 1 - gmacs / dense.gmacs, "gmacs_released_code": released,
            "reduction_released_code": 1 - released / dense.gmacs,
            "stages": [[s.t_start, s.t_end, s.grid, per_grid[s.grid]] for s in stage_list]}
