"""What every step cache shares (`StepCache`: FORA and TeaCache; `DiffusersCache`: diffusers' hooks): a run
setting (`cache:`), measured over a whole sampling run, and sampling runs told apart by their timesteps."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from flexgen.policies.base import Policy
from flexgen.policies.cache.config import CacheConfig


class CachePolicy(Policy):
    """A step cache: its `cache:` section, its cost a whole run's, and `step_begins` for the forwards' timesteps."""

    name = "cache"
    section, setting, order = "cache", "cache.method", 0
    dense = False
    measured = True
    per_forward = False         # its cost is a whole sampling run's, not one forward's

    def __init__(self, config: CacheConfig):
        self.config = config
        self._last_t: int | None = None
        self._batch = 0

    def sections(self) -> dict[str, Any]:
        return {"cache": dataclasses.asdict(self.config)}

    def step_begins(self, t: torch.Tensor) -> int:
        """A forward at timesteps t (B,) begins: its first t. A sampling run is a sequence of forwards at decreasing
        t, so a t that does not decrease starts a new run (`new_run()`, when the sampler did not say so)."""
        t0 = int(t.reshape(-1)[0])
        if self._last_t is not None and t0 >= self._last_t:
            self.new_run()
        self._last_t, self._batch = t0, t.numel()
        return t0
