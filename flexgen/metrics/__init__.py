"""Evaluation metrics: feature statistics (float64, mergeable across ranks), Fréchet distance, KID (`frechet`);
detectors and their contract (`detectors`: our I3D for FVD from the standard `i3d_torchscript.pt`, clean-fid's
Inception for FID, both verified by sha256; CLIP from a local transformers folder for CLIP score, `clip`); named
protocols (`protocols`), the real and generated inputs they select (`sources`), evaluation with cached reference
statistics and `flexgen eval` (`evaluate`); records (`records`) and the leaderboard (`leaderboard`).
"""

from flexgen.metrics.frechet import FeatureStats, fid_from_stats, frechet_distance, kid, kid_from_stats
from flexgen.metrics.i3d import I3D, I3DDetector, load_i3d_torchscript, load_weights_from_torchscript
from flexgen.metrics.inception import InceptionDetector, load_inception_torchscript

__all__ = ["I3D", "FeatureStats", "I3DDetector", "InceptionDetector", "fid_from_stats", "frechet_distance", "kid",
           "kid_from_stats", "load_i3d_torchscript", "load_inception_torchscript", "load_weights_from_torchscript"]
