"""flexgen: token-density control for diffusion transformers (Latte / DiT video and image, PixArt-α)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # A diffusers pipeline folder saved with our transformer names it ["flexgen", "FlexPixArtTransformer2DModel"] in
    # model_index.json; diffusers then looks the class up on this package. Imported lazily (diffusers is heavy).
    if name == "FlexPixArtTransformer2DModel":
        from flexgen.t2i.pixart import FlexPixArtTransformer2DModel
        return FlexPixArtTransformer2DModel
    raise AttributeError(f"module 'flexgen' has no attribute {name!r}")
