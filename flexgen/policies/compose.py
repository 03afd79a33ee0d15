"""Policies composed: FlexDiT decides how many tokens a block sees, DyDiT how much of the block runs on them (and a
step cache, whether the step runs at all). Each question goes to the parts in order: the first part with an answer
gives it (training timesteps: FlexDiT's one stage per micro-batch, so every forward has one grid; losses and the
measured cost: DyDiT's, at the grid each forward ran at); records, sections and metadata join every part's."""

from __future__ import annotations

from typing import Any

from flexgen.policies.base import Policy


class Compose(Policy):
    """Several policies on one network (`Compose(FlexDiT(...), DyDiT(...))`)."""

    def __init__(self, *parts: Policy):
        parts = tuple(q for p in parts for q in p.parts)                  # (a Compose inside: its parts)
        if len(parts) < 2:
            raise ValueError("Compose takes two or more policies")
        kinds = [type(p) for p in parts]
        if len(set(kinds)) < len(kinds):
            raise ValueError(f"Compose takes one policy of each kind, got {', '.join(k.__name__ for k in kinds)}")
        parts = tuple(sorted(parts, key=lambda p: p.order))              # the outer decision first, whatever the
        self._parts = parts                                               # order given
        self.name = "+".join(p.name for p in parts)
        self.dense = False

    @property
    def parts(self) -> tuple[Policy, ...]:
        return self._parts

    @property
    def measured(self) -> bool:
        return self._measured is not None

    @property
    def _measured(self) -> Policy | None:
        return next((p for p in self._parts if p.measured), None)

    def _answer(self, method: str, *args, **kwargs) -> Any:
        for p in self._parts:
            out = getattr(p, method)(*args, **kwargs)
            if out is not None:
                return out
        return None

    @property
    def gated(self) -> bool:
        return any(p.gated for p in self._parts)

    @property
    def per_forward(self) -> bool:
        return all(p.per_forward for p in self._parts)

    @property
    def joint_images(self) -> bool:
        return all(p.joint_images for p in self._parts)

    @property
    def step_args(self) -> tuple[str, ...]:
        return tuple(a for p in self._parts for a in p.step_args)

    def _overriding(self, method: str) -> list[Policy]:
        return [p for p in self._parts if getattr(type(p), method) is not getattr(Policy, method)]

    def attach(self, net) -> None:
        self._bind(net)
        for p in self._parts:             # FlexDiT first: DyDiT's token routers follow its roles
            p.attach(net)

    def begin(self, net, t, **step) -> None:
        unknown = set(step) - set(self.step_args)
        if unknown:
            raise TypeError(f"the {self.label()} model's forward takes no {', '.join(sorted(unknown))}")
        for p in self._parts:
            p.begin(net, t, **{k: v for k, v in step.items() if k in p.step_args})

    def embedded(self, embedding) -> None:
        for p in self._parts:
            p.embedded(embedding)

    def walk(self, net, x, ctx, inner=None):
        """The parts that walk the blocks their own way, each around the next (a step cache around FlexDiT's
        roles), the innermost around the dense walk."""
        walkers = self._overriding("walk")

        def chain(i):
            if i == len(walkers):
                return inner or net.walk
            return lambda x, ctx: walkers[i].walk(net, x, ctx, chain(i + 1))

        return chain(0)(x, ctx)

    def signature(self):
        return tuple(p.signature() for p in self._parts)

    def run_block(self, net, index, call):
        """The last part that runs blocks its own way (DyDiT's partial width), else the whole block."""
        runners = self._overriding("run_block")
        return runners[-1].run_block(net, index, call) if runners else call(None)

    def end(self) -> None:
        for p in self._parts:
            p.end()

    def grid(self):
        return self._answer("grid")

    def label(self) -> str:
        return " + ".join(p.label() for p in self._parts)

    def describe(self) -> str:
        return ", ".join(p.describe() for p in self._parts)

    def sections(self) -> dict[str, Any]:
        return {k: v for p in self._parts for k, v in p.sections().items()}

    def timesteps(self, model):
        return self._answer("timesteps", model)

    def losses(self, *args):
        return self._answer("losses", *args)

    def _routed(self) -> Policy:
        part = self._measured
        if part is None:
            raise NotImplementedError(f"the {self.label()} model's cost is counted, not measured per forward")
        return part

    def forward_macs(self, cost, routing=None, grid=None):
        """The first measured part's (a step cache asks the parts inside it for the steps that ran)."""
        return self._routed().forward_macs(cost, routing, grid)

    def _one(self, method: str) -> Policy:
        """The part that answers `method` its own way (DyDiT's block shapes and synthetic setting), else this."""
        parts = self._overriding(method)
        return parts[0] if parts else super()

    def block_shapes(self, grid=None):
        return self._one("block_shapes").block_shapes(grid)

    def router_macs(self, grid=None):
        return sum(p.router_macs(grid) for p in self._parts)

    def synthetic_macs(self, cost, grid, target, scattered=False):
        return self._one("synthetic_macs").synthetic_macs(cost, grid, target, scattered)

    def held_bytes(self):
        return sum(p.held_bytes() for p in self._parts)

    def new_run(self, steps=None):
        for p in self._parts:
            p.new_run(steps)

    def slice_caches(self):
        return [c for p in self._parts for c in p.slice_caches()]

    def set_synthetic(self, target, scattered=False):
        return self._one("set_synthetic").set_synthetic(target, scattered)

    def metadata(self):
        return {k: v for p in self._parts for k, v in p.metadata().items()}

    def trained_for(self, steps):
        for p in self._parts:
            p.trained_for(steps)

    def check_metadata(self, meta, path):
        for p in self._parts:
            p.check_metadata(meta, path)

    def load_state_dict(self, sd, path, *, routers_required=False):
        self._converting = []
        for p in reversed(self._parts):       # the innermost policy (DyDiT) maps its keys before FlexDiT converts
            sd, converts = p.load_state_dict(sd, path, routers_required=routers_required)
            if converts:
                self._converting.append(p)
        return sd, bool(self._converting)

    def converted(self) -> None:
        for p in self._converting:
            p.converted()
