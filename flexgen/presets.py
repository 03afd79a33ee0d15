"""Size presets of every model family, keyed by the papers' names; data only (no torch import), so the config
layer and the backbone registry read them without loading model code.

- Latte / DiT (`LATTE_PRESETS`): Latte depth counts spatial + temporal blocks (Latte-XL/2: 14 + 14); DiT's depth is
  its blocks (Peebles & Xie 2023, Table 1); `temporal` says whether the family has temporal blocks.
- PixArt-α (`PIXART_PRESETS`): `PixArtTransformer2DModel` arguments.
"""

_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

LATTE_PRESETS: dict[str, dict] = {
    f"{family}-{size}/{p}": dict(depth=depth, hidden_size=dim, num_heads=heads, patch_size=p,
                                 temporal=family == "Latte")
    for family in ("Latte", "DiT")
    for size, (depth, dim, heads) in _SIZES.items()
    for p in (2, 4, 8)
}


# Paper names -> PixArtTransformer2DModel arguments (PixArt-α XL/2, Chen et al. 2023; diffusers' converter).
# Latent side = image side / 8 (SD VAE); 1024-MS adds the resolution / aspect-ratio embedders (sample_size 128).
_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            cross_attention_dim=1152, caption_channels=4096, patch_size=2)
PIXART_PRESETS: dict[str, dict] = {
    "PixArt-XL/2-256": dict(_XL2, sample_size=32),
    "PixArt-XL/2-512": dict(_XL2, sample_size=64),
    "PixArt-XL/2-1024-MS": dict(_XL2, sample_size=128),
}
TEXT_TOKENS = 120          # T5 tokens PixArt-α reads (`model_max_length=120`)
