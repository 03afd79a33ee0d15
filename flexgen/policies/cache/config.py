"""The step cache's run-config section (`cache:`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from flexgen.schema import check_range

METHODS = ("none", "fora", "teacache")


@dataclass
class CacheConfig:
    method: str = "none"            # none | fora (Selvaraju et al. 2024: the blocks every `interval`-th step) |
                                    # teacache (Liu et al. 2025: when the rescaled input change adds up to `threshold`)
    interval: int = 2               # fora: steps 0, n, 2n, ... of a sampling run compute; the others reuse
    threshold: float = 0.1          # teacache: a step reuses while the accumulated rescaled change stays below it
    coefficients: list[float] = field(default_factory=list)   # teacache: the rescaling polynomial, highest degree
                                    # first (numpy.polyfit's order; `flexgen calibrate` fits it); empty: none

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        check_range(self, interval=(1, None), threshold=(0, None))
        self.coefficients = [float(c) for c in self.coefficients]
        if not all(math.isfinite(c) for c in self.coefficients):
            raise ValueError(f"coefficients: must be finite numbers, got {self.coefficients}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def rescale_all(self, change: torch.Tensor) -> torch.Tensor:
        """The polynomial at each relative input change (the change itself without coefficients), never below 0."""
        value = change.clone() if not self.coefficients else sum(
            c * change ** k for k, c in enumerate(reversed(self.coefficients)))
        return value.clamp(min=0.0)

    def rescale(self, change: float) -> float:
        """The polynomial at a relative input change (the change itself without coefficients), never below 0."""
        return float(self.rescale_all(torch.tensor(change, dtype=torch.float64)))
