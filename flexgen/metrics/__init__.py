"""Evaluation metrics: feature statistics (float64, mergeable across ranks), Fréchet distance, KID, and the I3D
network that computes FVD features from the standard `i3d_torchscript.pt` weights (verified by sha256).

Still to come (issue 6): the Inception detector through clean-fid, CLIP score, named protocols, cached reference
statistics, result records and leaderboards.
"""

from flexgen.metrics.frechet import FeatureStats, fid_from_stats, frechet_distance, kid, kid_from_stats
from flexgen.metrics.i3d import I3D, I3DDetector, load_i3d_torchscript, load_weights_from_torchscript

__all__ = ["I3D", "FeatureStats", "I3DDetector", "fid_from_stats", "frechet_distance", "kid", "kid_from_stats",
           "load_i3d_torchscript", "load_weights_from_torchscript"]
