"""The step cache's run-config section (`cache:`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flexgen.schema import check_range

FLEXGEN_METHODS = ("none", "fora", "teacache")
# diffusers 0.42's cache hooks (`flexgen.policies.cache.hooks`): method -> (module, config dataclass)
DIFFUSERS_METHODS = {
    "first_block": ("diffusers.hooks.first_block_cache", "FirstBlockCacheConfig"),
    "mag": ("diffusers.hooks.mag_cache", "MagCacheConfig"),
    "taylorseer": ("diffusers.hooks.taylorseer_cache", "TaylorSeerCacheConfig"),
    "pab": ("diffusers.hooks.pyramid_attention_broadcast", "PyramidAttentionBroadcastConfig"),
    "fastercache": ("diffusers.hooks.faster_cache", "FasterCacheConfig"),
}
METHODS = (*FLEXGEN_METHODS, *DIFFUSERS_METHODS)
# Options of the diffusers dataclasses a config cannot set: callables (the policy supplies the current timestep),
# private fields, and TaylorSeer's lite mode (its prediction replaces proj_out, whose work the policy cannot count).
UNSETTABLE = ("use_lite_mode",)


@dataclass
class CacheConfig:
    method: str = "none"            # none | fora (Selvaraju et al. 2024: the blocks every `interval`-th step) |
                                    # teacache (Liu et al. 2025: when the rescaled input change adds up to `threshold`)
                                    # | diffusers' hooks: first_block, mag, taylorseer, pab, fastercache
    interval: int = 2               # fora: steps 0, n, 2n, ... of a sampling run compute; the others reuse
    threshold: float = 0.1          # teacache: a step reuses while the accumulated rescaled change stays below it
    coefficients: list[float] = field(default_factory=list)   # teacache: the rescaling polynomial, highest degree
                                    # first (numpy.polyfit's order; `flexgen calibrate` fits it); empty: none
    diffusers: dict = field(default_factory=dict)   # a diffusers method's options: fields of its diffusers config
                                    # dataclass (FirstBlockCacheConfig.threshold, MagCacheConfig.mag_ratios, ...);
                                    # interval / threshold / coefficients above are flexgen's methods' only
    calibration: str = ""           # teacache / mag: a `flexgen calibrate` file, its coefficients / ratios (what it
                                    # was fitted on is checked against the run: cache/provenance.py)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        check_range(self, interval=(1, None), threshold=(0, None))
        self.coefficients = [float(c) for c in self.coefficients]
        if not all(math.isfinite(c) for c in self.coefficients):
            raise ValueError(f"coefficients: must be finite numbers, got {self.coefficients}")
        if self.calibration:
            self._take_calibration()
        if self.method in DIFFUSERS_METHODS:
            defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                        for f in dataclasses.fields(CacheConfig)}
            flexgen_only = [k for k in ("interval", "threshold", "coefficients") if getattr(self, k) != defaults[k]]
            if flexgen_only:
                raise ValueError(f"{flexgen_only[0]}: is an option of fora / teacache; diffusers' {self.method} "
                                 f"takes its options from cache.diffusers (e.g. cache.diffusers.threshold)")
            diffusers_config(self)                  # unknown keys, wrong values: an error at load
        elif self.diffusers:
            raise ValueError(f"diffusers: holds options of diffusers' cache hooks, and method {self.method!r} is "
                             f"not one (they are {', '.join(DIFFUSERS_METHODS)})")

    def _take_calibration(self) -> None:
        """The fit of the `calibration` file: TeaCache's coefficients, MagCache's ratios. Values given beside it
        must be the file's; without the file (a config copied elsewhere) they are used as given."""
        from flexgen.policies.cache.provenance import read_calibration

        if self.method not in ("teacache", "mag"):
            raise ValueError(f"calibration: a flexgen calibrate file serves teacache (its polynomial) or mag (its "
                             f"ratios), not method {self.method!r}")
        key = "coefficients" if self.method == "teacache" else "mag_ratios"
        given = self.coefficients if self.method == "teacache" else self.diffusers.get("mag_ratios")
        if not Path(self.calibration).is_file():
            if not given:
                raise ValueError(f"calibration: {self.calibration} does not exist (flexgen calibrate writes it)")
            return
        fitted = [float(v) for v in read_calibration(self.calibration, self.method)[key]]
        if given and not (len(given) == len(fitted) and all(math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)
                                                           for a, b in zip(given, fitted, strict=True))):
            raise ValueError(f"{'coefficients' if key == 'coefficients' else 'diffusers.mag_ratios'}: differ from "
                             f"those of {self.calibration}; give one or the other")
        if self.method == "teacache":
            self.coefficients = fitted
        else:
            self.diffusers = {**self.diffusers, "mag_ratios": fitted}

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def from_diffusers(self) -> bool:
        return self.method in DIFFUSERS_METHODS

    def rescale_all(self, change: torch.Tensor) -> torch.Tensor:
        """The polynomial at each relative input change (the change itself without coefficients), never below 0."""
        value = change.clone() if not self.coefficients else sum(
            c * change ** k for k, c in enumerate(reversed(self.coefficients)))
        return value.clamp(min=0.0)

    def rescale(self, change: float) -> float:
        """The polynomial at a relative input change (the change itself without coefficients), never below 0."""
        return float(self.rescale_all(torch.tensor(change, dtype=torch.float64)))


# `--cache METHOD:SETTING` of diffusers' methods: the option SETTING gives (cache.diffusers), and its type
DIFFUSERS_SETTING = {"first_block": ("threshold", float), "mag": ("threshold", float),
                     "taylorseer": ("cache_interval", int), "pab": ("spatial_attention_block_skip_range", int),
                     "fastercache": ("spatial_attention_block_skip_range", int)}


def from_spec(spec: str, calibration: str | None = None) -> CacheConfig:
    """`--cache fora:2` / `teacache:0.1` / `first_block:0.05` / `mag:0.06` / `taylorseer:5` / `pab:2` /
    `fastercache:2` (`flexgen generate --cache`; + a `flexgen calibrate` file: TeaCache's coefficients, MagCache's
    ratios) -> CacheConfig."""
    method, _, setting = spec.partition(":")
    try:
        if calibration and method not in ("teacache", "mag"):
            raise ValueError("a calibration file serves teacache and mag")
        if method == "fora":
            return CacheConfig("fora", interval=int(setting or 2))
        if method == "teacache":
            return CacheConfig("teacache", threshold=float(setting or 0.1), calibration=calibration or "")
        if method in DIFFUSERS_SETTING:
            key, kind = DIFFUSERS_SETTING[method]
            return CacheConfig(method, diffusers={key: kind(setting)} if setting else {},
                               calibration=calibration or "")
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"--cache {spec}" + (f" --cache-calibration {calibration}" if calibration else "") +
                         f": {e}") from e
    raise ValueError(f"--cache {spec}: the method is fora:N, teacache:THRESHOLD or diffusers' "
                     f"{', '.join(f'{m}:{k.upper()}' for m, (k, _) in DIFFUSERS_SETTING.items())}")


def diffusers_config(config: CacheConfig, **given: Any) -> Any:
    """The diffusers config dataclass of a diffusers method, from `config.diffusers` (and `given`, fields the policy
    supplies: the timestep callback, the run's step count). Keys are checked by name against the dataclass's
    fields; lists become tuples where diffusers has tuples, dtype names (`taylor_factors_dtype: float32`) dtypes."""
    import importlib

    module, name = DIFFUSERS_METHODS[config.method]
    cls = getattr(importlib.import_module(module), name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    settable = [n for n in fields if not _unsettable(n)]
    options = {}
    for key, value in config.diffusers.items():
        if key not in fields:
            raise ValueError(f"diffusers: unknown key {key!r} for diffusers' {name} (its fields: "
                             f"{', '.join(settable)})")
        if _unsettable(key):
            raise ValueError(f"diffusers.{key}: is not settable from a config ({name}; callables and lite mode "
                             "are not offered: the policy supplies the current timestep)")
        if isinstance(fields[key].default, tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if key.endswith("dtype") and value is not None:
            if not isinstance(value, str) or not isinstance(getattr(torch, value, None), torch.dtype):
                raise ValueError(f"diffusers.{key}: a torch dtype name (float32, bfloat16, ...), got {value!r}")
            value = getattr(torch, value)
        options[key] = value
    try:
        return cls(**{**options, **given})
    except (TypeError, ValueError) as e:
        raise ValueError(f"diffusers: {name} refuses these options: {' '.join(str(e).split())}") from None


def _unsettable(name: str) -> bool:
    return name.startswith("_") or "callback" in name or name in UNSETTABLE
