"""The tiny `flexgen bench suite` model (test_bench_suite and the subprocess it starts without the video packages)."""

from flexgen.bench.suite import SuiteModel

TINY = SuiteModel("tiny", "tiny DiT", "DiT-S/2", "P GSR D T", (2, 4), 3.0, 0.6, image_size=64, num_classes=4)
SHRINK = ("model.depth=6", "model.hidden_size=32", "model.num_heads=4")
