"""The fewer-steps frontier of a leaderboard table: the cheapest way to spend less compute is to sample the same
model with fewer steps, so a method that saves compute is worth something only when it beats that curve.

In one table (`flexgen.metrics.records.Table`), the records of one model at several step counts form a frontier
group: the same non-empty `ckpt_sha256`, the same `method` and `sampler`, each with a positive `gflops_per_sample`
(GMACs per sample), at least two distinct `steps`. When several groups qualify, the frontier is the one with the
most step counts; ties go to the group whose best row comes first in the table (rows are best first). The floor row
is never part of a group.

The curve runs through one point per step count (the best row at that count), sorted by cost; value, low and high
of the 95% interval are interpolated linearly in log(cost). `place` tells where a row stands against the curve at
its own cost: "above" (its interval lies entirely on the better side of the curve's interpolated interval), "below"
(entirely on the worse side), "on" (they overlap), "–" (no cost, or outside the frontier's cost range) or
"frontier" (a row of the frontier group). Rows without an interval count as points. Pure functions, no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from flexgen.metrics.records import Record, beyond

NO_PLACE = "–"


@dataclass(frozen=True)
class Frontier:
    """One model at several step counts: `rows` is the whole group (table order), `points` one row per step count
    (the best), sorted by cost per sample."""

    rows: tuple[Record, ...]
    points: tuple[Record, ...]

    @property
    def costs(self) -> list[float]:
        return [p.gflops_per_sample for p in self.points]

    @property
    def steps(self) -> list[int]:
        return [p.steps for p in self.points]

    @property
    def name(self) -> str:
        """The model and method, e.g. 'Latte (dense)' or 'Latte-XL/2 flexdit'."""
        first = self.points[0]
        method = "" if first.method in ("", "baseline") else f" {first.method}"
        return first.model_name + method

    def contains(self, cost: float) -> bool:
        """True when `cost` lies within the frontier's cost range (both ends included)."""
        return self.costs[0] <= cost <= self.costs[-1]

    def holds(self, record: Record) -> bool:
        """True when `record` is one of the frontier group's rows."""
        return any(r is record for r in self.rows)

    def at(self, cost: float) -> tuple[float, float, float]:
        """(value, low, high) of the curve at `cost` (inside the cost range), linear in log(cost)."""
        if not self.contains(cost):
            raise ValueError(f"cost {cost:g} is outside the frontier's range {self.costs[0]:g}..{self.costs[-1]:g}")
        costs = self.costs
        i = min(bisect.bisect_left(costs, cost), len(costs) - 1)
        if costs[i] == cost or i == 0:
            return _triple(self.points[i])
        a, b = self.points[i - 1], self.points[i]
        t = (math.log(cost) - math.log(costs[i - 1])) / (math.log(costs[i]) - math.log(costs[i - 1]))
        return tuple(u + t * (v - u) for u, v in zip(_triple(a), _triple(b), strict=True))

    def describe(self) -> str:
        """The line printed under a table with a frontier."""
        ckpt = self.points[0].ckpt_sha256
        ckpt = ckpt[:12] + "…" if len(ckpt) > 12 else ckpt
        steps = ", ".join(str(s) for s in self.steps)
        return (f"Frontier: {self.name} with {self.points[0].sampler or '?'} at {steps} steps (ckpt {ckpt}); "
                f"above = better than {self.name} at equal cost beyond both 95% intervals, below = worse beyond "
                f"both, on = the intervals overlap.")


def _triple(record: Record) -> tuple[float, float, float]:
    low, high = record.bounds
    return record.value, low, high


def _group_key(record: Record) -> tuple[str, str, str] | None:
    """The frontier group a record may belong to, or None when it cannot be on a frontier."""
    cost = record.gflops_per_sample
    if record.is_floor or not record.ckpt_sha256 or record.steps is None or cost is None or cost <= 0:
        return None
    return record.ckpt_sha256, record.method, record.sampler


def _best_per_step(group: list[Record]) -> tuple[Record, ...]:
    """One row per step count, the first (best) of the group's rows at that count, sorted by cost per sample."""
    best: dict[int, Record] = {}
    for record in group:
        best.setdefault(record.steps, record)
    return tuple(sorted(best.values(), key=lambda r: (r.gflops_per_sample, r.steps)))


def find_frontier(rows: Sequence[Record]) -> Frontier | None:
    """The fewer-steps frontier of a table's rows (best first), or None when no group has two step counts."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for record in rows:
        key = _group_key(record)
        if key is not None:
            groups.setdefault(key, []).append(record)
    candidates = [(len({r.steps for r in g}), -i, g) for i, g in enumerate(groups.values())]
    candidates = [c for c in candidates if c[0] >= 2]
    if not candidates:
        return None
    _, _, group = max(candidates, key=lambda c: (c[0], c[1]))
    return Frontier(rows=tuple(group), points=_best_per_step(group))


def place(record: Record, frontier: Frontier | None, higher_is_better: bool) -> str:
    """Where `record` stands against `frontier` at its own cost: "frontier", "above", "on", "below" or "–"."""
    if frontier is None:
        return NO_PLACE
    if frontier.holds(record):
        return "frontier"
    cost = record.gflops_per_sample
    if record.is_floor or cost is None or not frontier.contains(cost):
        return NO_PLACE
    _, low, high = frontier.at(cost)
    if beyond(record.bounds, (low, high), higher_is_better):
        return "above"
    if beyond((low, high), record.bounds, higher_is_better):
        return "below"
    return "on"
