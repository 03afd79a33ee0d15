"""What a `flexgen calibrate` file was fitted on, checked where it is used (`cache.calibration`, `flexgen generate
--cache-calibration`): a polynomial or MagCache ratios fitted on another model or resolution are refused by name,
another sampler, step count, CFG scale or policy is warned about (the fit may still serve, but it was not made for
this run). Explicit `cache.coefficients` / `cache.diffusers.mag_ratios` without the file are the user's own choice
and are not checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REFUSED = ("model", "checkpoint_sha256", "image_size", "num_frames", "resolution")   # another model, another size
WARNED = ("policy", "sampler", "steps", "cfg_scale")                                  # another sampling run


def read_calibration(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """A `flexgen calibrate` file (its method's fit and `fitted_on`); one clear error naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable flexgen calibrate file ({e})") from None
    if not isinstance(data, dict) or "fitted_on" not in data or "method" not in data:
        raise ValueError(f"{path}: not a flexgen calibrate file (no method / fitted_on)")
    if method is not None and data["method"] != method:
        raise ValueError(f"{path}: a {data['method']} calibration, not {method}'s")
    return data


def mismatches(fitted_on: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refusals, warnings): each key of `now` that `fitted_on` records with another value, as 'key: fitted X, now
    Y' (keys either side does not record are not compared)."""
    def differ(key):                    # (None or "" on either side: not known there)
        return key in now and key in fitted_on and now[key] not in (None, "") and fitted_on[key] not in (None, "") \
            and _norm(now[key]) != _norm(fitted_on[key])

    words = {k: f"{k}: fitted {fitted_on.get(k)!r}, now {now.get(k)!r}" for k in (*REFUSED, *WARNED)}
    return [words[k] for k in REFUSED if differ(k)], [words[k] for k in WARNED if differ(k)]


def check_fitted_on(path: str | Path, now: dict[str, Any]) -> None:
    """Refuse a calibration fitted on another model / size (ValueError naming the file and what differs); warn
    (stderr) about another sampler, step count, CFG scale or policy."""
    refusals, warnings = mismatches(read_calibration(path)["fitted_on"], now)
    if refusals:
        raise ValueError(f"{path} was fitted on another model ({'; '.join(refusals)}): run flexgen calibrate on this "
                         "one (or give its coefficients / ratios yourself, without the file)")
    for line in warnings:
        print(f"warning: {path} was fitted on another run ({line})", file=sys.stderr)


def uncached_label(policy: Any) -> str:
    """The name of what a model runs besides its step cache ("dense", "flexdit P GSR T", ...)."""
    return " + ".join(p.label() for p in policy.parts if p.section != "cache" and not p.dense) or "dense"


def _norm(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
