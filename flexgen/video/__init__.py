"""Video backbones: Latte (interleaved spatial/temporal DiT blocks) and DiT as its one-frame case."""

from flexgen.video.latte import PRESETS, Latte, LatteConfig, latte_config

__all__ = ["PRESETS", "Latte", "LatteConfig", "latte_config"]
