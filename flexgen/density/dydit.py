"""DyDiT, the second density policy (Zhao et al. 2024, arXiv 2410.03456): its run configuration, what a routed
forward records, the fine-tuning objective and the MACs of a forward from its real kept counts.

A routed network (`flexgen.video.dy_latte.DyLatte`) fills `routing` with one `BlockRouting` per block on every
forward: the head, MLP-group and token gates each sample used. From those:

- `dydit_losses` (training): diffusion loss of the dynamic model, + the complete model's diffusion loss on the same
  x_t and noise during the warm-up stage (one forward on the doubled batch, so DDP / FSDP see one forward per
  backward), + w·(mean_b F_b − λ_step)² (`flexgen.density.budget`).
- `routed_macs` (cost): MACs per sample of what the skipping forward computes: the dense forward minus every
  block's attention and MLP, plus each block's attention at its active heads and its MLP at its active units on its
  kept tokens, plus the routers. Equal to `FlopCounterMode` of the skipping forward (tests/test_dydit.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from flexgen.density.budget import BlockCost, budget_loss, flops_fraction, target_at
from flexgen.schema import check_range


@dataclass
class DyDiTConfig:
    target: float | None = None     # λ, the mean FLOPs fraction of the blocks to train for; None = no DyDiT
    loss_weight: float = 2.0        # w of the budget loss (DyDiT `token_loss_ratio`)
    hold_steps: int = 100           # λ held at 1 for these steps, then annealed linearly ...
    anneal_steps: int = 1000        # ... to `target` over these (DyDiT `warmup_step`)
    complete_steps: int = 0         # steps that add the complete model's diffusion loss (DyDiT's warm-up stage)
    strata: int = 4                 # stratified training t: local sample i draws from stratum i mod strata (1 = off)

    def __post_init__(self):
        if self.target is not None and not 0 < self.target <= 1:
            raise ValueError(f"target: the FLOPs fraction λ must be in (0, 1], got {self.target!r}")
        check_range(self, loss_weight=(0, None), hold_steps=(0, None), anneal_steps=(0, None),
                    complete_steps=(0, None), strata=(1, None))

    @property
    def enabled(self) -> bool:
        return self.target is not None


class BlockRouting(NamedTuple):
    """The gates one block used in a forward, per sample: heads (B, H), MLP groups (B, G) and tokens (B, n) over
    the n tokens of the sample the block saw (all ones where a token router is absent)."""
    heads: torch.Tensor
    groups: torch.Tensor
    tokens: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# Training.


def _doubled(cond: dict, batch: int) -> dict:
    """Condition kwargs for the batch run twice (tensors with the batch dimension concatenated)."""
    return {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.shape[:1] == (batch,) else v
            for k, v in cond.items()}


def dydit_losses(diffusion: Any, net: Callable, routed: Any, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 cond: dict, step: int, config: DyDiTConfig, costs: Sequence[BlockCost]) -> dict[str, torch.Tensor]:
    """The loss terms of one micro-batch (`loss` is minimised, the rest logged). `net` is the model (or its DDP /
    FSDP wrapper) taking `complete=` (B,) bool in its condition; `routed` is the network whose `routing` the
    forward fills; `costs` are its blocks' `BlockCost`s in `routing` order."""
    B = x0.shape[0]
    complete = step < config.complete_steps
    if complete:                                        # rows B.. run the complete model on the same x_t and noise
        flags = torch.arange(2 * B, device=x0.device) >= B
        terms = diffusion.training_losses(net, torch.cat([x0, x0]), torch.cat([t, t]), torch.cat([noise, noise]),
                                          {**_doubled(cond, B), "complete": flags})
    else:
        terms = diffusion.training_losses(net, x0, t, noise, cond)
    routing = routed.routing
    fraction = flops_fraction(costs, [r.heads[:B] for r in routing], [r.groups[:B] for r in routing],
                              [r.tokens[:B] for r in routing])                                      # (B,)
    target = target_at(step, config.target, config.hold_steps, config.anneal_steps)
    budget = budget_loss(fraction, target)
    loss = terms["loss"][:B].mean() + config.loss_weight * budget
    out = {"mse": terms["mse"][:B], "vb": terms["vb"][:B], "budget_loss": budget.detach(),
           "flops_fraction": fraction.detach().mean(), "flops_target": torch.tensor(target)}
    if complete:
        out["loss_complete"] = terms["loss"][B:].detach().mean()
        loss = loss + terms["loss"][B:].mean()
    out.update(keep_rates(routing, B))
    return {"loss": loss, **out}


def keep_rates(routing: Sequence[BlockRouting], batch: int | None = None) -> dict[str, torch.Tensor]:
    """Mean head, group and token keep rates over the first `batch` samples: overall and per block (`keep/h03`:
    heads of block 3; blocks in `routing` order)."""
    rows = slice(None, batch)
    out = {}
    for kind, i in (("heads", 0), ("groups", 1), ("tokens", 2)):
        rates = [r[i][rows].detach().float().mean() for r in routing]
        out[f"keep_{kind}"] = torch.stack(rates).mean()
        out.update({f"keep/{kind[0]}{b:02d}": rate for b, rate in enumerate(rates)})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Cost from the real kept counts.


@dataclass(frozen=True)
class RoutedBlock:
    """A block's shape for counting: `cost` at full width, its heads, MLP groups and tokens per sample."""
    cost: BlockCost
    heads: int
    groups: int
    tokens: int
    dim: int


def routed_macs(blocks: Sequence[RoutedBlock], routing: Sequence[BlockRouting], other_macs: float,
                router_hidden: int) -> torch.Tensor:
    """(B,) MACs per sample of the skipping forward that produced `routing`. `other_macs`: the forward outside the
    blocks' attention and MLP (embeddings, modulation, final layer); `router_hidden`: the token router's width."""
    total = torch.full((routing[0].heads.shape[0],), float(other_macs), dtype=torch.float64)
    for block, r in zip(blocks, routing, strict=True):
        heads, units = r.heads.double().mean(1), r.groups.double().mean(1)    # equal heads, equal groups
        kept = r.tokens.double().sum(1)                                       # tokens that ran the MLP
        total += block.cost.attention * heads + block.cost.mlp * units * kept / block.tokens
        # DyDiT's routers: width D -> H - 1 and D -> G - 1 per sample, tokens D -> D/16 -> 1 on every token
        total += block.dim * (block.heads + block.groups - 2) + block.tokens * (block.dim + 1) * router_hidden
    return total
