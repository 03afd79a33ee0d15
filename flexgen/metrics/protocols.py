"""Named evaluation protocols: FVD / KID on videos, FID and CLIP score on images. The table is `PROTOCOLS`, each
entry with its source and settings in the comment above it.

A number such as "FVD 2048/16f" is only comparable when everything behind it is fixed: which real clips (split,
count, which videos, which offset, frame stride), which generated clips, and which detector weights. A `Protocol`
names all of that; `flexgen.metrics.evaluate` records it next to the value, `flexgen.metrics.selection` selects the
clips and images it names.

The name says what was computed. A protocol's `num_fake` is exact (fewer generated items is an error) and so is its
`num_real`: a real set with fewer usable items (videos long enough and readable, readable images) than `num_real`
is refused, naming both counts and what was discarded, unless the evaluation is asked to allow fewer
(`flexgen eval --allow-fewer`, `evaluate(..., allow_fewer=True)`); then it is computed on the M usable items under
the name `with_counts(num_real=M)` gives (fvd2048_16f on 16 videos: `fvd16x2048_16f`), so two different
computations never share a name. A real set with more usable items than `num_real` gives a seeded subset. A
corrupt or unreadable real video or image is discarded and counted like a too-short video; a corrupt generated
file is refused by name (`flexgen.metrics.sources`).

Unlike Latte (first N videos in sorted order, unseeded offsets), the real videos (a random subset when there are
more than N) and their offsets are drawn from the protocol's seed, so the reference statistics are reproducible. A
`center_crop` protocol (`fid30k_coco`) reads its crop size off the generated images and is renamed after it
(`fid30k_coco256`, `selection.resolve_protocol`). A clipscore protocol's detector must have the protocol's CLIP
architecture (an error otherwise): a number is called a CLIP score of ViT-L/14 only when it is one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from flexgen.metrics.clip import CLIP_SCORE_WEIGHTS, CLIP_VARIANTS

# fvd, kid (I3D video features), fid (Inception image features), clipscore (CLIP image and prompt embeddings).
METRICS = ("fvd", "kid", "fid", "clipscore")
REAL_RESIZES = ("none", "center_crop")


# ---------------------------------------------------------------------------------------------------------------
# Protocol: everything that fixes which clips are compared
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    name: str
    metric: str             # "fvd", "kid" (both on I3D video features), "fid" (images) or "clipscore" (images+prompts)
    num_real: int           # real clips: exactly this many (a seeded subset when there are more usable videos or
                            # images; fewer is refused, or renamed by with_counts when allowed); 0 for clipscore,
                            # which has no real set
    num_fake: int           # generated clips: exactly this many (clipscore: 0 = every generated image)
    num_frames: int         # frames per clip (1 for images)
    real_stride: int        # frame step inside a real clip
    fake_stride: int        # frame step inside a generated clip (which always starts at frame 0)
    min_real_frames: int    # real videos with fewer frames are discarded (and counted)
    seed: int = 0           # draws the real videos (when more than num_real) and each one's offset
    real_resize: str = "none"                   # fid: "center_crop" resizes / crops real images to real_size
    real_size: tuple[int, int] | None = None    # (H, W) of that crop; None until `resolve_protocol` reads it off the
                                                # generated images
    clip_variant: str = ""      # clipscore: the CLIP architecture the score is defined with ("ViT-L/14")
    clip_convention: str = ""   # clipscore: "torchmetrics" (100 · max(cos, 0)) or "hessel" (2.5 · max(cos, 0))
    text_prefix: str = ""       # clipscore: prepended to every prompt (Hessel et al.: "A photo depicts ")

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"protocol {self.name}: unknown metric {self.metric!r} (known: {sorted(METRICS)})")
        if self.metric == "clipscore":
            self._check_clipscore()
        else:
            if self.clip_variant or self.clip_convention or self.text_prefix:
                raise ValueError(f"protocol {self.name}: only clipscore protocols name a CLIP variant, a score "
                                 f"convention or a text prefix")
            for attr in ("num_real", "num_fake"):
                if getattr(self, attr) < 1:
                    raise ValueError(f"protocol {self.name}: {attr} must be >= 1, got {getattr(self, attr)}")
        for attr in ("num_frames", "real_stride", "fake_stride"):
            if getattr(self, attr) < 1:
                raise ValueError(f"protocol {self.name}: {attr} must be >= 1, got {getattr(self, attr)}")
        if self.min_real_frames < self.real_span:
            raise ValueError(f"protocol {self.name}: min_real_frames={self.min_real_frames} is shorter than one "
                             f"real clip ({self.real_span} frames)")
        if self.real_resize not in REAL_RESIZES:
            raise ValueError(f"protocol {self.name}: unknown real_resize {self.real_resize!r} (known: {REAL_RESIZES})")
        if self.real_resize != "none" and self.metric != "fid":
            raise ValueError(f"protocol {self.name}: real_resize={self.real_resize!r} is for fid protocols only")
        if self.real_size is not None:
            if self.real_resize != "center_crop":
                raise ValueError(f"protocol {self.name}: real_size needs real_resize='center_crop'")
            if len(self.real_size) != 2 or not all(isinstance(v, int) and v >= 1 for v in self.real_size):
                raise ValueError(f"protocol {self.name}: real_size must be (H, W) positive ints, got {self.real_size}")

    def _check_clipscore(self) -> None:
        if self.num_real != 0:
            raise ValueError(f"protocol {self.name}: clipscore has no real set, num_real must be 0 (got "
                             f"{self.num_real})")
        if self.num_fake < 0:
            raise ValueError(f"protocol {self.name}: num_fake must be >= 0 (0 = every image), got {self.num_fake}")
        if self.num_frames != 1:
            raise ValueError(f"protocol {self.name}: clipscore is on images, num_frames must be 1")
        if self.clip_variant not in CLIP_VARIANTS:
            raise ValueError(f"protocol {self.name}: unknown CLIP variant {self.clip_variant!r} (known: "
                             f"{', '.join(CLIP_VARIANTS)})")
        if self.clip_convention not in CLIP_SCORE_WEIGHTS:
            raise ValueError(f"protocol {self.name}: unknown CLIP score convention {self.clip_convention!r} (known: "
                             f"{sorted(CLIP_SCORE_WEIGHTS)})")

    @property
    def real_span(self) -> int:
        """Frames a real clip covers, first to last."""
        return (self.num_frames - 1) * self.real_stride + 1

    @property
    def fake_span(self) -> int:
        return (self.num_frames - 1) * self.fake_stride + 1

    def with_counts(self, num_real: int | None = None, num_fake: int | None = None) -> Protocol:
        """The same protocol with other clip counts, under a new name (fvd2048_16f -> fvd64_16f, fvd64x128_16f;
        clipscore_l14 -> clipscore100_l14, which has only generated images)."""
        if self.metric == "clipscore":
            if num_real not in (None, 0):
                raise ValueError(f"protocol {self.name}: clipscore has no real images; num_real cannot be set")
            num_real = 0
        num_real = self.num_real if num_real is None else num_real
        num_fake = self.num_fake if num_fake is None else num_fake
        if (num_real, num_fake) == (self.num_real, self.num_fake):
            return self
        match = re.fullmatch(r"([a-z]+)(?:\d+k?(?:x\d+k?)?)?(.*)", self.name)     # fid50k -> fid8, not fid8k
        if match is None:
            raise ValueError(f"protocol name {self.name!r} does not start with <metric><count>; cannot rename it")
        if self.metric == "clipscore":
            counts = str(num_fake) if num_fake else ""
        else:
            counts = str(num_real) if num_real == num_fake else f"{num_real}x{num_fake}"
        return dataclasses.replace(self, name=f"{match.group(1)}{counts}{match.group(2)}", num_real=num_real,
                                   num_fake=num_fake)


# ---------------------------------------------------------------------------------------------------------------
# The protocol table
# ---------------------------------------------------------------------------------------------------------------
def _clip_protocol(name: str, variant: str, num_fake: int = 0, convention: str = "torchmetrics",
                   text_prefix: str = "") -> Protocol:
    """A clipscore protocol: no real set, one frame, the CLIP variant and score convention it is defined with."""
    return Protocol(name, "clipscore", num_real=0, num_fake=num_fake, num_frames=1, real_stride=1, fake_stride=1,
                    min_real_frames=1, clip_variant=variant, clip_convention=convention, text_prefix=text_prefix)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    # StyleGAN-V / Latte (`tools/metrics/frechet_video_distance.py`): 2048 real clips of 16 frames taken every 3rd
    # frame, one per video, from a random offset; videos shorter than 16 x 3 = 48 frames are discarded
    # (realdata_subsample_factor=3, discard_short_videos); 2048 generated clips made of their first 16 consecutive
    # frames; no horizontal flips; the I3D detector called with rescale/resize (`I3DDetector`).
    Protocol("fvd2048_16f", "fvd", num_real=2048, num_fake=2048, num_frames=16, real_stride=3, fake_stride=1,
             min_real_frames=48),
    # The Taichi-HD setting of the Latte maintainer (realdata_subsample_factor=6, Latte issue #115).
    Protocol("fvd2048_16f_stride6", "fvd", num_real=2048, num_fake=2048, num_frames=16, real_stride=6,
             fake_stride=1, min_real_frames=96),
    # KID (unbiased, cubic kernel) on the same I3D features and clips as fvd2048_16f.
    Protocol("kid2048_16f", "kid", num_real=2048, num_fake=2048, num_frames=16, real_stride=3, fake_stride=1,
             min_real_frames=48),
    # Image FID over 50k images (clean-fid "clean" Inception features, `InceptionDetector`; image folders, not
    # videos): the real images are a seeded random subset when there are more than num_real, the generated ones the
    # first num_fake.
    Protocol("fid50k", "fid", num_real=50_000, num_fake=50_000, num_frames=1, real_stride=1, fake_stride=1,
             min_real_frames=1),
    # PixArt-α / ToCa FID-30K: 30,000 generated images, one per caption of the 30k COCO-2014-val captions, against
    # COCO val2014 real images. Fixed here: the real images are a seed-0 random subset of 30,000 of the real folder
    # (val2014 has 40,504; a folder with fewer usable images is refused, or evaluated on all of them under a renamed
    # protocol, e.g. fid20000x30000_coco256, when fewer are allowed), each resized (PIL bicubic, antialiased, on
    # uint8 RGB) so that it covers the generated images' size and centre-cropped to it, kept as uint8 like a PNG;
    # then both sides go through the same clean-fid "clean" Inception path. The crop size is read from the
    # generated images (all must share one size) and enters the name and the cache key: fid30k_coco at 256 px is
    # recorded as fid30k_coco256 (`selection.resolve_protocol`).
    Protocol("fid30k_coco", "fid", num_real=30_000, num_fake=30_000, num_frames=1, real_stride=1, fake_stride=1,
             min_real_frames=1, real_resize="center_crop"),
    # CLIP score (`flexgen.metrics.clip`), torchmetrics convention: the mean over images of 100 · max(cos, 0)
    # between the CLIP image and prompt embeddings, with OpenAI CLIP ViT-L/14 or ViT-B/32, over every generated
    # image, or exactly 30,000 (clipscore30k_l14, the FID-30K companion).
    _clip_protocol("clipscore_l14", "ViT-L/14"),
    _clip_protocol("clipscore_b32", "ViT-B/32"),
    _clip_protocol("clipscore30k_l14", "ViT-L/14", num_fake=30_000),
    # CLIP-S of Hessel et al. 2021: ViT-B/32, 2.5 · max(cos, 0), captions prefixed "A photo depicts ".
    _clip_protocol("clips_b32_hessel", "ViT-B/32", convention="hessel", text_prefix="A photo depicts "),
)}

DEFAULT_PROTOCOLS = {"fvd": "fvd2048_16f", "kid": "kid2048_16f", "fid": "fid50k", "clipscore": "clipscore_l14"}


def get_protocol(protocol: str | Protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[protocol]
