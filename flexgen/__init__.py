"""flexgen: token-density control for diffusion transformers (Latte / DiT video and image, PixArt-α)."""

__version__ = "0.1.0"
