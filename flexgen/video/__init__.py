"""Video backbones: Latte (interleaved spatial/temporal DiT blocks), DiT as its one-frame case (`latte`), and their
FlexDiT versions (`flex_latte`). Names are imported on first use."""

from importlib import import_module

_EXPORTS = {"Latte": "latte", "LatteConfig": "latte", "latte_config": "latte", "FlexLatte": "flex_latte",
            "DensityRecord": "flex_latte"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"flexgen.video.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'flexgen.video' has no attribute {name!r}")


__all__ = list(_EXPORTS)
