"""DyDiT on PixArt-α (Zhao et al. 2024, arXiv 2410.03456, on DiT; PixArt-α is ours): the class name DyDiT transformer
folders record. The model is `FlexPixArtTransformer2DModel` running the DyDiT policy (`flexgen.policies.dydit`; its
routers read adaLN-single's timestep embedding, one head mask per block gates the self-attention's heads and, with
`route_cross_attention`, the text cross-attention's, MLP groups are routed, token routers pick the image tokens that
run the MLP where the block sees the dense token set); its block at partial width is `flexgen.t2i.pixart_width`.
This subclass only switches the routers on by default, so a saved pipeline folder naming
`["flexgen.t2i.dy_pixart", "DyPixArtTransformer2DModel"]` keeps loading with a plain `PixArtAlphaPipeline`.
"""

from diffusers import ModelMixin  # noqa: F401  (diffusers looks up a saved component's base classes on its module)

from flexgen.t2i.pixart import FlexPixArtTransformer2DModel


class DyPixArtTransformer2DModel(FlexPixArtTransformer2DModel):
    """A FlexPixArtTransformer2DModel with DyDiT's routers (`route_cross_attention` defaults to True)."""

    routes_by_default = True
