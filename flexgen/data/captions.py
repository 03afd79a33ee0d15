"""Image–caption datasets for fine-tuning PixArt-α, and the cache of T5 caption embeddings they read.

    dataset = CaptionDataset("/data/pokemon", image_size=512, hflip=True)
    cache = TextEmbeddingCache("/cache/t5", encoder_identity("/models/PixArt-XL-2-512x512"), max_length=120)
    dataset.attach_text_cache(cache)        # after `flexgen data cache-text ...` has filled it
    item = dataset[0]   # {"image": (3, S, S) float32 in [-1, 1], "caption": str, "index": int,
                        #  "text": (120, C) float32, "text_mask": (120,) int64}

Layouts under `root` (found in this order):
- a JSONL manifest: `manifest`, or `root/metadata.jsonl` (the Hugging Face imagefolder convention), one JSON object
  a line: the image path relative to root under "file_name" (or "image"), its caption under "text" (or "caption");
  blank lines are ignored. Items keep the manifest's order; an image may appear on several lines (captions).
- image files (.jpg .jpeg .png .webp .bmp, any depth, hidden names left out), each with its caption in a
  same-stem .txt file beside it (`cat.png` + `cat.txt`; the whole file, stripped). Items are in sorted path order.

Bad input never ends an epoch. While indexing, images without a caption, empty captions, manifest lines that are
malformed or name a missing file, and images PIL cannot identify or verify (`Image.open(...).verify()`) are left
out; a `DataWarning` names them and `dataset.skipped` lists them with reasons. An image that fails to decode later
(e.g. a truncated JPEG, which `verify` does not decode) is recorded the same way and the next item is used.

The transform is PixArt-α's `default_train` (`transform_image`). With `hflip`, item i of epoch e is mirrored
left-right with probability 1/2, drawn from a numpy Generator seeded with (seed, e, i, attempt): items do not depend
on worker or access order; call `set_epoch(e)` for new flips. T5 embeddings are computed once per distinct caption
by `flexgen data cache-text` (`flexgen.data.prepare`) into a `TextEmbeddingCache`; the null caption "" is always
cached: training replaces dropped captions with T5("") (diffusers' PixArt convention).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import nn

from flexgen.data.base import DatasetLayoutError, MissingTextEmbedding, SkipAndReplaceDataset, Skipped, describe_error
from flexgen.data.media import IMAGE_EXTENSIONS
from flexgen.files import atomic_write, walk_visible
from flexgen.text_encoder import MAX_LENGTH, encode_prompts, encoder_identity, load_text_encoder, preprocess

log = logging.getLogger(__name__)

MANIFEST_NAME = "metadata.jsonl"                # the Hugging Face imagefolder metadata file
FILE_KEYS = ("file_name", "image")              # manifest keys of the image path (imagefolder: file_name)
CAPTION_KEYS = ("text", "caption")              # manifest keys of the caption
NULL_CAPTION = ""                               # the unconditional caption: T5("") (diffusers' PixArt convention)
CACHE_FORMAT = "flexgen-text-embedding-v1"
CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
EXPECTED_LAYOUT = ("image files (.jpg .jpeg .png .webp .bmp, any depth) each with a same-stem .txt caption beside "
                   f"it, or a JSONL manifest ({MANIFEST_NAME} in the root, or --manifest) with one "
                   '{"file_name": "<path relative to the root>", "text": "<caption>"} object per line')
WARN_LINES = 50                                 # skipped items named in one warning (all are in `skipped`)


# ----------------------------------------------------------------------------------------------------------
# Index records and the transform.


@dataclass(frozen=True)
class CaptionItem:
    path: str           # absolute image path
    caption: str        # as written (the text encoder lower-cases and strips it)


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the short side `size`; the long side truncated as torchvision's Resize(int) does."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def transform_image(image: Image.Image, size: int, flip: bool = False, interpolation: str = "bicubic") -> torch.Tensor:
    """PIL image -> float32 (3, size, size) in [-1, 1]: RGB, short side to `size` (antialiased, PIL), centre crop
    (torchvision's rounding), optional left-right mirror, x / 127.5 − 1.

    PixArt-α's `default_train` (torchvision Resize(S), CenterCrop(S), ToTensor, Normalize(0.5, 0.5) on a PIL RGB
    image): the short side is resized to S with antialiased bicubic resampling (`interpolation`; the released
    `default_train` leaves torchvision's bilinear default, its comment names BICUBIC), the long side to
    int(S · long / short) as torchvision does, then the centre S × S crop. EXIF orientation is not applied (as
    torchvision's loader)."""
    image = image.convert("RGB")
    target = _resized_size(image.width, image.height, size)
    if image.size != target:
        image = image.resize(target, INTERPOLATIONS[interpolation])
    left = int(round((image.width - size) / 2.0))               # torchvision's center_crop offsets
    top = int(round((image.height - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float()     # (3, S, S)
    return x / 127.5 - 1.0


def _verify_image(path: Path) -> str | None:
    """None when PIL identifies and verifies the file, else the reason it is skipped."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:                                      # UnidentifiedImageError, OSError, SyntaxError, ...
        return f"unreadable image ({describe_error(e)})"
    return None


# ----------------------------------------------------------------------------------------------------------
# Indexing the two layouts.


def _scan_folder(root: Path) -> tuple[list[CaptionItem], list[Skipped], int]:
    """Image files with a same-stem .txt caption, in sorted relative-path order; (items, skipped, images seen)."""
    images: list[str] = []
    texts: set[str] = set()
    unreadable: list[Skipped] = []

    def failed(error: OSError) -> None:
        unreadable.append(Skipped(str(error.filename or root), f"unreadable folder ({describe_error(error)})"))

    for folder, _, filenames in walk_visible(root, onerror=failed, followlinks=True):
        rel_dir = folder.relative_to(root)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                images.append(rel)
            elif suffix == ".txt":
                texts.add(rel)
    items: list[CaptionItem] = []
    skipped = list(unreadable)
    for rel in sorted(images):
        caption_rel = Path(rel).with_suffix(".txt").as_posix()
        if caption_rel not in texts:
            skipped.append(Skipped(str(root / rel), f"no caption file {Path(caption_rel).name} beside it"))
            continue
        try:
            caption = (root / caption_rel).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            skipped.append(Skipped(str(root / rel), f"unreadable caption {caption_rel} ({describe_error(e)})"))
            continue
        if not caption:
            skipped.append(Skipped(str(root / rel), f"empty caption ({caption_rel})"))
            continue
        items.append(CaptionItem(str(root / rel), caption))
    orphans = len(texts) - sum(Path(r).with_suffix(".txt").as_posix() in texts for r in images)
    if orphans:
        log.info("%s: %d .txt file(s) without a same-stem image were ignored", root, orphans)
    return items, skipped, len(images)


def _first(record: dict, keys: Sequence[str]) -> tuple[str | None, object]:
    for key in keys:
        if key in record:
            return key, record[key]
    return None, None


def _scan_manifest(root: Path, manifest: Path) -> tuple[list[CaptionItem], list[Skipped], int]:
    """The lines of a JSONL manifest, in order; (items, skipped, non-blank lines)."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(f"cannot read the manifest {manifest} ({describe_error(e)})") from e
    items: list[CaptionItem] = []
    skipped: list[Skipped] = []
    entries = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        entries += 1
        where, line_name = f"{manifest}:{number}", f"{manifest.name} line {number}"
        try:
            record = json.loads(line)
        except ValueError as e:
            skipped.append(Skipped(where, f"malformed JSON ({describe_error(e)})"))
            continue
        if not isinstance(record, dict):
            skipped.append(Skipped(where, f"not a JSON object but {type(record).__name__}"))
            continue
        file_key, rel = _first(record, FILE_KEYS)
        caption_key, caption = _first(record, CAPTION_KEYS)
        if file_key is None or not isinstance(rel, str) or not rel.strip():
            skipped.append(Skipped(where, f"no image path: needs a non-empty string under {' or '.join(FILE_KEYS)}"))
            continue
        path = root / rel.strip()
        if caption_key is None or not isinstance(caption, str):
            needs = " or ".join(CAPTION_KEYS)
            skipped.append(Skipped(str(path), f"{line_name}: no caption: needs a string under {needs}"))
            continue
        if not caption.strip():
            skipped.append(Skipped(str(path), f"{line_name}: empty caption"))
            continue
        if not path.is_file():
            skipped.append(Skipped(str(path), f"{line_name}: image file not found"))
            continue
        items.append(CaptionItem(str(path), caption.strip()))
    return items, skipped, entries


def _find_manifest(root: Path, manifest: str | Path) -> Path | None:
    """The manifest to read: `manifest` (as given, or relative to the root), else root/metadata.jsonl, else None."""
    if manifest:
        given = Path(manifest).expanduser()
        for candidate in (given, root / given):
            if candidate.is_file():
                return candidate.absolute()
        raise FileNotFoundError(f"manifest {given} not found (also looked in {root}); expected a JSONL file with "
                                f"one {{\"file_name\": ..., \"text\": ...}} object per line")
    auto = root / MANIFEST_NAME
    return auto if auto.is_file() else None


# ----------------------------------------------------------------------------------------------------------
# The cache of T5 embeddings.


class TextEmbeddingCache:
    """T5 embeddings of captions on disk, one safetensors file per distinct preprocessed caption:
    `cache_dir/<h[:2]>/<h>.safetensors` with h the sha256 of (encoder id, max_length, preprocessed caption), holding
    only the unmasked tokens (float16 by default).

    `encoder_id` names the encoder (`encoder_identity`); together with `max_length` and the preprocessed caption it
    makes the key, so another encoder or length never reads these entries. Files hold "embeds" (n, C) — the n
    unmasked tokens, in `dtype` — and metadata (format, encoder id, max_length, caption). `get` pads back to
    (max_length, C) with zeros: the padded positions of T5's output differ from zero, but PixArt masks them out
    of the cross-attention, so the model sees the same input."""

    def __init__(self, cache_dir: str | Path, encoder_id: str, max_length: int = MAX_LENGTH,
                 dtype: torch.dtype | str = torch.float16):
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        if isinstance(dtype, str):
            if dtype not in CACHE_DTYPES:
                raise ValueError(f"cache dtype {dtype!r}: choose one of {', '.join(CACHE_DTYPES)}")
            dtype = CACHE_DTYPES[dtype]
        if dtype not in CACHE_DTYPES.values():
            raise ValueError(f"cache dtype {dtype}: choose one of {', '.join(CACHE_DTYPES)}")
        if not encoder_id:
            raise ValueError("encoder_id is empty: pass encoder_identity(<text encoder path or model>)")
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        self.encoder_id, self.max_length, self.dtype = encoder_id, int(max_length), dtype

    def key(self, caption: str) -> str:
        """sha256 hex of (encoder id, max_length, preprocessed caption)."""
        text = json.dumps([self.encoder_id, self.max_length, preprocess(caption)], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path(self, caption: str) -> Path:
        h = self.key(caption)
        return self.cache_dir / h[:2] / f"{h}.safetensors"

    def __contains__(self, caption: str) -> bool:
        return self.path(caption).is_file()

    def missing(self, captions: Iterable[str]) -> list[str]:
        """The captions (first spelling of each key, in order) that have no entry."""
        seen: set[str] = set()
        result = []
        for caption in captions:
            h = self.key(caption)
            if h not in seen:
                seen.add(h)
                if not self.path(caption).is_file():
                    result.append(caption)
        return result

    def hint(self) -> str:
        """The command that fills this cache (for error messages)."""
        encoder = self.encoder_id.rpartition("#")[0]
        encoder = "<the text encoder folder>" if encoder in ("", "in-memory") else encoder
        return (f"run `flexgen data cache-text --root <dataset> --text-encoder {encoder} --cache {self.cache_dir} "
                f"--max-length {self.max_length}` first")

    def get(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds (max_length, C) float32, zero past the valid tokens; mask (max_length,) int64)."""
        path = self.path(caption)
        if not path.is_file():
            raise MissingTextEmbedding(f"no cached T5 embedding of caption {caption!r} (encoder {self.encoder_id}, "
                                       f"max_length {self.max_length}): {path} does not exist; {self.hint()}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tokens = f.get_tensor("embeds")                                        # (n, C)
        except Exception as e:                                  # SafetensorError, OSError: a damaged file
            raise RuntimeError(f"cannot read the cached text embedding {path} ({describe_error(e)}); delete it and "
                               f"{self.hint()}") from e
        expected = {"format": CACHE_FORMAT, "encoder_id": self.encoder_id, "max_length": str(self.max_length)}
        wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
        n = tokens.shape[0] if tokens.ndim == 2 else 0
        if wrong or not 1 <= n <= self.max_length:
            raise RuntimeError(f"cached text embedding {path} does not match this cache (metadata {wrong}, "
                               f"tokens {tuple(tokens.shape)}, expected ≤ {self.max_length}); delete it and "
                               f"{self.hint()}")
        embeds = torch.zeros(self.max_length, tokens.shape[1], dtype=torch.float32)
        embeds[:n] = tokens.float()
        mask = torch.zeros(self.max_length, dtype=torch.long)
        mask[:n] = 1
        return embeds, mask

    def put(self, caption: str, embeds: torch.Tensor, mask: torch.Tensor) -> Path:
        """Store one caption's (L, C) embeddings and (L,) mask (the valid tokens must come first, as T5 pads on the
        right); atomic: a temporary file renamed into place, so readers never see half an entry."""
        if embeds.ndim != 2 or mask.shape != embeds.shape[:1] or embeds.shape[0] != self.max_length:
            raise ValueError(f"expected embeds ({self.max_length}, C) and mask ({self.max_length},), got "
                             f"{tuple(embeds.shape)} and {tuple(mask.shape)}")
        n = int(mask.sum())
        if n < 1 or not bool(mask[:n].all()):
            raise ValueError(f"caption {caption!r}: the mask must be ones then zeros with at least one token, got "
                             f"{mask.tolist()}")
        tokens = embeds[:n].detach().to("cpu", self.dtype).contiguous()                  # (n, C)
        if not bool(torch.isfinite(tokens).all()):
            raise ValueError(f"caption {caption!r}: T5 embeddings are not finite in {self.dtype} (float16 overflow? "
                             "cache in bfloat16 or float32)")
        meta = {"format": CACHE_FORMAT, "encoder_id": self.encoder_id, "max_length": str(self.max_length),
                "caption": preprocess(caption)}
        path = self.path(caption)
        with atomic_write(path) as tmp:
            tmp.write_bytes(save_safetensors({"embeds": tokens}, metadata=meta))
        return path

    def fill(self, captions: Iterable[str], tokenizer, text_encoder: nn.Module, batch_size: int = 16,
             device: str | torch.device | None = None, progress: bool = True) -> int:
        """Encode (`encode_prompts`) and store the captions that have no entry, always including the null caption
        ""; returns how many entries were written."""
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        todo = self.missing([NULL_CAPTION, *captions])
        with tqdm(total=len(todo), desc="caching T5 embeddings", unit="caption", disable=not progress) as bar:
            for begin in range(0, len(todo), batch_size):
                batch = todo[begin:begin + batch_size]
                embeds, mask = encode_prompts(batch, tokenizer, text_encoder, self.max_length, device)   # (B, L, C)
                for caption, e, m in zip(batch, embeds, mask, strict=True):
                    self.put(caption, e, m)
                bar.update(len(batch))
        return len(todo)

    def __repr__(self) -> str:
        return (f"TextEmbeddingCache({self.cache_dir}, encoder={self.encoder_id}, max_length={self.max_length}, "
                f"dtype={self.dtype})")


# ----------------------------------------------------------------------------------------------------------
# The dataset.


class CaptionDataset(SkipAndReplaceDataset):
    """Image–caption pairs under `root` (a folder of images with .txt captions, or a JSONL manifest); see the
    module docstring for layouts, the transform and the bad-input rules.

    An item's "index" is the item it was read from: `index`, or the next readable item when that one failed.
    Attributes: `items` (usable pairs), `skipped` (everything left out, with reasons), `manifest` (the manifest
    read, or None), `text_cache` (attached with `attach_text_cache`, or None)."""

    item_name = "image"
    exhausted_error = OSError

    def __init__(self, root: str | Path, image_size: int = 256, hflip: bool = False, manifest: str | Path = "",
                 seed: int = 0, *, interpolation: str = "bicubic", verify: bool = True):
        if image_size < 1 or seed < 0:
            raise ValueError(f"image_size must be positive and seed non-negative, got {image_size} and {seed}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")
        super().__init__(Path(root).expanduser().absolute(), seed)
        if not self.root.is_dir():
            raise DatasetLayoutError(f"image–caption root {self.root} is not a folder; expected {EXPECTED_LAYOUT}")
        self.image_size, self.hflip, self.interpolation = image_size, hflip, interpolation
        self.text_cache: TextEmbeddingCache | None = None

        self.manifest = _find_manifest(self.root, manifest)
        if self.manifest is not None:
            candidates, skipped, seen = _scan_manifest(self.root, self.manifest)
            source = f"manifest {self.manifest}: {seen} entries"
        else:
            candidates, skipped, seen = _scan_folder(self.root)
            source = f"{seen} image files"
        self.skipped.extend(skipped)
        self.items: list[CaptionItem] = []
        reasons: dict[str, str | None] = {}                     # an image listed twice is verified once
        for item in candidates:
            if verify and item.path not in reasons:
                reasons[item.path] = _verify_image(Path(item.path))
            reason = reasons.get(item.path)
            if reason is None:
                self.items.append(item)
            else:
                self.skipped.append(Skipped(item.path, reason))

        self.warn_skipped(f"{len(self.items)} image–caption pairs", limit=WARN_LINES)
        if not self.items:
            raise DatasetLayoutError(f"{self.root} has no usable image–caption pair ({source}, {len(self.skipped)} "
                                     f"item(s) skipped, see the warning above); expected {EXPECTED_LAYOUT}")

    # --- text embeddings ---------------------------------------------------------------------------------

    @property
    def captions(self) -> list[str]:
        return [item.caption for item in self.items]

    def attach_text_cache(self, cache: TextEmbeddingCache, check: bool = True) -> None:
        """Add "text" (L, C) and "text_mask" (L,) from `cache` to every item. With `check`, every caption and the
        null caption must already be cached (MissingTextEmbedding names how many are not, and the command)."""
        if check:
            missing = cache.missing([NULL_CAPTION, *self.captions])
            if missing:
                raise MissingTextEmbedding(f"{len(missing)} of the captions of {self.root} (with the null caption "
                                           f"\"\") are not in {cache}, e.g. {missing[0]!r}; {cache.hint()}")
        self.text_cache = cache

    def null_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """T5("") and its mask, (L, C) and (L,): what a dropped caption becomes (classifier-free guidance)."""
        if self.text_cache is None:
            raise ValueError("no text cache attached (attach_text_cache)")
        return self.text_cache.get(NULL_CAPTION)

    # --- items -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def item_path(self, j: int) -> str:
        return self.items[j].path

    def flips(self, index: int, attempt: int = 0) -> bool:
        """Whether item `index` (its `attempt`-th replacement) is mirrored in the current epoch."""
        return bool(self.rng(index, attempt).random() < 0.5) and self.hflip

    def _load(self, j: int, flip: bool) -> torch.Tensor:
        with Image.open(self.items[j].path) as image:
            image.load()
            return transform_image(image, self.image_size, flip, self.interpolation)

    def __getitem__(self, index: int) -> dict:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        image, j = self.first_readable(index, lambda j, attempt: self._load(j, self.flips(index, attempt)))
        item = {"image": image, "caption": self.items[j].caption, "index": j}                  # (3, S, S)
        if self.text_cache is not None:
            item["text"], item["text_mask"] = self.text_cache.get(self.items[j].caption)   # (L, C), (L,)
        return item

    def __repr__(self) -> str:
        source = f"manifest={self.manifest}" if self.manifest is not None else "folder"
        return (f"CaptionDataset({self.root}, {source}, {len(self.items)} items, {len(self.skipped)} skipped, "
                f"S={self.image_size}, flip={self.hflip}, text_cache={self.text_cache is not None})")


# ----------------------------------------------------------------------------------------------------------
# The training set of a run.


def build_caption_dataset(data_cfg, seed: int = 0, fill: bool = True, progress: bool = True,
                          device: str | torch.device = "cpu") -> CaptionDataset:
    """The training set of a run's `data` section (dataset "captions"): images with their cached T5 embeddings.
    Captions missing from `data.text_cache` (and "") are encoded first with `data.text_encoder` when `fill`, on
    `device` (bfloat16 on a GPU: T5-XXL is 4.7 B parameters; `flexgen data cache-text` does it ahead of time)."""
    if not data_cfg.root or not data_cfg.text_cache or not data_cfg.text_encoder:
        raise ValueError("dataset 'captions' needs data.root (images + captions), data.text_encoder (a local T5 or "
                         "PixArt-α pipeline folder) and data.text_cache (a folder for the T5 embeddings)")
    dataset = CaptionDataset(data_cfg.root, data_cfg.image_size, data_cfg.hflip, data_cfg.manifest, seed)
    cache = TextEmbeddingCache(data_cfg.text_cache, encoder_identity(data_cfg.text_encoder), data_cfg.max_length)
    captions = [NULL_CAPTION, *dataset.captions]
    if fill and cache.missing(captions):
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        tokenizer, encoder = load_text_encoder(data_cfg.text_encoder, device=device, dtype=dtype)
        cache.fill(captions, tokenizer, encoder, device=device, progress=progress)
        del encoder
    dataset.attach_text_cache(cache)
    return dataset
