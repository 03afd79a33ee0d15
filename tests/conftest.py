import sys
from pathlib import Path

# Test helper modules (t2i_helpers, ...) import by their own name as well as through the tests package.
sys.path.insert(0, str(Path(__file__).parent))

from flexgen.video.latte import latte_config


def tiny_config(name="Latte-S/2", **overrides):
    """A CPU-sized model of a preset's family: 4 blocks, width 32, 4 frames of 8×8×3 (DiT: one frame)."""
    fields = dict(depth=4, hidden_size=32, num_heads=4, input_size=8, num_frames=4, in_channels=3)
    if name.startswith("DiT"):
        fields["num_frames"] = 1
    return latte_config(name, **{**fields, **overrides})
