"""The T5 text side of PixArt-α, shared by training (cached caption embeddings) and generation.

    tokenizer, text_encoder = load_text_encoder("/models/PixArt-XL-2-512x512")     # or a T5 folder
    embeds, mask = encode_prompts(["a red cat"], tokenizer, text_encoder)            # (1, 120, 4096), (1, 120)

`encode_prompts` is the path of diffusers' `PixArtAlphaPipeline.encode_prompt` with `clean_caption=False`
(lower-case and strip, pad to `max_length`, T5 encoder with the attention mask), so embeddings cached for training
are the ones the pipeline computes at generation time. The unconditional input is T5("") with its mask (diffusers'
PixArt convention; the converter drops the original learned `y_embedding`).

`encoder_identity` names an encoder for cache keys: the resolved encoder folder plus a short hash of its
config.json and weight files' names and sizes (an encoder built in memory: a hash of its config and weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

# What a user must put on disk; the hub names say where to get it (downloaded on a machine with internet access).
EXPECTED = ("a T5 encoder folder (t5-v1_1-xxl: config.json, model weights and tokenizer files), or a PixArt-α "
            "pipeline folder with text_encoder/ and tokenizer/ subfolders — DeepFloyd/t5-v1_1-xxl or "
            "PixArt-alpha/PixArt-XL-2-512x512 on the Hugging Face hub, downloaded on a machine with internet access")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")       # tokenizers' JSON or the sentencepiece model
MAX_LENGTH = 120                                           # PixArt-α's T5 tokens (`model_max_length=120`)


# ----------------------------------------------------------------------------------------------------------
# Where the encoder and its tokenizer live.


def _is_pipeline(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "text_encoder").is_dir() or (path / "tokenizer").is_dir()


def _weight_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def resolve_text_encoder(path: str | Path, tokenizer: bool = True) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) of a pipeline or T5 folder; FileNotFoundError naming what is missing
    (the tokenizer files are not required with `tokenizer=False`)."""
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder {path} is not a folder; expected {EXPECTED}")
    if _is_pipeline(path):
        encoder_dir, tokenizer_dir = path / "text_encoder", path / "tokenizer"
        absent = [f"{d.name}/" for d in (encoder_dir, tokenizer_dir)[:1 + tokenizer] if not d.is_dir()]
        if absent:
            raise FileNotFoundError(f"{path} looks like a diffusers pipeline folder but has no "
                                    f"{' and no '.join(absent)} (saved without its text encoder?); expected {EXPECTED}")
    else:
        encoder_dir = tokenizer_dir = path
    missing = []
    if not (encoder_dir / "config.json").is_file():
        missing.append(f"{encoder_dir / 'config.json'}")
    if not _weight_files(encoder_dir):
        missing.append(f"model weights in {encoder_dir} (model.safetensors, pytorch_model.bin or sharded with an "
                       "index)")
    if tokenizer and not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer files in {tokenizer_dir} ({' or '.join(TOKENIZER_FILES)})")
    if missing:
        raise FileNotFoundError(f"text encoder {path}: missing {'; '.join(missing)}; expected {EXPECTED}")
    return encoder_dir, tokenizer_dir


def load_text_encoder(path: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> tuple[object, nn.Module]:
    """(tokenizer, T5 encoder) from a local folder: a diffusers PixArt-α pipeline (text_encoder/ + tokenizer/) or
    a T5 encoder with its tokenizer files. The encoder is in eval mode with gradients off. Nothing is downloaded."""
    from transformers import AutoTokenizer, T5EncoderModel

    encoder_dir, tokenizer_dir = resolve_text_encoder(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except Exception as e:                                      # name the folder; transformers' text follows
        raise RuntimeError(f"cannot load the tokenizer in {tokenizer_dir}: {e}") from e
    try:
        encoder = T5EncoderModel.from_pretrained(str(encoder_dir), local_files_only=True, dtype=dtype)
    except Exception as e:                                      # name the folder; transformers' text follows
        raise RuntimeError(f"cannot load a T5 encoder from {encoder_dir}: {e}") from e
    encoder = encoder.to(device).eval()
    encoder.requires_grad_(False)
    return tokenizer, encoder


# ----------------------------------------------------------------------------------------------------------
# Encoding: the pipeline's `encode_prompt` path.


def preprocess(text: str) -> str:
    """A caption as PixArt-α's pipeline feeds it to the tokenizer with `clean_caption=False`."""
    return text.lower().strip()        # mirrors diffusers' PixArtAlphaPipeline._text_preprocessing (no cleaning)


def encode_prompts(captions: list[str], tokenizer, text_encoder: nn.Module, max_length: int = MAX_LENGTH,
                   device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 embeddings (B, max_length, C) in the encoder's dtype and attention masks (B, max_length) int64, exactly
    as `PixArtAlphaPipeline.encode_prompt(..., clean_caption=False, max_sequence_length=max_length)`: padded to
    `max_length`, longer captions truncated (the last kept token is </s>). On `device` (default: the encoder's)."""
    if isinstance(captions, str) or not captions:
        raise ValueError(f"captions must be a non-empty list of strings, got {captions!r}")
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    device = torch.device(device) if device is not None else next(text_encoder.parameters()).device
    tokens = tokenizer([preprocess(c) for c in captions], padding="max_length", max_length=max_length,
                       truncation=True, add_special_tokens=True, return_tensors="pt")
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)      # (B, L), (B, L)
    with torch.no_grad():
        embeds = text_encoder(ids, attention_mask=mask)[0]                          # (B, L, C)
    return embeds, mask.long()


# ----------------------------------------------------------------------------------------------------------
# Identity of an encoder, for cache keys.


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:12]


# Bookkeeping written into config.json by savers (not part of what the encoder computes).
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype")


def _config_bytes(config: dict) -> bytes:
    return json.dumps({k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}, sort_keys=True).encode()


def encoder_identity(path_or_model: str | Path | nn.Module) -> str:
    """A string naming a text encoder: "<resolved encoder folder>#<hash of config.json and weight names/sizes>".
    A model loaded with `from_pretrained` is named by its folder (same string as its path); a model built in
    memory by "in-memory#<hash of its config and the first values of every tensor>"."""
    if isinstance(path_or_model, nn.Module):
        source = getattr(path_or_model, "name_or_path", "") or ""
        if source and Path(source).expanduser().is_dir():
            return encoder_identity(source)
        config = getattr(path_or_model, "config", None)
        parts = [_config_bytes(config.to_dict()) if config is not None else b""]
        for name, tensor in path_or_model.state_dict().items():
            head = tensor.detach().flatten()[:16].to("cpu", torch.float64)
            parts.append(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode() + head.numpy().tobytes())
        return f"in-memory#{_digest(*parts)}"
    encoder_dir, _ = resolve_text_encoder(path_or_model, tokenizer=False)
    encoder_dir = encoder_dir.resolve()
    config = json.loads((encoder_dir / "config.json").read_text())
    weights = "\n".join(f"{p.name} {p.stat().st_size}" for p in _weight_files(encoder_dir))
    return f"{encoder_dir}#{_digest(_config_bytes(config), weights.encode())}"
