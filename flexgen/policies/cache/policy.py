"""A step cache as a policy: it walks around the blocks (the dense walk, or FlexDiT's roles with DyDiT inside), and
at a step it skips returns the input plus the blocks' residual (output minus input, in the dense token layout)
of the last step that ran them. Which steps run the blocks:

- FORA (Selvaraju et al. 2024, arXiv 2407.01425): steps 0, n, 2n, ... of a sampling run.
- TeaCache (Liu et al. 2025, arXiv 2411.19108, §3.4): the first block's timestep-modulated input (`net.
  first_modulated`) is compared with the previous step's (relative L1: mean |a − b| / mean |b|); that change,
  rescaled by the fitted polynomial (`cache.coefficients`, `flexgen calibrate`; clipped at 0), is accumulated
  over the skipped steps; a step runs the blocks once the sum reaches `threshold`, and resets it. The first step
  and the last (when the run says how many, `new_run(steps)`) always run, so threshold 0 runs every step. (The
  change is the sample's: the mean over its rows, its frames for a video.)

- A sampling run is a sequence of forwards at decreasing t; a forward at a t that does not decrease starts a new
  one. Each sample of a forward (each row of t: the two classifier-free-guidance halves count apart) keeps its own
  residual, and under TeaCache its own indicator and sum: a forward skips the blocks when no sample is due, runs
  them when one is, and gives the samples not due their input plus their own residual. So a sample is the same
  whatever the batch it shares and however sampling is sharded (FORA's steps are every sample's).
- A residual is reused only where it is valid: the same batch shape and the same `signature()` of the other
  policies (FlexDiT's grid, DyDiT's width pattern); otherwise the step runs the blocks. Training forwards always
  run them.
- Cost from what ran: a skipped step costs the network outside its blocks (`net.block_modules`).
"""

from __future__ import annotations

from typing import Any

import torch

from flexgen.policies.base import Policy
from flexgen.policies.cache.base import CachePolicy
from flexgen.policies.cache.config import CacheConfig


class StepCache(CachePolicy):
    """Reuse of the blocks' residual between the steps that run them (module docstring)."""

    def __init__(self, config: CacheConfig):
        super().__init__(config)
        self._residual: torch.Tensor | None = None
        self._key: Any = None
        self._step, self._steps = 0, None
        self._signal: torch.Tensor | None = None     # teacache: the last step's modulated input
        self._accumulated = torch.zeros(0, dtype=torch.float64)    # teacache: each sample's sum since it ran
        self.computed: bool | None = None            # whether the last forward ran the blocks
        self.steps_computed = self.steps_skipped = 0
        self.trace: list[float | None] = []          # teacache: each forward's relative input change (calibration)

    @classmethod
    def from_section(cls, config: CacheConfig, run: Any) -> Policy | None:
        """FORA / TeaCache, or diffusers' hooks for their methods (`cache/hooks.py`), or None (method none)."""
        if config.from_diffusers:
            from flexgen.policies.cache.hooks import DiffusersCache

            return DiffusersCache(config)
        return cls(config) if config.enabled else None

    def label(self) -> str:
        teacache = self.config.method == "teacache"
        return f"{self.config.method} {self.config.threshold:g}" if teacache else \
            f"{self.config.method} {self.config.interval}"

    def describe(self) -> str:
        if self.config.method == "teacache":
            fitted = "a fitted rescaling" if self.config.coefficients else "no rescaling"
            return f"step cache teacache (threshold {self.config.threshold:g}, {fitted})"
        return f"step cache {self.config.method} (the blocks every {self.config.interval} steps)"

    def new_run(self, steps: int | None = None) -> None:
        self._residual, self._key, self._step, self._last_t = None, None, 0, None
        self._steps, self._signal = steps, None

    def begin(self, net, t, **step) -> None:
        super().begin(net, t, **step)
        self.step_begins(t)

    def walk(self, net, x, ctx, inner=None):
        key = (tuple(x.shape), net.policy.signature())
        if net.training:                                    # training forwards always run the blocks
            return (inner or net.walk)(x, ctx)
        valid = self._residual is not None and _same(key, self._key)
        due = self._due(net, x, ctx)                        # (batch rows,) bool: whose sample must run the blocks
        self._step += 1
        if valid and not bool(due.any()):
            self.computed = False
            self.steps_skipped += 1
            return x + self._residual
        out = (inner or net.walk)(x, ctx)
        self.computed = True
        self.steps_computed += 1
        if valid and not bool(due.all()):                   # the samples not due keep input + their own residual
            rows = due.repeat_interleave(x.shape[0] // due.numel()).view(-1, *(1,) * (x.ndim - 1))
            out = torch.where(rows, out, x + self._residual)
        else:                                               # every sample ran: every TeaCache sum starts over
            self._accumulated = torch.zeros_like(self._accumulated)
        self._residual, self._key = (out - x).detach(), key
        return out

    def _due(self, net, x, ctx) -> torch.Tensor:
        """Which samples (rows of t: both CFG halves count apart) must run the blocks at this step of the run, each
        from its own indicator (module docstring): (batch,) bool."""
        batch = self._batch
        if self.config.method == "fora":
            return torch.full((batch,), self._step % self.config.interval == 0, device=x.device)
        with torch.no_grad():
            signal = net.first_modulated(x, ctx).float()                               # (R, N, D)
        previous, self._signal = self._signal, signal
        if previous is None or previous.shape != signal.shape:
            self.trace.append(None)
            self._accumulated = torch.zeros(batch, dtype=torch.float64, device=x.device)
            return torch.ones(batch, dtype=torch.bool, device=x.device)
        moved = (signal - previous).abs().reshape(batch, -1).sum(1).double()             # (batch,)
        scale = previous.abs().reshape(batch, -1).sum(1).double()
        self.trace.append(float(moved.sum() / scale.sum().clamp(min=1e-12)))             # the batch's (calibration)
        last = self._steps is not None and self._step >= self._steps - 1
        due, self._accumulated = teacache_step(self.config, self._accumulated, moved / scale.clamp(min=1e-12), last)
        return due

    def forward_macs(self, cost, routing=None, grid=None):
        """The last forward's MACs per sample: what the other measured policies say (or the counted forward) when it
        ran the blocks; the network outside its blocks when it skipped them."""
        grid = self.net.policy.grid() if grid is None and routing is None else grid
        if self.computed is not False:
            inner = next((p for p in self.net.policy.parts if p is not self and p.measured), None)
            if inner is not None:
                return inner.forward_macs(cost, routing, grid) + self._indicator()
            return torch.full((self._batch,), cost.forward_macs(grid).gmacs * 1e9 + self._indicator(),
                              dtype=torch.float64)
        return torch.full((self._batch,), self.skipped_macs(cost, grid), dtype=torch.float64)

    def skipped_macs(self, cost, grid=None) -> float:
        """MACs per sample of a forward at `grid` that skips the blocks: the network outside them, and the
        indicator."""
        report = cost.forward_macs(grid)
        blocks = sum(v for k, v in report.breakdown.items() if k in self.net.block_modules)
        return (report.gmacs - blocks) * 1e9 + self._indicator()

    def _indicator(self) -> float:
        """TeaCache's own MACs per sample and forward: the first block's modulation (`net.indicator_macs`)."""
        return float(self.net.indicator_macs()) if self.config.method == "teacache" else 0.0

    def held_bytes(self) -> int:
        return 0 if self._residual is None else self._residual.nbytes


def teacache_step(config: CacheConfig, accumulated: torch.Tensor, change: torch.Tensor, last: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """TeaCache's rule at one step, for each sample: add its rescaled change to its sum; it is due once the sum
    reaches the threshold (or at the last step), and a due sample's sum starts over. Returns (due, sums)."""
    accumulated = accumulated + config.rescale_all(change)
    due = (accumulated >= config.threshold) | last
    return due, torch.where(due, 0.0, accumulated)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b if not isinstance(a, tuple) else
                                   len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True)))
