"""DyDiT (Zhao et al. 2024, arXiv 2410.03456): what a routed forward records, the fine-tuning objective and the MACs
of a forward from its real kept counts.

The DyDiT policy (`flexgen.policies.dydit.policy.DyDiT`) fills `routing` with one `BlockRouting` per block on every
forward: the head, MLP-group and token gates each sample used. From those:

- `dydit_losses` (training): diffusion loss of the dynamic model, + the complete model's diffusion loss on the same
  x_t and noise during the warm-up stage (one forward on the doubled batch, so DDP / FSDP see one forward per
  backward), + w·(mean_b F_b − λ_step)² (`flexgen.policies.dydit.budget`).
- `routed_macs` (cost): MACs per sample of what the skipping forward computes: the dense forward minus every
  block's attention and MLP, plus each block's attention at its active heads and its MLP at its active units on its
  kept tokens, plus the routers. Equal to `FlopCounterMode` of the skipping forward (tests/policies/test_dydit.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from flexgen.policies.dydit.budget import BlockCost, budget_loss, flops_fraction, target_at
from flexgen.policies.dydit.config import DyDiTConfig


class BlockRouting(NamedTuple):
    """The gates one block used in a forward, per sample: heads (B, H), MLP groups (B, G) and tokens (B, n) over
    the n tokens of the sample the block saw (None: the block has no token router, every token ran its MLP)."""
    heads: torch.Tensor
    groups: torch.Tensor
    tokens: torch.Tensor | None


# ----------------------------------------------------------------------------------------------------------------
# Training.


def _doubled(cond: dict, batch: int) -> dict:
    """Condition kwargs for the batch run twice (tensors with the batch dimension concatenated)."""
    return {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.shape[:1] == (batch,) else v
            for k, v in cond.items()}


def dydit_losses(diffusion: Any, net: Callable, routed: Any, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 cond: dict, step: int, config: DyDiTConfig) -> dict[str, torch.Tensor]:
    """The loss terms of one micro-batch (`loss` is minimised, the rest logged). `net` is the model (or its DDP /
    FSDP wrapper) taking `complete=` (B,) bool in its condition; `routed` is the DyDiT policy whose `routing` the
    forward fills and whose `block_costs()` are its blocks' `BlockCost`s in `routing` order at the tokens that
    forward processed (FlexDiT ∘ DyDiT: λ is a fraction of the FlexDiT forward at its grid)."""
    B = x0.shape[0]
    complete = step < config.complete_steps
    if complete:                                        # rows B.. run the complete model on the same x_t and noise
        flags = torch.arange(2 * B, device=x0.device) >= B
        terms = diffusion.training_losses(net, torch.cat([x0, x0]), torch.cat([t, t]), torch.cat([noise, noise]),
                                          {**_doubled(cond, B), "complete": flags})
    else:
        terms = diffusion.training_losses(net, x0, t, noise, cond)
    routing = routed.routing
    costs = routed.block_costs()                        # at the token counts of this forward (FlexDiT's grid)
    fraction = flops_fraction(costs, [r.heads[:B] for r in routing], [r.groups[:B] for r in routing],
                              [None if r.tokens is None else r.tokens[:B] for r in routing])        # (B,)
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
        rates = {b: r[i][rows].detach().float().mean() for b, r in enumerate(routing) if r[i] is not None}
        if not rates:                               # (no block routes tokens)
            continue
        out[f"keep_{kind}"] = torch.stack(list(rates.values())).mean()
        out.update({f"keep/{kind[0]}{b:02d}": rate for b, rate in rates.items()})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Cost from the real kept counts.


@dataclass(frozen=True)
class RoutedBlock:
    """A block's shape for counting: `cost` at full width, its heads, MLP groups and (query) tokens per sample, and
    whether a token router picks which of them run the MLP."""
    cost: BlockCost
    heads: int
    groups: int
    tokens: int
    dim: int
    token_router: bool = True


def routed_macs(blocks: Sequence[RoutedBlock], routing: Sequence[BlockRouting], other_macs: float,
                router_hidden: int) -> torch.Tensor:
    """(B,) MACs per sample of the skipping forward that produced `routing`. `other_macs`: the forward outside the
    blocks' attention and MLP (embeddings, modulation, final layer); `router_hidden`: the token router's width."""
    total = torch.full((routing[0].heads.shape[0],), float(other_macs + router_macs(blocks, router_hidden)),
                       dtype=torch.float64)
    for block, r in zip(blocks, routing, strict=True):
        heads, units = r.heads.double().mean(1), r.groups.double().mean(1)    # equal heads, equal groups
        kept = block.tokens if r.tokens is None else r.tokens.double().sum(1)   # tokens that ran the MLP
        total += block.cost.attention * heads + block.cost.mlp * units * kept / block.tokens
    return total


def forward_macs(policy: Any, cost: Any, routing: Sequence[BlockRouting] | None = None,
                 grid: int | None = None) -> torch.Tensor:
    """(B,) MACs per sample of a DyDiT policy's last forward (or of gates `routing` at FlexDiT grid `grid`):
    `routed_macs` over `policy.block_shapes(grid)`, with everything outside the blocks' attention and MLP
    (embeddings, modulation, fusions, final layer) from the family's cost model `cost` at that grid."""
    if routing is None:
        routing, grid = policy.routing, policy.last_grid
    if not routing or routing[0] is None:
        raise ValueError("the MACs of a routed forward need a DyDiT model after a forward")
    shapes = policy.block_shapes(grid)
    other = cost.forward_macs(grid).gmacs * 1e9 - sum(b.cost.attention + b.cost.mlp for b in shapes)
    return routed_macs(shapes, routing, other, policy.token_router_hidden)


def router_macs(blocks: Sequence[RoutedBlock], router_hidden: int) -> float:
    """MACs per sample of DyDiT's routers: width D -> H - 1 and D -> G - 1, tokens D -> D/16 -> 1 on every token."""
    return float(sum(b.dim * (b.heads + b.groups - 2) + b.token_router * b.tokens * (b.dim + 1) * router_hidden
                     for b in blocks))


# ----------------------------------------------------------------------------------------------------------------
# A deterministic router setting for untrained models (bench without weights).


def synthetic_width(num_units: int, target: float) -> int:
    """Units kept per block by `set_synthetic_routers`: round(λ·H), at least the always-on one."""
    return max(1, min(num_units, round(target * num_units)))


def synthetic_units(num_units: int, target: float, scattered: bool = False) -> torch.Tensor:
    """The units `set_synthetic_routers` keeps (ascending, unit 0 among them): the first round(λ·H), or with
    `scattered` as many spread evenly over the block (as a trained router's, not one contiguous run)."""
    k = synthetic_width(num_units, target)
    if not scattered:
        return torch.arange(k)
    return torch.tensor(sorted({round(i * num_units / k) for i in range(k)}))


# With `scattered`, the share of tokens each token router keeps for the MLP (DyDiT's trained routers skip some).
SCATTERED_TOKENS = 0.7


@torch.no_grad()
def set_synthetic_routers(width_routers: Sequence[Any], token_routers: Sequence[Any], target: float,
                          scattered: bool = False) -> float:
    """Routers that keep round(λ·H) heads and MLP groups of every block at every t (weights 0, biases ±15): the first
    ones, or with `scattered` ones spread over the block, so slices are copies and not views, as a trained router's
    are. Token routers keep every token (bias +35), or with `scattered` the `SCATTERED_TOKENS` share of the tokens
    of the first input each sees (random weights; the bias is set at that input's quantile), so the MLP runs on
    gathered tokens. A fixed sub-network whose blocks cost λ of their width MACs when λ·H is an integer. Returns
    the blocks' realised width fraction."""
    if not 0 < target <= 1:
        raise ValueError(f"the FLOPs target λ must be in (0, 1], got {target}")
    kept = []
    for router in width_routers:
        for layer, units in ((router.heads, router.num_heads), (router.groups, router.num_groups)):
            on = synthetic_units(units, target, scattered)
            layer.weight.zero_()
            layer.bias.copy_(torch.where(torch.isin(torch.arange(1, units), on), 15.0, -15.0))   # unit 0 is always on
            kept.append(len(on) / units)
    g = torch.Generator().manual_seed(0)
    for router in token_routers:
        last = router.mlp[2]
        last.bias.fill_(35.0)
        if scattered:               # random features, all active (no ReLU zeros: logits without ties at the quantile)
            first = router.mlp[0]
            first.weight.copy_(torch.randn(first.weight.shape, generator=g, dtype=first.weight.dtype)
                               / first.in_features ** 0.5)
            first.bias.fill_(8.0)
            last.weight.copy_(torch.randn(last.weight.shape, generator=g, dtype=last.weight.dtype))
            _keep_share_of_first_input(router, SCATTERED_TOKENS)
        else:
            last.weight.zero_()
    return sum(kept) / len(kept)


def _keep_share_of_first_input(router: Any, share: float) -> None:
    """Set the token router's output bias, at its first call, so that it keeps `share` of that input's tokens."""
    def hook(module, args):
        with torch.no_grad():
            last = module.mlp[2]
            last.bias.zero_()
            logits = module.logits(args[0]).flatten().float()
            last.bias.fill_(-float(torch.quantile(logits, 1 - share)) + 1e-6)
        handle.remove()

    handle = router.register_forward_pre_hook(hook)


def synthetic_routing(blocks: Sequence[RoutedBlock], target: float, batch: int = 1,
                      scattered: bool = False) -> list[BlockRouting]:
    """The gates `set_synthetic_routers` produces, without running the model (for counting on the meta device;
    with `scattered`, the first `SCATTERED_TOKENS` of each block's tokens stand for the ones its router keeps)."""
    out = []
    for b in blocks:
        heads, groups = (torch.zeros(units, dtype=torch.float64).index_fill_(
            0, synthetic_units(units, target, scattered), 1.0).expand(batch, -1) for units in (b.heads, b.groups))
        tokens = (torch.arange(b.tokens) < round(SCATTERED_TOKENS * b.tokens) if scattered
                  else torch.ones(b.tokens, dtype=torch.bool)).double().expand(batch, -1)
        out.append(BlockRouting(heads, groups, tokens if b.token_router else None))
    return out
