"""CLIP score of generated images against their prompts: a CLIP detector from a local folder, the score, its stats.

- `CLIPDetector` loads a Hugging Face `CLIPModel` folder (config.json, model.safetensors or pytorch_model.bin, the
  tokenizer, preprocessor_config.json) from disk; it never downloads. The folder comes from an explicit path,
  `$FLEXGEN_CLIP`, or `$FLEXGEN_CACHE/detectors/<hub name>` (e.g. `clip-vit-large-patch14`, cache default
  ~/.cache/flexgen). Its `sha256` is the sha256 of the weights file, so records tell detectors apart, and its
  `variant` ("ViT-L/14", "ViT-B/32", ...) is read off the config: a number is called a CLIP score of a variant only
  when the architecture is that variant's. No sha256 is pinned for CLIP weights (none was verified first-hand), so
  an architecture-identical model with other weights (e.g. a LAION ViT-L/14) has the same variant: the weights'
  sha256, recorded with every score, is what separates them.
- Image preprocessing reproduces transformers' `CLIPImageProcessor` (the default torchvision backend, run on the CPU
  as torchmetrics and most scripts do) on uint8 (N, 3, H, W) batches: shorter side resized to the configured size
  with antialiased bicubic on the uint8 tensor (torch's native uint8 kernel, the one that processor calls), centre
  crop (top = int((H - h) / 2)), then (x / 255 - mean) / std. The resize stays on the CPU because torch's float
  kernel, which the processor falls back to on a GPU, gives other pixels (up to ~16 levels on noise images) and
  the score would depend on the device; cropping, normalising and the network run on `device`.
- Text: the folder's tokenizer with padding and truncation to the text model's positions (77 for OpenAI CLIP); the
  end-of-text token is kept as the last token of a truncated prompt, as `clip.tokenize(..., truncate=True)` does.
- `clip_score`: w · max(cos(image, text), 0) per sample; w = 100 is the torchmetrics / text-to-image convention
  (the default), w = 2.5 is CLIP-S of Hessel et al. 2021 (who also prefix captions with "A photo depicts").
  torchmetrics' code clamps the mean of the unclamped scores rather than each score; the two agree unless some pair
  has a negative cosine, which `ClipScoreStats.num_zero` counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from flexgen.dist import is_distributed
from flexgen.files import detector_path, file_sha256
from flexgen.metrics.detectors import check_uint8_images

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))

# Per-sample weight w of w · max(cos, 0).
CLIP_SCORE_WEIGHTS = {
    "torchmetrics": 100.0,   # torchmetrics `CLIPScore` docs: max(100 · cos(E_I, E_C), 0), the usual T2I scale
    "hessel": 2.5,           # Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric ...", CLIP-S, w=2.5
}


# ---------------------------------------------------------------------------------------------------------------
# Variants: the published CLIP architectures, recognised from a folder's config.json
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipVariant:
    """One CLIP architecture: its OpenAI name, the Hugging Face hub id of its OpenAI weights, and the config values
    (`projection_dim`, `vision.<key>`, `text.<key>`) that identify it."""

    name: str
    hub_id: str
    spec: tuple[tuple[str, int], ...]

    @property
    def folder_name(self) -> str:
        """The default folder name under $FLEXGEN_CACHE/detectors/: the hub id's name ('clip-vit-large-patch14')."""
        return self.hub_id.rsplit("/", 1)[-1]


def _spec(projection: int, vision: tuple[int, int, int, int], text: tuple[int, int]) -> tuple[tuple[str, int], ...]:
    """(projection_dim, vision (hidden, layers, patch, image size), text (hidden, layers)); 77 text positions."""
    hidden, layers, patch, size = vision
    return (("projection_dim", projection), ("vision.hidden_size", hidden), ("vision.num_hidden_layers", layers),
            ("vision.patch_size", patch), ("vision.image_size", size), ("text.hidden_size", text[0]),
            ("text.num_hidden_layers", text[1]), ("text.max_position_embeddings", 77))


# Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision", Tables 19-20.
CLIP_VARIANTS: dict[str, ClipVariant] = {v.name: v for v in (
    ClipVariant("ViT-B/32", "openai/clip-vit-base-patch32", _spec(512, (768, 12, 32, 224), (512, 12))),
    ClipVariant("ViT-B/16", "openai/clip-vit-base-patch16", _spec(512, (768, 12, 16, 224), (512, 12))),
    ClipVariant("ViT-L/14", "openai/clip-vit-large-patch14", _spec(768, (1024, 24, 14, 224), (768, 12))),
    ClipVariant("ViT-L/14@336px", "openai/clip-vit-large-patch14-336", _spec(768, (1024, 24, 14, 336), (768, 12))),
)}
DEFAULT_VARIANT = "ViT-L/14"


def get_variant(name: str) -> ClipVariant:
    if name not in CLIP_VARIANTS:
        raise KeyError(f"unknown CLIP variant {name!r}; known: {', '.join(CLIP_VARIANTS)}")
    return CLIP_VARIANTS[name]


def config_values(config: Any) -> dict[str, int]:
    """The identifying values of a `CLIPConfig` (keys as in `ClipVariant.spec`)."""
    values = {"projection_dim": int(config.projection_dim)}
    for side, sub in (("vision", config.vision_config), ("text", config.text_config)):
        for key in ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "max_position_embeddings"):
            if hasattr(sub, key):
                values[f"{side}.{key}"] = int(getattr(sub, key))
    return values


def variant_of(config: Any) -> str | None:
    """The name of the variant whose architecture `config` has, or None."""
    values = config_values(config)
    for variant in CLIP_VARIANTS.values():
        if all(values.get(key) == value for key, value in variant.spec):
            return variant.name
    return None


def default_clip_path(variant: str = DEFAULT_VARIANT) -> Path:
    """`$FLEXGEN_CLIP` if set, else `$FLEXGEN_CACHE/detectors/<hub name of the variant>` (cache ~/.cache/flexgen)."""
    return detector_path(get_variant(variant).folder_name, "FLEXGEN_CLIP")


def _where(variant: str) -> str:
    """Where a CLIP folder comes from and where to put it."""
    v = get_variant(variant)
    return (f"download the Hugging Face folder {v.hub_id} on a machine with internet (e.g. `hf download {v.hub_id} "
            f"--local-dir DIR`) and put it at {detector_path(v.folder_name, 'FLEXGEN_CLIP')} ($FLEXGEN_CACHE/detectors/"
            f"{v.folder_name}, cache default ~/.cache/flexgen), set $FLEXGEN_CLIP=DIR, or pass the folder explicitly "
            f"(flexgen eval clipscore --detector DIR)")


def _display_name(folder: Path) -> str:
    """The folder's name; for a hub cache snapshot (models--org--name/snapshots/<hash>), the model's name."""
    if re.fullmatch(r"[0-9a-f]{40}", folder.name) and folder.parent.name == "snapshots":
        return folder.parent.parent.name.rsplit("--", 1)[-1]
    return folder.name


# ---------------------------------------------------------------------------------------------------------------
# Image preprocessing (CLIPImageProcessor, torchvision backend) on uint8 batches
# ---------------------------------------------------------------------------------------------------------------
RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}    # PIL resample ids in preprocessor_config.json -> torch modes


def shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') with the shorter side = size and the longer one int(size · long / short), as transformers computes."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def clip_preprocess(images: torch.Tensor, size: int, crop: tuple[int, int], mean: Sequence[float],
                    std: Sequence[float], resample: str = "bicubic", device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised pixels (N, 3, crop_h, crop_w) on `device`: the CLIP image pipeline."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"CLIP preprocessing takes uint8 images (N, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    height, width = images.shape[-2:]
    new_size = shortest_side_size(height, width, size)
    if new_size[0] < crop[0] or new_size[1] < crop[1]:
        raise ValueError(f"resized images {new_size} are smaller than the crop {crop}")
    x = images.cpu()
    if new_size != (height, width):
        # torch's uint8 antialiased kernel on the CPU, the one transformers' processor calls (see the module doc).
        x = F.interpolate(x, size=new_size, mode=resample, align_corners=False, antialias=True)
    x = x.to(device)
    top, left = int((new_size[0] - crop[0]) / 2), int((new_size[1] - crop[1]) / 2)
    x = x[..., top:top + crop[0], left:left + crop[1]].to(torch.float32)
    # (x / 255 - mean) / std, fused as transformers does: (x - 255 mean) / (255 std).
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    return ((x - mean_t) / std_t).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# CLIPDetector: a local CLIPModel folder -> image and text embeddings
# ---------------------------------------------------------------------------------------------------------------
def _check_folder(folder: Path, variant: str) -> Path:
    """The weights file of a complete CLIP folder; anything missing is a FileNotFoundError naming it."""
    where = _where(variant)
    if not folder.is_dir():
        raise FileNotFoundError(f"CLIP detector folder not found: {folder} (nothing to hash: no sha256 computed). "
                                f"Expected a Hugging Face CLIPModel folder with config.json, model.safetensors (or "
                                f"pytorch_model.bin), the tokenizer and preprocessor_config.json; {where}")
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"CLIP detector folder {folder} has no weights file: expected "
                                f"{' or '.join(WEIGHT_FILES)} (no sha256 is pinned for CLIP weights; the file's "
                                f"sha256 is recorded with every score); {where}")
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
    if not any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise FileNotFoundError(f"CLIP detector folder {folder} lacks {', '.join(missing)} (weights {weights.name} "
                                f"present, sha256 not checked: none is pinned); {where}")
    return weights


class CLIPDetector:
    """CLIP image and text embeddings from a local Hugging Face CLIPModel folder (never downloads).

    `path` defaults to `default_clip_path(variant)`; `variant` (e.g. "ViT-L/14"), when given, is required of the
    folder's config (ValueError otherwise). Attributes: `name` (the folder's name), `sha256` (of the weights file),
    `variant` (the recognised architecture or None), `dim` (embedding size)."""

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32,
                 dtype: torch.dtype = torch.float32, variant: str | None = None):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        wanted = variant or DEFAULT_VARIANT
        get_variant(wanted)
        self.path = Path(path).expanduser() if path is not None else default_clip_path(wanted)
        self.weights_file = _check_folder(self.path, wanted)
        self.sha256: str | None = file_sha256(self.weights_file)
        self.name = _display_name(self.path.resolve())

        model = CLIPModel.from_pretrained(self.path, local_files_only=True, dtype=dtype)
        self.variant = variant_of(model.config)
        if variant is not None and self.variant != variant:
            raise ValueError(f"CLIP folder {self.path} is {self.variant or 'not a known CLIP variant'} "
                             f"({config_values(model.config)}), not {variant}; {_where(variant)}")
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.dim = int(model.config.projection_dim)
        self.device, self.batch_size, self.dtype = torch.device(device), batch_size, dtype
        self._read_preprocessing(CLIPImageProcessor.from_pretrained(self.path, local_files_only=True))

    def _read_preprocessing(self, processor: Any) -> None:
        """Size, crop, mean, std and resampling from preprocessor_config.json (CLIP's own pipeline only)."""
        where = self.path / "preprocessor_config.json"
        if not (processor.do_resize and processor.do_center_crop and processor.do_rescale and processor.do_normalize):
            raise ValueError(f"{where}: expected resize, centre crop, rescale and normalise all enabled (CLIP's "
                             f"pipeline), got do_resize={processor.do_resize}, do_center_crop="
                             f"{processor.do_center_crop}, do_rescale={processor.do_rescale}, "
                             f"do_normalize={processor.do_normalize}")
        if not math.isclose(float(processor.rescale_factor), 1 / 255):
            raise ValueError(f"{where}: rescale_factor {processor.rescale_factor}, expected 1/255")
        size, crop = processor.size, processor.crop_size
        if not size.get("shortest_edge") or not (crop.get("height") and crop.get("width")):
            raise ValueError(f"{where}: expected size {{shortest_edge}} and crop_size {{height, width}}, got "
                             f"{dict(size)} and {dict(crop)}")
        resample = int(processor.resample)
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"{where}: resample {resample} is not supported (known: {RESAMPLE_MODES})")
        self.image_size = int(size["shortest_edge"])
        self.crop = (int(crop["height"]), int(crop["width"]))
        if self.crop[0] > self.image_size or self.crop[1] > self.image_size:
            raise ValueError(f"{where}: crop {self.crop} is larger than the resized shorter side {self.image_size}")
        self.mean = tuple(float(m) for m in processor.image_mean)
        self.std = tuple(float(s) for s in processor.image_std)
        self.resample = RESAMPLE_MODES[resample]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> CLIP pixel values (N, 3, crop_h, crop_w) on the detector's device and dtype."""
        return clip_preprocess(images, self.image_size, self.crop, self.mean, self.std, self.resample, self.device,
                               self.dtype)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """uint8 images (N, 3, H, W), values 0..255 -> float32 (N, D) image embeddings on the CPU (unit L2 norm
        unless `normalize=False`)."""
        check_uint8_images(images, "CLIPDetector")
        out = []
        for chunk in images.split(self.batch_size) if len(images) else ():
            pooled = self.model.vision_model(pixel_values=self.preprocess(chunk)).pooler_output
            out.append(self.model.visual_projection(pooled).float().cpu())
        features = torch.cat(out) if out else torch.empty(0, self.dim)
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def text_features(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Prompts -> float32 (N, D) text embeddings on the CPU (unit L2 norm unless `normalize=False`); prompts
        longer than the text model's positions are truncated (end-of-text token kept)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text_features takes a list of strings, got {type(texts).__name__}")
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(self.device)
            pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                           attention_mask=tokens["attention_mask"]).pooler_output
            out.append(self.model.text_projection(pooled).float().cpu())
        features = torch.cat(out) if out else torch.empty(0, self.dim)
        return F.normalize(features, dim=-1) if normalize else features


# ---------------------------------------------------------------------------------------------------------------
# clip_score and its mergeable statistics
# ---------------------------------------------------------------------------------------------------------------
def clip_score(image_features: torch.Tensor | np.ndarray, text_features: torch.Tensor | np.ndarray,
               convention: str = "torchmetrics") -> torch.Tensor:
    """Per-sample w · max(cos(image_i, text_i), 0) in float64 (N,): w = 100 ("torchmetrics", the usual T2I CLIP
    score) or 2.5 ("hessel", CLIP-S). Features need not be normalised."""
    # torchmetrics `clip_score` docs: CLIPScore(I, C) = max(100 · cos(E_I, E_C), 0); Hessel et al. 2021: w = 2.5.
    if convention not in CLIP_SCORE_WEIGHTS:
        raise ValueError(f"unknown CLIP score convention {convention!r}; known: {sorted(CLIP_SCORE_WEIGHTS)}")
    images = torch.as_tensor(image_features).to("cpu", torch.float64)
    texts = torch.as_tensor(text_features).to("cpu", torch.float64)
    if images.ndim != 2 or images.shape != texts.shape:
        raise ValueError(f"expected image and text features of one shape (N, D), got {tuple(images.shape)} and "
                         f"{tuple(texts.shape)}")
    if not (torch.isfinite(images).all() and torch.isfinite(texts).all()):
        raise ValueError("CLIP features contain NaN or inf values")
    norms = torch.stack([images.norm(dim=-1), texts.norm(dim=-1)])
    if len(images) and bool((norms == 0).any()):
        raise ValueError("a CLIP feature vector has zero norm: its cosine is undefined")
    cos = (images * texts).sum(-1) / (norms[0] * norms[1])
    return CLIP_SCORE_WEIGHTS[convention] * cos.clamp(min=0.0)


class ClipScoreStats:
    """Count, Σs and Σs² of per-sample scores in float64, plus how many were 0 (cos ≤ 0, clamped); merges exactly
    and all-reduces across torch.distributed ranks like `FeatureStats`."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.num_zero = 0

    def update(self, scores: torch.Tensor | np.ndarray | Sequence[float]) -> ClipScoreStats:
        """Add a 1-D batch of per-sample scores. Returns self."""
        s = torch.as_tensor(scores).to("cpu", torch.float64)
        if s.ndim != 1:
            raise ValueError(f"scores must be 1-D (N,), got shape {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise ValueError("scores contain NaN or inf values")
        self.count += len(s)
        self.total += float(s.sum())
        self.total_sq += float((s * s).sum())
        self.num_zero += int((s == 0).sum())
        return self

    def merge(self, other: ClipScoreStats) -> ClipScoreStats:
        """Add another accumulator's samples into this one. Returns self."""
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.num_zero += other.num_zero
        return self

    def all_reduce(self) -> ClipScoreStats:
        """Sum over torch.distributed ranks (every rank must call it); without a process group it does nothing."""
        if not is_distributed():
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        sums = torch.tensor([self.total, self.total_sq], dtype=torch.float64, device=device)
        counts = torch.tensor([self.count, self.num_zero], dtype=torch.int64, device=device)
        dist.all_reduce(sums)
        dist.all_reduce(counts)
        self.total, self.total_sq = (float(v) for v in sums.cpu())
        self.count, self.num_zero = (int(v) for v in counts.cpu())
        return self

    @property
    def mean(self) -> float:
        if self.count < 1:
            raise ValueError("mean of empty CLIP score statistics (no scores were added)")
        return self.total / self.count

    @property
    def std(self) -> float:
        """Sample standard deviation of the per-sample scores (÷ N−1)."""
        if self.count < 2:
            raise ValueError(f"the standard deviation needs at least 2 scores, got {self.count}")
        variance = (self.total_sq - self.total * self.total / self.count) / (self.count - 1)
        return math.sqrt(max(variance, 0.0))

    @property
    def sem(self) -> float:
        """Standard error of the mean, std / √N."""
        return self.std / math.sqrt(self.count)

    def to_dict(self) -> dict[str, float | int | None]:
        """mean, std and sem (None when there are too few scores), count, num_zero."""
        return {"mean": self.mean if self.count else None, "std": self.std if self.count > 1 else None,
                "sem": self.sem if self.count > 1 else None, "count": self.count, "num_zero": self.num_zero}

    def __repr__(self) -> str:
        return f"ClipScoreStats(count={self.count}, total={self.total}, num_zero={self.num_zero})"

