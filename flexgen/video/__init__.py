"""Video backbones: Latte (interleaved spatial/temporal DiT blocks), DiT as its one-frame case (`latte`), its side of
the policies' block protocol (`latte_protocol`) and its block at partial width (`latte_width`). Names are imported
on first use."""

from importlib import import_module

_EXPORTS = {"Latte": "latte", "LatteConfig": "latte", "latte_config": "latte"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"flexgen.video.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'flexgen.video' has no attribute {name!r}")


__all__ = list(_EXPORTS)
