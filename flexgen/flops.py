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


def released_poolingformer_extra_gmacs(config, density) -> float:
    """GMACs the released FlexDiT code spends beyond ours on its Poolingformers: it projects V for all N tokens,
    multiplies an N×N all-ones softmax with V and projects all N outputs (2NC² + N²C per sequence), where we
    project the token mean once (2C²). Per sample: one spatial sequence per frame."""
    from flexgen.density import parse_layout
    N, C = config.grid_size ** 2, config.hidden_size
    pf = parse_layout(density.layout, config.num_spatial).count("P")
    return pf * config.num_frames * (2 * N * C * C + N * N * C - 2 * C * C) / 1e9


def density_report(config, density, num_timesteps: int = 1000) -> dict:
    """Dense vs FlexDiT MACs: per grid of the schedule, the time average over t uniform in [0, T), the
    reduction, and the same average as the released code would count it."""
    from flexgen.density import stages
    from flexgen.density.schedules import mean_over_stages

    stage_list = stages(density.schedule, num_timesteps)
    per_grid = {s.grid: latte_macs(config, density, s.grid, num_timesteps).gmacs for s in stage_list}
    dense = latte_macs(config)
    gmacs = mean_over_stages(stage_list, per_grid.__getitem__)
    released = gmacs + released_poolingformer_extra_gmacs(config, density)
    return {"params": latte_macs(config, density, stage_list[0].grid, num_timesteps).params,
            "params_dense": dense.params, "gmacs_dense": dense.gmacs, "gmacs": gmacs,
            "reduction": 1 - gmacs / dense.gmacs, "gmacs_released_code": released,
            "reduction_released_code": 1 - released / dense.gmacs,
            "stages": [[s.t_start, s.t_end, s.grid, per_grid[s.grid]] for s in stage_list]}
