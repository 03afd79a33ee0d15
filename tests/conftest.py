import importlib
import importlib.util
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

# Test helper modules (t2i_helpers, ...) import by their own name as well as through the tests package.
sys.path.insert(0, str(Path(__file__).parent))

from flexgen.video.latte import latte_config

# diffusers' logging binds its stderr handler to whatever sys.stderr is when its logger is first configured; done
# inside a test, that is the test's capture stream, closed after it, and a later diffusers warning then prints a
# "Logging error" into another test's stderr (a test failing or passing by order). Configure it here, once (where
# diffusers is installed: the GPU check machine has none).
if importlib.util.find_spec("diffusers") is not None:
    importlib.import_module("diffusers.utils.logging").get_verbosity()


def tiny_config(name="Latte-S/2", **overrides):
    """A CPU-sized model of a preset's family: 4 blocks, width 32, 4 frames of 8×8×3 (DiT: one frame)."""
    fields = dict(depth=4, hidden_size=32, num_heads=4, input_size=8, num_frames=4, in_channels=3)
    if name.startswith("DiT"):
        fields["num_frames"] = 1
    return latte_config(name, **{**fields, **overrides})


@pytest.fixture
def free_port():
    """A TCP port free on this machine now, for a torchrun launch (--master_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def imagenet(tmp_path):
    """train/ with three synsets: RGB JPEGs of several sizes, a greyscale and a CMYK JPEG, a truncated JPEG and a
    stray text file."""
    from tests.data_helpers import SYNSETS, noise_image

    rng = np.random.default_rng(0)
    root = tmp_path / "train"
    sizes = [(40, 30), (33, 50), (64, 64), (90, 35)]
    for synset in SYNSETS:
        (root / synset).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            noise_image(rng, w, h).save(root / synset / f"{synset}_{i}.JPEG", quality=95)
    noise_image(rng, 36, 28, "L").save(root / SYNSETS[0] / "grey.JPEG")
    noise_image(rng, 30, 40, "CMYK").save(root / SYNSETS[1] / "cmyk.JPEG")
    good = (root / SYNSETS[2] / f"{SYNSETS[2]}_0.JPEG").read_bytes()
    (root / SYNSETS[2] / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    (root / SYNSETS[2] / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def float64():
    """Tensors default to float64 for the test (`pytestmark = pytest.mark.usefixtures("float64")`)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
