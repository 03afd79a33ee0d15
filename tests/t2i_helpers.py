"""Tiny offline text-to-image components: nothing is downloaded, everything is built from configs.

A T5 encoder with random weights, a T5 tokenizer whose Unigram vocabulary is built in memory (real word ids, no
sentencepiece file), an AutoencoderKL with 2× downsampling, and a PixArt transformer of two blocks.
An image–caption folder and the FlexDiT fine-tuning config on them (test_t2i_train, test_t2i_dydit).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a photo of the red blue green cat dog tree house sky sea over under painting small big "
         "on in with and at night day").split()
CAPTION_DIM = 32          # d_model of the tiny T5 = caption_channels of the tiny transformer
MAX_LENGTH = 16           # text tokens (PixArt-α: 120)


def tiny_tokenizer():
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + w, -1.0) for w in WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MAX_LENGTH)


def tiny_text_encoder(seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(WORDS) + 4, d_model=CAPTION_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def tiny_vae(seed: int = 0):
    """An AutoencoderKL with 2× downsampling and 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=32).eval()


def tiny_transformer_config(**overrides) -> dict:
    """PixArtTransformer2DModel arguments: 8×8 latents, patch 2 (a 4×4 token grid), 6 blocks of width 24."""
    config = dict(sample_size=8, num_layers=6, patch_size=2, attention_head_dim=8, num_attention_heads=3,
                  caption_channels=CAPTION_DIM, cross_attention_dim=24, in_channels=4, out_channels=8,
                  num_embeds_ada_norm=1000, norm_num_groups=4)
    config.update(overrides)
    return config


def tiny_transformer(seed: int = 0, **overrides):
    """A dense PixArt transformer with random (non-zero) weights everywhere, so every path matters in tests."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(**tiny_transformer_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def save_tiny_pipeline(path: str | Path, transformer=None, *, text_encoder: bool = True, scheduler=None) -> Path:
    """A PixArt-α pipeline folder (model_index.json, transformer/, vae/, scheduler/, and text_encoder/ +
    tokenizer/ unless `text_encoder=False`), as a user would have copied it onto the machine."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline(tokenizer=tiny_tokenizer() if text_encoder else None,
                               text_encoder=tiny_text_encoder() if text_encoder else None, vae=tiny_vae(),
                               transformer=transformer if transformer is not None else tiny_transformer(),
                               scheduler=scheduler if scheduler is not None else DPMSolverMultistepScheduler())
    pipe.save_pretrained(path)
    return Path(path)


def make_captions(root, n=6):
    """An image–caption folder: n random PNGs, each with a caption of tiny-vocabulary words beside it."""
    from PIL import Image

    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(" ".join(WORDS[j % len(WORDS)] for j in range(i, i + 3 + i % 3)))
    return root


def tiny_config(tmp_path, *extra):
    """The 256 px FlexDiT preset shrunk to the tiny pipeline in tmp_path/pipe and the captions in tmp_path/captions."""
    from flexgen.config import load_config

    pipe, root = tmp_path / "pipe", tmp_path / "captions"
    configs = Path(__file__).parent.parent / "configs" / "t2i" / "pixart"
    return load_config(str(configs / "flexpixart-xl2-256.yaml"), [
        "model.depth=6", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
        "autoencoder.downsample=2", f"autoencoder.path={pipe}", "autoencoder.scale_factor=1.0",
        f"data.root={root}", f"data.text_encoder={pipe}", f"data.text_cache={tmp_path / 'cache'}",
        f"data.max_length={MAX_LENGTH}", "data.image_size=16", "data.num_workers=0", "data.hflip=true",
        f"train.init_from={pipe}", "train.batch_size=2", "train.total_samples=12", "train.log_every_samples=2",
        "train.ckpt_every_samples=12", "train.lr=1e-3", "density.layout=P GSR DD", "density.schedule.grid_min=1",
        "density.schedule.grid_max=4", *extra])
