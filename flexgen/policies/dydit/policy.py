"""DyDiT as a policy component: the width and token routers it adds to a network, the bookkeeping of one routed
forward (masks from the timestep embedding, the masked or the skipping path, the gates each block used), and the
cost, losses and weights that follow from it. Written once for every family: a family's block adapter runs its
block with the `BlockGates` of `gates(index)` and reports the token gates back with `record`.

- Width masks are a function of the embedding the routers read (t; PixArt-α 1024-MS: and the size conditions).
- The skipping forward (eval mode with one embedding for the whole batch, as every sampler step; or `skip = True`)
  computes only the active heads, groups and tokens through each block's `SliceCache`; the masked forward
  (training, and the definition) computes everything and gates it.
- `complete` (B,) bool runs those samples through the complete model (DyDiT's warm-up loss on the same forward).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, NamedTuple

import torch
from torch import nn

from flexgen.policies.base import Policy
from flexgen.policies.dydit.budget import BlockCost
from flexgen.policies.dydit.config import DyDiTConfig
from flexgen.policies.dydit.routers import TokenRouter, WidthRouter
from flexgen.policies.dydit.routing import (
    BlockRouting,
    RoutedBlock,
    dydit_losses,
    forward_macs,
    router_macs,
    set_synthetic_routers,
    synthetic_routing,
)
from flexgen.policies.dydit.width import SliceCache
from flexgen.policies.timesteps import StratifiedTimesteps, timestep_weights

METADATA_KEY = "flexgen_routers"            # our safetensors: "dydit"
METADATA_SECTION = "flexgen_dydit"          # ... and {"target": λ, "trained": whether the routers were trained,
                                            # "steps": the optimizer steps of the run that exported it}
ROUTER_PREFIXES = ("width_routers.", "token_routers.")
# The released DyDiT layout (DyDiT/models.py), per block: attn_rate.router (heads), mlp_rate.router (MLP groups),
# token_selection.mlp_head.{0,2} (tokens).
RELEASED_ROUTER = re.compile(r"(?P<block>\w+\.\d+)\.(?P<part>attn_rate\.router|mlp_rate\.router|"
                             r"token_selection\.mlp_head)\.(?P<rest>.+)")


class BlockGates(NamedTuple):
    """What a block adapter runs one block with: head (·, H) and MLP-group (·, G) gates, its token router (None:
    every token runs the MLP), its slice cache (skipping; the gates are then (H,) / (G,)) and the rows that run the
    complete model (masked path only)."""
    heads: torch.Tensor
    groups: torch.Tensor
    token_router: nn.Module | None
    sliced: SliceCache | None
    complete: torch.Tensor | None


class DyDiT(Policy):
    """Timestep-wise width and per-token MLP skipping (Zhao et al. 2024, arXiv 2410.03456)."""

    name = "dydit"
    section, setting, order = "dydit", "dydit.target", 20
    dense = False
    measured = True
    gated = True

    @classmethod
    def from_section(cls, config: DyDiTConfig, run: Any) -> DyDiT | None:
        return cls(config) if config.enabled else None

    @staticmethod
    def at_target(run: Any, target: float) -> Any:
        """`run` with DyDiT at λ = `target` (`bench --target`: the synthetic routers' setting, no weights)."""
        return dataclasses.replace(run, dydit=dataclasses.replace(run.dydit, target=target))

    def __init__(self, config: DyDiTConfig | None = None):
        self.config = config if config is not None else DyDiTConfig()
        self.skip: bool | None = None       # None: skip in eval mode when the batch shares one embedding; or force
        self.routing: list[BlockRouting | None] = []
        self.last_grid: int | None = None   # composed with FlexDiT: the sparse grid of the last forward
        self._masks: list | None = None
        self._pattern: bytes | None = None
        self._complete: torch.Tensor | None = None
        self._skipping = False
        self.trained: bool | None = None    # False: routers fresh from a conversion (all on), never trained
        self.steps: int | None = None       # the exporting run's optimizer steps

    step_args = ("complete",)
    joint_images = False                    # (not yet: its masks are per sample, the images' per frame)

    def attach(self, net: nn.Module) -> None:
        """Register the routers on `net`: `width_routers.k` for every block of `net.routed_blocks()` (name, block),
        `token_routers.j` for those where `net.routes_tokens(k)`; each block's slice cache from the family's
        block adapter (`net.slice_cache(block)`)."""
        named = net.routed_blocks()
        self._bind(net)
        self.block_names = [name for name, _ in named]
        self._caches = [net.slice_cache(block) for _, block in named]
        net.width_routers = nn.ModuleList(WidthRouter(net.hidden_dim, net.num_heads) for _ in named)
        routed = [k for k in range(len(named)) if net.routes_tokens(k)]
        net.token_routers = nn.ModuleList(TokenRouter(net.hidden_dim) for _ in routed)
        self._token_slot = {k: j for j, k in enumerate(routed)}

    # ---- one routed forward -----------------------------------------------------------------------------

    def begin(self, net, t, complete: torch.Tensor | None = None) -> None:
        """Picks the skipping or the masked path for timesteps t (B,), checks `complete`, resets `routing`."""
        shared_t = not bool((t != t[0]).any())
        if self.skip and not shared_t:
            raise ValueError("the skipping forward needs one timestep for the whole batch (masks are per step)")
        self._skipping = self.skip if self.skip is not None else (not net.training and shared_t)
        if complete is not None:
            if complete.shape != t.shape:
                raise ValueError(f"complete must be one flag per sample {tuple(t.shape)}, got {tuple(complete.shape)}")
            if self._skipping and bool(complete.any()):
                raise ValueError("the skipping forward runs the routed model: complete=True needs skip=False")
        self._complete, self.routing = complete, [None] * len(self._caches)

    def end(self) -> None:
        self._masks = self._complete = None
        self.last_grid = self.net.policy.grid()        # composed with FlexDiT: the grid this forward ran at

    def embedded(self, embedding: torch.Tensor) -> None:
        """Every block's width masks from the embedding (B, D) its routers read."""
        if self._skipping and not torch.equal(embedding, embedding[:1].expand_as(embedding)):
            if self.skip:
                raise ValueError("the skipping forward needs one mask for the batch: every row at the same t and "
                                 "size conditions")
            self._skipping = False                     # rows of other sizes (1024-MS): the masked forward
        on = None if self._complete is None else self._complete[:, None]
        masks = []
        for router in self.net.width_routers:
            heads, groups = router(embedding)                                 # (B, H), (B, G)
            masks.append((heads, groups) if on is None else
                         (torch.where(on, 1.0, heads).to(heads.dtype), torch.where(on, 1.0, groups).to(heads.dtype)))
        self._masks = masks

    def signature(self) -> bytes | None:
        """Every block's head and group gates of this forward (its width pattern per sample); after the forward,
        the last one taken."""
        if self._masks is not None:
            gates = torch.cat([torch.cat([h, g], -1) for h, g in self._masks], -1)
            self._pattern = gates.to(torch.uint8).cpu().numpy().tobytes()
        return self._pattern

    def run_block(self, net, index, call):
        """Block `index` at the width its routers chose, through the family's block adapter
        (`net.partial_block(block, x, cond, context, gates, **extra)` -> (out, token gates))."""
        gates = []                  # taken once: gradient checkpointing runs this again in backward, after `end`

        def partial_width(block, x, cond, context, **extra):
            if not gates:
                gates.append(self.gates(index, x.shape[0]))
            return net.partial_block(block, x, cond, context, gates[0], **extra)

        out, tokens = call(partial_width)
        self.record(index, tokens)
        return out

    def gates(self, index: int, sequences: int) -> BlockGates:
        """Block `index`'s gates for its x of `sequences` = B·per sequences (per consecutive ones per sample)."""
        heads, groups = self._masks[index]                                    # (B, H), (B, G)
        router = self.token_router(index)
        if self._skipping:                                                    # one mask for the batch
            return BlockGates(heads[0], groups[0], router, self._caches[index], None)
        per, complete = sequences // heads.shape[0], self._complete
        if per > 1:
            heads, groups = heads.repeat_interleave(per, 0), groups.repeat_interleave(per, 0)
            complete = None if complete is None else complete.repeat_interleave(per)
        return BlockGates(heads, groups, router, None, complete)

    def record(self, index: int, tokens: torch.Tensor | None) -> None:
        """The gates block `index` used (its token gates (B·per, n) as returned by the adapter)."""
        heads, groups = self._masks[index]
        B = heads.shape[0]
        self.routing[index] = BlockRouting(heads, groups, None if tokens is None else tokens.reshape(B, -1))

    def token_router(self, index: int) -> TokenRouter | None:
        slot = self._token_slot.get(index)
        return None if slot is None else self.net.token_routers[slot]

    @property
    def token_router_hidden(self) -> int:
        return self.net.token_routers[0].hidden if len(self.net.token_routers) else 0

    # ---- what a run records, trains and costs -----------------------------------------------------------

    @staticmethod
    def overrides(target: float) -> list[str]:
        """Run-config overrides that set this policy at λ = `target`."""
        return [f"dydit.target={target}"]

    def label(self) -> str:
        name = "dydit" if self.config.target is None else f"dydit {self.config.target:g}"
        return name + (" (untrained conversion)" if self.trained is False else "")

    def describe(self) -> str:
        target = "" if self.config.target is None else f"λ = {self.config.target:g}; "
        return f"DyDiT routers ({target}heads and MLP groups in importance order)"

    def sections(self) -> dict[str, Any]:
        return {"dydit": dataclasses.asdict(self.config)}

    def timesteps(self, model: Any):
        """Stratified t (its budget holds the batch mean, so each batch covers t evenly)."""
        if self.config.strata > 1:
            return StratifiedTimesteps(model.num_timesteps, self.config.strata, timestep_weights(model.run.diffusion))
        return None

    def losses(self, model, diffusion, net, x0, t, noise, cond, step):
        return dydit_losses(diffusion, net, self, x0, t, noise, cond, step, self.config)

    def block_shapes(self, grid: int | None = None) -> list[RoutedBlock]:
        """Each block's full-width cost and units at FlexDiT grid `grid` (the family's `net.block_shapes`)."""
        return self.net.block_shapes(grid)

    def block_costs(self) -> list[BlockCost]:
        """The blocks' full-width costs at the tokens of the last forward (what the budget loss weighs)."""
        return [b.cost for b in self.net.block_shapes(self.net.policy.grid(), last=True)]

    def router_macs(self, grid: int | None = None) -> float:
        return router_macs(self.block_shapes(grid), self.token_router_hidden)

    def forward_macs(self, cost: Any, routing: Any = None, grid: int | None = None) -> torch.Tensor:
        return forward_macs(self, cost, routing, grid)

    def synthetic_macs(self, cost: Any, grid: int | None, target: float, scattered: bool = False) -> float:
        """MACs per sample of one forward at `grid` with the synthetic λ setting, counted without running it."""
        return float(forward_macs(self, cost, synthetic_routing(self.block_shapes(grid), target,
                                                                scattered=scattered), grid))

    def slice_caches(self) -> list[SliceCache]:
        return self._caches

    def set_synthetic(self, target: float, scattered: bool = False) -> float:
        return set_synthetic_routers(self.net.width_routers, self.net.token_routers, target, scattered)

    # ---- weights ----------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: "dydit", METADATA_SECTION: json.dumps({"target": self.config.target,
                                                                     "trained": self.trained, "steps": self.steps})}

    def trained_for(self, steps: int) -> None:
        self.steps = steps
        self.trained = self.trained is not False or steps > 0

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: Any) -> DyDiT | None:
        if meta.get(METADATA_KEY) != "dydit":
            return None
        policy = cls(DyDiTConfig(target=_section(meta, where).get("target")))
        policy.check_metadata(meta, where)
        return policy

    def check_metadata(self, meta: dict[str, str], path: Any) -> None:
        section = _section(meta, path)
        target = section.get("target")
        if target is not None and self.config.target is not None and abs(target - self.config.target) > 1e-9:
            raise ValueError(f"{path} holds DyDiT weights trained for λ {target:g}, and this config sets "
                             f"dydit.target={self.config.target:g}: use dydit.target={target:g} (a run's λ names "
                             "its samples and records)")
        if "trained" in section:
            self.trained, self.steps = section["trained"], section.get("steps")

    @classmethod
    def holds(cls, sd: dict[str, torch.Tensor]) -> bool:
        return any(k.startswith(ROUTER_PREFIXES) or RELEASED_ROUTER.fullmatch(k) for k in sd)

    def released_keys(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Routers of the released DyDiT layout (block keys already in our names) -> `width_routers.k` /
        `token_routers.k` (k: the block's index in `block_names`)."""
        index = {name: k for k, name in enumerate(self.block_names)}
        out = {}
        for key, value in sd.items():
            match = RELEASED_ROUTER.fullmatch(key)
            if match is None or match["block"] not in index:
                out[key] = value
                continue
            k, part, rest = index[match["block"]], match["part"], match["rest"]
            if part == "token_selection.mlp_head":
                out[f"token_routers.{k}.mlp.{rest}"] = value
            else:
                out[f"width_routers.{k}.{'heads' if part == 'attn_rate.router' else 'groups'}.{rest}"] = value
        return out

    def load_state_dict(self, sd, path, *, routers_required=False):
        """Ours or the released layout; a file without routers is the conversion (fresh routers, every unit on,
        then `converted`: importance order), which `routers_required` (sampling) refuses."""
        sd = self.released_keys(sd)
        if any(k.startswith(ROUTER_PREFIXES) for k in sd):
            return sd, False
        if routers_required:
            raise ValueError(
                f"{path} holds no DyDiT routers ({self._without()}), and fresh routers would only run that model: "
                f"fine-tune it into DyDiT first (train.init_from: {path} in a run with a dydit section), then sample "
                "the run's exported weights")
        return {**sd, **{k: v for k, v in self.net.state_dict().items() if k.startswith(ROUTER_PREFIXES)}}, True

    def _without(self) -> str:
        """What a file without routers holds: the dense model, or (composed) the model without DyDiT."""
        return "a dense model" if self.net.policy is self else "a model without DyDiT: dense or FlexDiT"

    def converted(self) -> None:
        """Importance order of every block's heads and MLP groups (`net.reorder(block)`), function-preserving; the
        routers are fresh (every unit on) until trained."""
        self.trained = False
        for _, block in self.net.routed_blocks():
            self.net.reorder(block)



def _section(meta: dict[str, str], where: Any) -> dict[str, Any]:
    """The DyDiT section of a file's metadata ({} in files written before it was recorded)."""
    try:
        return json.loads(meta.get(METADATA_SECTION, "{}"))
    except ValueError:
        raise ValueError(f"{where}: its {METADATA_SECTION} metadata is not JSON: the file is damaged") from None
