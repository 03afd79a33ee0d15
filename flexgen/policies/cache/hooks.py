"""diffusers 0.42's cache hooks as a step-cache policy (`cache.method`; options in `cache.diffusers`, fields of the
method's diffusers config dataclass, checked by name at config load). Each method is diffusers' own function:

- first_block: `apply_first_block_cache` (FirstBlockCacheConfig) — tests/policies/test_cache_hooks.py::
  test_first_block_reuses_the_tail_residual_after_the_head_block, test_the_decision_is_the_forwards_not_the_samples
- mag: `apply_mag_cache` (MagCacheConfig; `calibrate: true` fills `policy.mag_ratios`) —
  test_mag_calibration_runs_through_the_policy_and_its_ratios_are_read_back
- taylorseer: `apply_taylorseer_cache` (TaylorSeerCacheConfig) — the `*-taylorseer` cases of test_the_no_op_setting_
  is_uncached_sampling_exactly and test_a_skipping_setting_computes_less_and_records_fewer_macs (as every method)
- pab: `apply_pyramid_attention_broadcast` (PyramidAttentionBroadcastConfig), PixArt-α only — their `pixart-pab` cases
- fastercache: `apply_faster_cache` (FasterCacheConfig), PixArt-α only — test_fastercache_on_pixart_skips_the_
  unconditional_half

What the hooks see. PixArt-α: the network itself; its block class (`FlexPixArtBlock`, whatever class its blocks
have) is registered in diffusers' `TransformerBlockRegistry` with the metadata diffusers registers for
`BasicTransformerBlock`. Latte / DiT: `LatteView`, a module the network does not hold (no state-dict key
changes) whose `transformer_blocks` are `LatteStep`s in the order the forward runs them (spatial 0, temporal 0,
spatial 1, ...), each taking and returning the dense layout (B·F, N, D): a temporal step does `Latte.temporal`'s
reshapes around its block, so the residuals the hooks keep (tail output − head output) are in one layout. The
policy walks the view. pab and fastercache hook only diffusers' Attention classes, which Latte's are not: refused.
Family defaults where diffusers' names miss PixArt-α's: taylorseer `cache_identifiers` its attn1 / attn2,
fastercache `tensor_format: BCHW`.

- A forward runs inside a cache context (`_set_cache_context`: name "flexgen", the step index, the run's step
  count, t), cleared at `end()`; `new_run(steps)` resets every stateful hook (`HookRegistry.reset_stateful_hooks`);
  a t that does not decrease starts a new run. pab / fastercache read the forward's t (`current_timestep_callback`).
  mag: `num_inference_steps` follows the run's step count (the hooks are re-applied when it changes).
- CFG: the sampler's one call with both halves in one batch is one hook state: the decision is the forward's, for
  both halves (diffusers' design; flexgen's teacache decides per sample). fastercache's CFG-cache assumes diffusers'
  batch order [uncond ‖ cond] (its pipelines, `flexgen generate`); flexgen's `classifier_free_guidance` is cond first.
- Refused: composition with FlexDiT or DyDiT (the hooks reuse outputs / residuals without knowing their token sets or
  width patterns: use teacache / fora); training forwards (sampling only).
- Cost from what ran (`measured`, a run's cost, not a forward's): plain forward hooks on the last Linear inside each
  hooked unit (block, attention, MLP) record which units computed; a skipped block costs its list's share of the
  cost model's breakdown, a skipped attention / MLP its `block_shapes` cost (PixArt's cross-attention: the rest of the
  block). A step "computed" when no unit was skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers import hooks as diffusers_hooks
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context
from diffusers.hooks.mag_cache import MagCacheHeadHook
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from flexgen.policies.cache.base import CachePolicy
from flexgen.policies.cache.config import CacheConfig, diffusers_config

APPLY = {"first_block": "apply_first_block_cache", "mag": "apply_mag_cache", "taylorseer": "apply_taylorseer_cache",
         "pab": "apply_pyramid_attention_broadcast", "fastercache": "apply_faster_cache"}
ATTENTION_ONLY = ("pab", "fastercache")          # hook diffusers' Attention classes only
CONTEXT = "flexgen"


class LatteStep(nn.Module):
    """One step of Latte's walk on the dense layout: spatial block `index`, or temporal block `index` with
    `Latte.temporal`'s reshapes (and the temporal embedding before the first) around it."""

    def __init__(self, net: nn.Module, block: nn.Module, index: int, temporal: bool):
        super().__init__()
        self.block, self.index, self.temporal = block, index, temporal
        object.__setattr__(self, "net", net)            # (not a child: the view holds blocks, not the network)

    def forward(self, hidden_states: torch.Tensor, frames: Any) -> torch.Tensor:
        if self.temporal:                                               # (B·F, N, D) -> (B·N, F, D) -> back
            return self.net.temporal(hidden_states, self.index, frames)
        return self.net.run_block(self.block, self.index, hidden_states, frames.cond)      # (B·F, N, D)


class LatteView(nn.Module):
    """What diffusers' hooks see of a Latte / DiT network (module docstring); not a child of the network."""

    def __init__(self, net: nn.Module):
        super().__init__()
        steps = []
        for i, block in enumerate(net.spatial_blocks):
            steps.append(LatteStep(net, block, i, False))
            if i < len(net.temporal_blocks):
                steps.append(LatteStep(net, net.temporal_blocks[i], i, True))
        self.transformer_blocks = nn.ModuleList(steps)


def register_block(cls: type) -> None:
    """`cls` in diffusers' TransformerBlockRegistry with BasicTransformerBlock's metadata (a copy: the registry
    records the class on it), unless it is there."""
    try:
        TransformerBlockRegistry.get(cls)
        return
    except ValueError:                                  # not registered (the registry's only answer for that)
        base = TransformerBlockRegistry.get(BasicTransformerBlock)
    TransformerBlockRegistry.register(cls, dataclasses.replace(base, _cls=None, _cached_parameter_indices=None))


class DiffusersCache(CachePolicy):
    """A diffusers cache hook on the network's blocks (module docstring)."""

    per_sample = False          # one hook state per forward: the batch and both CFG halves share each decision

    def __init__(self, config: CacheConfig):
        if not config.from_diffusers:
            raise ValueError(f"DiffusersCache runs diffusers' methods, not {config.method!r}")
        super().__init__(config)
        self.options = diffusers_config(config, **self._callbacks())      # (the label's numbers; checked early)
        self._root: nn.Module | None = None
        self._view: LatteView | None = None
        self._units: list[tuple[str, nn.Module, str, str, int]] = []    # (name, module, kind, block list, index)
        self._ran: set[int] = set()
        self._last_ran: set[int] = set()
        self._t = 0
        self._step, self._steps = 0, None
        self._ratios: list[float] | None = None
        self.mag_ratios: list[float] = []           # mag calibrate: the last run's ratios, one per computed step
        self.computed: bool | None = None           # whether the last forward skipped nothing
        self.steps_computed = self.steps_skipped = 0

    # ---- names ------------------------------------------------------------------------------------------

    def label(self) -> str:
        o, method = self.options, self.config.method
        if method in ("first_block", "mag"):
            return f"{method} {o.threshold:g}" + (" calibrate" if method == "mag" and o.calibrate else "")
        if method == "taylorseer":
            return f"taylorseer {o.cache_interval}"
        if method == "pab":
            ranges = [o.spatial_attention_block_skip_range, o.temporal_attention_block_skip_range,
                      o.cross_attention_block_skip_range]
            return "pab " + "/".join("-" if r is None else str(r) for r in ranges)
        return f"fastercache {o.spatial_attention_block_skip_range}"

    def describe(self) -> str:
        return f"diffusers' {self.config.method} cache ({self.label()}, options {self.config.diffusers or 'default'})"

    # ---- building -----------------------------------------------------------------------------------------

    def _callbacks(self, **extra: Any) -> dict[str, Any]:
        given = dict(extra)
        if self.config.method in ATTENTION_ONLY:
            given["current_timestep_callback"] = lambda: self._t
        return given

    def _family_defaults(self, net: nn.Module) -> dict[str, Any]:
        """Options where diffusers' defaults name modules PixArt-α does not have (module docstring)."""
        given, method = self.config.diffusers, self.config.method
        if self._view is not None:
            return {}
        if method == "taylorseer" and given.get("cache_identifiers") is None and \
                given.get("skip_predict_identifiers") is None:
            return {"cache_identifiers": [r"transformer_blocks\.\d+\.attn[12]"]}
        if method == "fastercache" and "tensor_format" not in given:
            return {"tensor_format": "BCHW"}
        return {}

    def attach(self, net: nn.Module) -> None:
        self._bind(net)
        others = [p for p in net.policy.parts if p is not self and not p.dense]
        if others:
            raise ValueError(f"cache.method={self.config.method} (diffusers' hooks) does not compose with "
                             f"{others[0].name}: the hooks reuse block outputs and residuals without knowing its "
                             "token sets / width patterns; use cache.method=teacache or fora (flexgen's own: they "
                             "compose)")
        if hasattr(net, "spatial_blocks"):
            if self.config.method in ATTENTION_ONLY:
                raise ValueError(f"cache.method={self.config.method} hooks only diffusers' Attention classes; Latte / "
                                 "DiT attention is flexgen's own: use first_block, mag or taylorseer on this family")
            self._view = LatteView(net)
            self._root = self._view
            register_block(LatteStep)
        else:
            self._root = net
            for block in net.transformer_blocks:
                register_block(type(block))
        self._apply(self._steps)
        self._catalogue(net)

    def _apply(self, steps: int | None) -> None:
        """diffusers' apply_* on the root (again for mag when the run's step count changes)."""
        options = {**self._family_defaults(self.net), **self.config.diffusers}
        given = {"num_inference_steps": steps} if self.config.method == "mag" and steps is not None else {}
        self.options = diffusers_config(dataclasses.replace(self.config, diffusers=options),
                                        **self._callbacks(**given))
        getattr(diffusers_hooks, APPLY[self.config.method])(self._root, self.options)
        registry = HookRegistry.check_if_exists_or_initialize(self._root)
        registry.invalidate_child_registries_cache()

    def _catalogue(self, net: nn.Module) -> None:
        """The hooked units (modules below the root with a diffusers hook), what each costs, and a counting hook on
        the last Linear inside each (it runs only when the unit's own forward runs)."""
        kinds: dict[int, tuple[str, str, int]] = {}
        if self._view is not None:
            spatial = len(net.spatial_blocks)
            for step in self._view.transformer_blocks:
                where = "temporal_blocks" if step.temporal else "spatial_blocks"
                index = step.index + (spatial if step.temporal else 0)              # block_shapes' order
                kinds[id(step)] = ("block", where, index)
                kinds[id(step.block.attn)] = ("attention", where, index)
                kinds[id(step.block.mlp)] = ("mlp", where, index)
        else:
            for i, block in enumerate(net.transformer_blocks):
                kinds.update({id(block): ("block", "transformer_blocks", i),
                              id(block.attn1): ("attention", "transformer_blocks", i),
                              id(block.attn2): ("cross", "transformer_blocks", i),
                              id(block.ff): ("mlp", "transformer_blocks", i)})
        units = [(n, m) for n, m in self._root.named_modules()
                 if n and getattr(getattr(m, "_diffusers_hook", None), "hooks", None)]
        if not units:
            raise ValueError(f"cache.method={self.config.method}: diffusers hooked no module of this network "
                             f"(its options {self.config.diffusers} match none of its module names)")
        for name, module in units:
            if id(module) not in kinds:
                raise ValueError(f"cache.method={self.config.method} hooked {name!r}, whose cost this policy "
                                 "cannot count: hook blocks, their attention or their MLP")
            inside = [n for n, _ in units if n.startswith(name + ".")]
            if inside:
                raise ValueError(f"cache.method={self.config.method} hooked {name!r} and {inside[0]!r} inside it")
            linears = [m for m in module.modules() if isinstance(m, nn.Linear) and m is not module]
            k = len(self._units)
            linears[-1].register_forward_hook(lambda *_, k=k: self._ran.add(k))
            self._units.append((name, module, *kinds[id(module)]))

    # ---- a sampling run -------------------------------------------------------------------------------------

    def new_run(self, steps: int | None = None) -> None:
        if steps is not None and self.config.method == "mag" and steps != self.options.num_inference_steps:
            self._apply(steps)
        if steps is not None:
            self._steps = steps
        self._step, self._last_t = 0, None
        if self._root is not None:
            HookRegistry.check_if_exists_or_initialize(self._root).reset_stateful_hooks()

    def begin(self, net, t, **step) -> None:
        super().begin(net, t, **step)
        if net.training:
            raise RuntimeError(f"cache.method={self.config.method} (diffusers' hooks) is for sampling: call "
                               "model.eval(), or train with cache.method none")
        self._t = self.step_begins(t)
        t0 = self._t
        self._ran = set()
        _set_cache_context(self._root, CacheContext(CONTEXT, step_index=self._step, num_inference_steps=self._steps,
                                                    timestep=t0))
        self._ratios = None
        if self.config.method == "mag" and self.options.calibrate:
            head = next(h for h in self._root.transformer_blocks[0]._diffusers_hook.hooks.values()
                        if isinstance(h, MagCacheHeadHook))
            self._ratios = head.state_manager.get_state().calibration_ratios    # (the list this forward appends to)

    def walk(self, net, x, ctx, inner=None):
        if self._view is None:                                  # PixArt-α: the hooks are on its own blocks
            return (inner or net.walk)(x, ctx)
        for step in self._view.transformer_blocks:              # Latte / DiT: the blocks in forward order
            x = step(x, ctx)                                    # (B·F, N, D)
        return x

    def end(self) -> None:
        if self._root is None:
            return
        _set_cache_context(self._root, None)
        self._step += 1
        self._last_ran = self._ran
        self.computed = len(self._ran) == len(self._units)
        self.steps_computed += self.computed
        self.steps_skipped += not self.computed
        if self._ratios is not None:        # diffusers prints them at the run's last step and starts a new list
            self.mag_ratios = list(self._ratios)

    # ---- cost -----------------------------------------------------------------------------------------------

    def unit_macs(self, cost: Any) -> list[float]:
        """MACs per sample of each hooked unit at full cost (module docstring)."""
        report, shapes = cost.forward_macs(None), self.net.block_shapes(None)
        out = []
        for _, _, kind, where, index in self._units:
            block = report.breakdown[where] * 1e9 / len(getattr(self.net, where))
            parts = shapes[index].cost
            out.append({"block": block, "attention": parts.attention, "mlp": parts.mlp,
                        "cross": block - parts.attention - parts.mlp}[kind])
        return out

    def forward_macs(self, cost, routing=None, grid=None):
        """(B,) MACs per sample of the last forward: the dense model's, less the hooked units it did not run."""
        if routing is not None:
            raise ValueError(f"the {self.label()} model routes no blocks")
        skipped = sum(m for k, m in enumerate(self.unit_macs(cost)) if k not in self._last_ran)
        return torch.full((self._batch,), cost.forward_macs(None).gmacs * 1e9 - skipped, dtype=torch.float64)

    def ran(self) -> list[str]:
        """The hooked units the last forward computed, by name below the root."""
        return [self._units[k][0] for k in sorted(self._last_ran)]
