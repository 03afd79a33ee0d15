"""Parameter and MAC counts of a model, measured on the `meta` device (no weights, no memory).

Each family counts its own network through `count_macs` (`flexgen.backbones.*.LatteCost / PixArtCost`);
`flexgen.policies.cost` turns those counts into per-timestep and per-sample numbers.

Papers in this field quote multiply-accumulates as "FLOPs"; we report MACs (`gmacs` = MACs × 1e-9), counted by
`torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per MAC) over one forward pass. Every matrix
product is counted: linear layers, the patch-embedding convolution and the attention products q·kᵀ and a·v.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # torch 2.14's FlopCounterMode has no formula for SDPA's CPU flash kernel (it counts SDPA on the meta device and
    # on CUDA): the same product as `_scaled_dot_product_flash_attention`, counted by the same `sdpa_flop_count`
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def flop_counter() -> FlopCounterMode:
    """`FlopCounterMode` (no display) that also counts SDPA on the CPU, so a real CPU forward and a meta-device one
    count the same attention products."""
    return FlopCounterMode(display=False, custom_mapping=_CPU_SDPA)


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
    with torch.no_grad(), flop_counter() as counter:
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
