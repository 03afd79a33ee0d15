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
    per_sample = True           # whether each sample decides for itself (else a forward decides for its batch)

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


def check_batch_bound(policy: Policy, world_size: int, resuming: bool) -> None:
    """A cache that decides for a whole forward (diffusers' hooks: one state for the batch and both CFG halves)
    makes a sample depend on the samples it is batched with: refuse what would batch them otherwise than one
    uninterrupted process does (sharding over ranks, a re-run that draws only the missing samples)."""
    bound = next((p for p in policy.parts if isinstance(p, CachePolicy) and not p.per_sample), None)
    if bound is None:
        return
    why = (f"cache {bound.label()} decides for each forward's whole batch (diffusers' hooks), so a sample depends "
           "on the samples it is batched with")
    if world_size > 1:
        raise ValueError(f"{why}: sampling over {world_size} ranks would batch them otherwise than one process. "
                         "Run it in one process, or use cache.method=teacache or fora (they decide per sample)")
    if resuming:
        raise ValueError(f"{why}: drawing only the missing samples would batch them otherwise than the first run. "
                         "Draw them all again with --overwrite")
