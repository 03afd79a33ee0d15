"""FlexDiT as a policy component: its layout's roles, its timestep -> grid schedule and the recovery fusions it adds
to a network (`fusions.k`, one per R block); the family walks its blocks by the roles (`flexdit.walk.run_layout`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from torch import nn

from flexgen.policies.base import Policy
from flexgen.policies.flexdit.config import DensityConfig
from flexgen.policies.flexdit.layouts import parse_layout
from flexgen.policies.flexdit.schedules import grid_for_timesteps, stages
from flexgen.policies.flexdit.tokens import Fusion
from flexgen.policies.timesteps import StageTimesteps, timestep_weights
from flexgen.schema import ConfigError, build_dataclass

METADATA_KEY = "flexgen_density_config"     # our safetensors: the DensityConfig and num_timesteps


class FlexDiT(Policy):
    """Token density per block (roles P G S R D T) and timestep (a grid schedule, Eq. 5)."""

    name = "flexdit"
    section, setting, order = "density", "density.layout", 10
    dense = False

    def __init__(self, density: DensityConfig, num_timesteps: int = 1000):
        if not density.layout:
            raise ValueError("a FlexDiT policy needs a density layout")
        self.density, self.num_timesteps = density, num_timesteps
        self.stages = stages(density.schedule, num_timesteps)
        self.roles: str | None = None                 # the layout over the network's blocks, set by `attach`

    @classmethod
    def from_section(cls, config: DensityConfig, run: Any) -> FlexDiT | None:
        return cls(config, run.diffusion.num_timesteps) if config.layout else None

    step_args = ("grid", "record")

    def attach(self, net: nn.Module) -> None:
        """The layout's roles over the blocks the family maps (`net.layout_blocks(density)`), Q/K dropped in each
        Poolingformer (`net.drop_qk(i)`), the recovery fusions registered on `net` (`fusions.k`)."""
        self._bind(net)
        self.side = None
        self.roles = parse_layout(self.density.layout, len(net.layout_blocks(self.density)))
        if max(s.grid for s in self.stages) > net.base_grid:
            raise ValueError(f"schedule grids up to {max(s.grid for s in self.stages)} exceed the token grid "
                             f"{net.base_grid}×{net.base_grid}")
        for i, role in enumerate(self.roles):
            if role == "P":
                net.drop_qk(i)
        net.fusions = nn.ModuleList(Fusion(net.hidden_dim, self.density.fusion_init)
                                    for _ in range(self.roles.count("R")))

    def grid_for(self, t: torch.Tensor) -> int:
        """The schedule's sparse side at timesteps t (one grid per batch)."""
        return grid_for_timesteps(self.stages, torch.as_tensor(t))

    def begin(self, net, t, grid: int | None = None, record: Any = None) -> None:
        """This forward's sparse side: the schedule's at t (one grid per batch) unless `grid` is given; `record`
        (a `DensityRecord`), if given, is filled by the walk."""
        side = self.grid_for(t) if grid is None else grid
        if not 1 <= side <= net.base_grid:
            raise ValueError(f"sparse grid {side} outside [1, {net.base_grid}]")
        self.side, self.record = side, record

    def walk(self, net, x, ctx, inner=None):
        """The family's walk of the roles at this forward's grid (`net.walk_layout`, over `flexdit.walk`)."""
        return net.walk_layout(x, ctx, self)

    def grid(self) -> int | None:
        return self.side

    def signature(self) -> int | None:
        return self.side

    @staticmethod
    def overrides(layout: str, **schedule: Any) -> list[str]:
        """Run-config overrides that set this policy: `density.layout` and `density.schedule.*`."""
        return [f"density.layout={layout}", *(f"density.schedule.{k}={v}" for k, v in schedule.items())]

    def label(self) -> str:
        return f"flexdit {self.density.layout}"

    def describe(self) -> str:
        return f"FlexDiT layout {self.roles or self.density.layout}"

    def sections(self) -> dict[str, Any]:
        return {"density": dataclasses.asdict(self.density)}

    def timesteps(self, model: Any):
        """One density stage per micro-batch, t following the run's training density overall."""
        return StageTimesteps(tuple(model.cost().stages), timestep_weights(model.run.diffusion))

    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps({"density": dataclasses.asdict(self.density),
                                          "num_timesteps": self.num_timesteps})}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: Any) -> FlexDiT | None:
        """The policy our safetensors metadata records, or None."""
        if METADATA_KEY not in meta:
            return None
        saved = json.loads(meta[METADATA_KEY])
        try:
            density = build_dataclass(DensityConfig, saved["density"], "density")
        except ConfigError as e:
            raise ValueError(f"{where} metadata: {e}") from e
        return cls(density, saved["num_timesteps"])

    def load_state_dict(self, sd, path, *, routers_required=False):
        """A dense file (no fusions) is converted by the family (`net.flex_state_dict`): Poolingformers keep the
        value slice, the fusions take their initial values. (A FlexDiT file into a dense model fails the strict
        key check, naming the fusions.)"""
        if any(k.startswith("fusions.") for k in sd):
            return sd, False
        return self.net.flex_state_dict(sd), False
