"""The `Policy` protocol: a way to spend less compute per timestep, as one component of a network.

A network holds its policy as `net.policy`; the family's `Denoiser` and every command ask it, never which policy
runs. The dense model is the empty policy (this class). A policy answers for

| what | methods |
|---|---|
| its name in records and its config sections | `label()`, `sections()` |
| training | `timesteps(model)` (its training-timestep sampler, or None), `losses(...)` (its objective, or None) |
| cost from what ran | `measured`, `forward_macs(...)`, `meter(model)`, `block_shapes(grid)`, `router_macs(grid)` |
| the skipping forward's memory | `slice_caches()`, `patterns()`, `held_bytes()` |
| benchmarks without trained weights | `set_synthetic(target)`, `synthetic_macs(cost, grid, target)` |
| weights | `metadata()`, `load_state_dict(sd, path, routers_required)` (official layouts, conversion), `converted()` |
| a forward | `attach(net)` once; `begin`, `embedded`, `walk` (`run_block` per block), `end`; `grid()` |

`Compose` (`flexgen.policies.compose`) runs several: FlexDiT decides the token set, DyDiT the width on it.
"""

from __future__ import annotations

from typing import Any

import torch

from flexgen.policies.timesteps import TimestepSampler, UniformTimesteps, WeightedTimesteps, timestep_weights


class Policy:
    """The dense model: every block runs whole at every timestep."""

    name = "dense"
    section = ""                # its run-config section (a field of `flexgen.config.Config`); "" for the dense model
    setting = ""                # the key that turns it on, for messages ("dydit.target")
    order = 0                   # its place in a composition: lower decides first (FlexDiT's tokens, then DyDiT's width)
    dense = True                # whether the network runs as the dense model (no policy of its own)
    per_forward = True          # whether one forward's cost says what it saves (a step cache's is a whole run's)
    measured = False            # whether a forward's cost is measured from what it ran (DyDiT's gates)
    gated = False               # whether learned gates set each forward's cost (DyDiT's routers: a synthetic λ
                                # setting without weights, a trained checkpoint's kept counts per timestep)

    @classmethod
    def from_section(cls, config: Any, run: Any) -> Policy | None:
        """This policy for a run whose section is `config`, or None when the section leaves it off."""
        return None

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: Any) -> Policy | None:
        """The policy a safetensors file of ours records in its metadata, or None."""
        return None

    def label(self) -> str:
        """What a sample record calls the method ("baseline", "flexdit LAYOUT", "dydit λ", joined by " + ")."""
        return "baseline"

    def describe(self) -> str:
        """A few words for messages ("" for the dense model)."""
        return ""

    def sections(self) -> dict[str, Any]:
        """The run-config sections that define it ({"density": {...}, "dydit": {...}}; {} for the dense model)."""
        return {}

    @property
    def parts(self) -> tuple[Policy, ...]:
        """The policies it is made of (itself; `Compose`: its parts)."""
        return (self,)

    def part(self, kind: type) -> Any:
        """The part of type `kind`, or None."""
        return next((p for p in self.parts if isinstance(p, kind)), None)

    # ---- one forward: the network calls attach once, then begin, embedded, walk (run_block per block), end ----

    step_args: tuple[str, ...] = ()         # keyword arguments of a forward that are this policy's
    joint_images = True                     # whether it runs joint image-video batches (Latte's still images)

    def attach(self, net: Any) -> None:
        """Add this policy's modules to `net` (under the state-dict keys its files use); keep what it needs."""
        self._bind(net)

    def _bind(self, net: Any) -> None:
        """A policy object runs one network (it keeps that network's routers, caches and per-forward state)."""
        if getattr(self, "net", None) not in (None, net):
            raise ValueError(f"this {self.label()} policy already runs another network: build a new policy for "
                             "each network (or copy.deepcopy it)")
        self.net = net

    def new_run(self, steps: int | None = None) -> None:
        """A sampling run of `steps` forwards starts (a step cache forgets the last one; TeaCache always runs the last
        step when it knows the count); the sampling library calls it."""

    def begin(self, net: Any, t: torch.Tensor, **step: Any) -> None:
        """Before a forward at timesteps t (B,); `step`: the forward's keyword arguments of `step_args`."""
        if step:
            raise TypeError(f"the {self.label()} model's forward takes no {', '.join(sorted(step))}")

    def embedded(self, embedding: torch.Tensor) -> None:
        """The (B, D) timestep embedding (PixArt-α 1024-MS: with the size conditions) of this forward."""

    def walk(self, net: Any, x: torch.Tensor, ctx: Any, inner: Any = None) -> torch.Tensor:
        """The blocks on tokens x: `inner(x, ctx)` (in a composition, the next part's walk), by default the family's
        dense walk (`net.walk`), every block through `run_block`."""
        return (inner or net.walk)(x, ctx)

    def signature(self) -> Any:
        """What this forward's blocks depend on besides their input (FlexDiT: the grid; DyDiT: the width pattern),
        after `embedded`; a cached result of another signature is not reused."""
        return None

    def run_block(self, net: Any, index: int, call: Any) -> torch.Tensor:
        """Block `index` (the family's block order); `call(run)` runs it through its module, `run(block, x, cond,
        context, **extra)` replacing its computation (None: the whole block)."""
        return call(None)

    def end(self) -> None:
        """After the forward (also when it raised)."""

    def grid(self) -> int | None:
        """The sparse grid side of the last forward (None: every block saw the dense token set)."""
        return None

    # ---- training ---------------------------------------------------------------------------------------

    def timesteps(self, model: Any) -> TimestepSampler | None:
        """This policy's training-timestep sampler for `model` (a `Denoiser`), or None: no preference."""
        return None

    def timestep_sampler(self, model: Any) -> TimestepSampler:
        """The training timesteps: the policy's choice, else the run's density (uniform or logit-normal)."""
        sampler = self.timesteps(model)
        if sampler is not None:
            return sampler
        weights = timestep_weights(model.run.diffusion)
        return UniformTimesteps(model.num_timesteps) if weights is None else WeightedTimesteps(weights)

    def losses(self, model: Any, diffusion: Any, net: Any, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
               cond: dict, step: int) -> dict[str, torch.Tensor] | None:
        """The loss terms of one micro-batch under this policy's objective, or None: the diffusion loss alone."""
        return None

    def training_losses(self, model: Any, diffusion: Any, net: Any, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor, cond: dict, step: int) -> dict[str, torch.Tensor]:
        terms = self.losses(model, diffusion, net, x0, t, noise, cond, step)
        return diffusion.training_losses(net, x0, t, noise, cond) if terms is None else terms

    # ---- cost -------------------------------------------------------------------------------------------

    def forward_macs(self, cost: Any, routing: Any = None, grid: int | None = None) -> torch.Tensor:
        """(B,) MACs per sample of the last forward (or of gates `routing` at grid `grid`) from what it ran;
        only a `measured` policy has them (`cost`: the family's cost model)."""
        raise NotImplementedError(f"the {self.label()} model's cost is counted, not measured per forward")

    def meter(self, model: Any) -> Any:
        """A sampler's `model(x, t, **cond)` that adds up the MACs of every forward (a measured policy), or None."""
        from flexgen.policies.cost import CostMeter

        return CostMeter(model) if self.measured else None

    def block_shapes(self, grid: int | None = None) -> list:
        """Each block's full-width cost and units at a grid (a routed policy: what its gates scale)."""
        raise NotImplementedError(f"the {self.label()} model routes no blocks")

    def router_macs(self, grid: int | None = None) -> float:
        """MACs per sample of the modules the policy adds that run every forward (DyDiT's routers)."""
        return 0.0

    def slice_caches(self) -> list:
        """The skipping forward's weight-slice caches, one per block (none for a policy that skips no width)."""
        return []

    def patterns(self) -> list[int]:
        """Distinct width patterns each block holds slices for."""
        return [cache.patterns for cache in self.slice_caches()]

    def held_bytes(self) -> int:
        """Bytes kept beside the weights between forwards (copied weight slices)."""
        return sum(cache.nbytes for cache in self.slice_caches())

    def synthetic_macs(self, cost: Any, grid: int | None, target: float, scattered: bool = False) -> float:
        """MACs per sample of one forward at `grid` under the synthetic setting for `target` (not run)."""
        raise ValueError(f"the {self.label()} model has no synthetic setting (--target is DyDiT's λ)")

    def set_synthetic(self, target: float, scattered: bool = False) -> float:
        """A deterministic setting that spends `target` of the blocks' MACs without trained weights (DyDiT's
        routers: round(λ·H) units; `scattered`: spread over the block, and some tokens skip the MLP, as a trained
        router's); returns the realised fraction. Nothing to set for other policies."""
        raise ValueError(f"the {self.label()} model has no synthetic setting (--target is DyDiT's λ)")

    # ---- weights ----------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        """What our safetensors files record about the policy beside the model configuration."""
        return {}

    def trained_for(self, steps: int) -> None:
        """The training loop says, before exporting, how many optimizer steps the weights have had (DyDiT records
        it: a conversion's fresh routers have had none)."""

    def check_metadata(self, meta: dict[str, str], path: Any) -> None:
        """Before loading a file of ours into this policy's network: refuse (ValueError) one whose metadata says it
        was made for another setting of this policy, and take what it says of itself (DyDiT: trained or not)."""

    def load_state_dict(self, sd: dict[str, torch.Tensor], path: Any, *, routers_required: bool = False
                        ) -> tuple[dict[str, torch.Tensor], bool]:
        """A state dict read from `path` (our key layout) -> the one this policy's network loads, and whether it
        converts a file without this policy's modules (then `converted()` runs after loading)."""
        return sd, False

    @classmethod
    def holds(cls, sd: dict[str, torch.Tensor]) -> bool:
        """Whether a state dict holds this policy's modules (a file of this policy)."""
        return False

    def converted(self) -> None:
        """After loading a file without this policy's modules: finish the conversion (DyDiT: importance order)."""
