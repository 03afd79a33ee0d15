"""Policies: ways to spend less compute per timestep, each a component of a network (`flexgen.policies.base`).

Each policy is a subpackage with a `policy.py` whose `Policy` subclass names its run-config `section`, its `order`
in a composition (the outer decision first) and `from_section`; `registry()` finds them. A run's policy composes
those whose section is set (`from_run`); a weights file's, those its metadata records (`from_metadata`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from flexgen.policies.base import Policy
from flexgen.policies.compose import Compose
from flexgen.policies.dydit.policy import DyDiT
from flexgen.policies.flexdit.policy import FlexDiT


@functools.cache
def registry() -> tuple[type[Policy], ...]:
    """Every policy class (one per subpackage's `policy.py`), in composition order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            module = importlib.import_module(f"{__name__}.{info.name}.policy")
            found += [c for c in vars(module).values()
                      if isinstance(c, type) and issubclass(c, Policy) and c.__module__ == module.__name__
                      and c.section]
    return tuple(sorted(found, key=lambda c: c.order))


def compose(parts: list[Policy]) -> Policy:
    """The dense policy, one policy, or their composition."""
    return Policy() if not parts else parts[0] if len(parts) == 1 else Compose(*parts)


def from_run(run: Any) -> Policy:
    """The policy of a run configuration: each policy whose section is set (`density:` with a layout, `dydit:` with
    a target, ...), composed."""
    return compose([p for p in (cls.from_section(getattr(run, cls.section), run) for cls in registry())
                    if p is not None])


def from_metadata(meta: dict[str, str], where: Any) -> Policy:
    """The policy a safetensors file of ours records in its metadata."""
    return compose([p for p in (cls.from_metadata(meta, where) for cls in registry()) if p is not None])


def check_file_fits(sd: dict, policy: Policy, path: Any) -> None:
    """A file holding the modules of a policy the model does not have is refused, naming it (ValueError)."""
    for cls in registry():
        if cls.holds(sd) and policy.part(cls) is None:
            raise ValueError(f"{path} holds a {cls.__name__} model ({cls.name} modules): load it with a config that "
                             f"sets {cls.setting}")


__all__ = ["Compose", "DyDiT", "FlexDiT", "Policy", "check_file_fits", "compose", "from_metadata", "from_run",
           "registry"]
