"""Policies: ways to spend less compute per timestep, each a component of a network (`flexgen.policies.base`).

`POLICIES` lists them in composition order (the outer decision first); a run's policy is the composition of those
whose config section is set (`from_run`), and a weights file's, of those its metadata records (`from_metadata`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flexgen.policies.base import Policy
from flexgen.policies.compose import Compose
from flexgen.policies.dydit.policy import DyDiT
from flexgen.policies.flexdit.policy import FlexDiT

POLICIES: tuple[type[Policy], ...] = (FlexDiT, DyDiT)


def compose(parts: list[Policy]) -> Policy:
    """The dense policy, one policy, or their composition."""
    return Policy() if not parts else parts[0] if len(parts) == 1 else Compose(*parts)


def from_run(run: Any, num_blocks: int | None = None) -> Policy:
    """The policy of a run configuration's sections (`density:` with a layout, `dydit:` with a target)."""
    parts: list[Policy] = []
    if run.density.layout:
        parts.append(FlexDiT(run.density, run.diffusion.num_timesteps, num_blocks))
    if run.dydit.enabled:
        parts.append(DyDiT(run.dydit))
    return compose(parts)


def with_target(run: Any, target: float) -> Any:
    """`run` with DyDiT at λ = `target` (`bench --target`: on the synthetic routers' setting without weights)."""
    return dataclasses.replace(run, dydit=dataclasses.replace(run.dydit, target=target))


def from_metadata(meta: dict[str, str], where: Any) -> Policy:
    """The policy a safetensors file of ours records in its metadata."""
    return compose([p for p in (cls.from_metadata(meta, where) for cls in POLICIES) if p is not None])


def check_file_fits(sd: dict, policy: Policy, path: Any) -> None:
    """A file holding the modules of a policy the model does not have is refused, naming it (ValueError)."""
    for cls in POLICIES:
        if cls.holds(sd) and policy.part(cls) is None:
            section = {"flexdit": "density.layout", "dydit": "dydit.target"}.get(cls.name, cls.name)
            raise ValueError(f"{path} holds a {cls.__name__} model ({cls.name} modules): load it with a config that "
                             f"sets {section}")


__all__ = ["POLICIES", "Compose", "DyDiT", "FlexDiT", "Policy", "check_file_fits", "compose", "from_metadata",
           "from_run", "with_target"]
