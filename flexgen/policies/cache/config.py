"""The step cache's run-config section (`cache:`)."""

from __future__ import annotations

from dataclasses import dataclass

from flexgen.schema import check_range

METHODS = ("none", "fora")


@dataclass
class CacheConfig:
    method: str = "none"            # none | fora (Selvaraju et al. 2024: the blocks every `interval`-th step)
    interval: int = 2               # fora: steps 0, n, 2n, ... of a sampling run compute; the others reuse

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        check_range(self, interval=(1, None))

    @property
    def enabled(self) -> bool:
        return self.method != "none"
