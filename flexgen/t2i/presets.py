"""PixArt-α size presets (no diffusers import: the config layer validates preset names with them)."""

# Paper names -> PixArtTransformer2DModel arguments (PixArt-α XL/2, Chen et al. 2023; diffusers' converter).
# Latent side = image side / 8 (SD VAE); 1024-MS adds the resolution / aspect-ratio embedders (sample_size 128).
_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            cross_attention_dim=1152, caption_channels=4096, patch_size=2)
PRESETS: dict[str, dict] = {
    "PixArt-XL/2-256": dict(_XL2, sample_size=32),
    "PixArt-XL/2-512": dict(_XL2, sample_size=64),
    "PixArt-XL/2-1024-MS": dict(_XL2, sample_size=128),
}
TEXT_TOKENS = 120          # T5 tokens PixArt-α reads (`model_max_length=120`)
