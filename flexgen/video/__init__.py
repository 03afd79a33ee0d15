"""Video backbones: Latte (interleaved spatial/temporal DiT blocks), DiT as its one-frame case, and their
FlexDiT versions."""

from flexgen.video.flex_latte import DensityRecord, FlexLatte
from flexgen.video.latte import PRESETS, Latte, LatteConfig, latte_config, latte_config_from_run


def build_model(run) -> Latte:
    """The model of a run configuration (`flexgen.config.Config`): dense, or FlexDiT when `density.layout` is set."""
    config = latte_config_from_run(run)
    if not run.density.layout:
        return Latte(config)
    return FlexLatte(config, run.density, run.diffusion.num_timesteps)


__all__ = ["PRESETS", "DensityRecord", "FlexLatte", "Latte", "LatteConfig", "build_model", "latte_config",
           "latte_config_from_run"]
