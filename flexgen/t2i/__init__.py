"""Text-to-image: FlexDiT on PixArt-α through diffusers (`pixart`) and generation (`generate`); the T5 text side
is `flexgen.text_encoder`, image–caption data with cached text embeddings `flexgen.data.captions`. Submodules import
diffusers / transformers, so this package imports them only when one of its names is used."""

from importlib import import_module

_EXPORTS = {"FlexPixArtTransformer2DModel": "pixart", "FlexPixArtBlock": "pixart",
            "load_transformer": "pixart_io", "pixart_block": "pixart",
            "load_pipeline": "generate", "iter_generate": "generate"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"flexgen.t2i.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'flexgen.t2i' has no attribute {name!r}")


__all__ = list(_EXPORTS)
