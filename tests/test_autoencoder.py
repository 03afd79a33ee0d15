"""The frame-by-frame autoencoder: a local diffusers AutoencoderKL (tiny, random) or the pixel identity."""

import pytest
import torch
from diffusers import AutoencoderKL

from flexgen.autoencoder import Autoencoder, to_uint8
from flexgen.config import AutoencoderConfig


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("sd-vae")
    vae.save_pretrained(path / "vae")                      # the layout of a pipeline folder: <root>/vae/
    return path


def test_local_vae_encodes_and_decodes_frame_by_frame(vae_dir):
    ae = Autoencoder.from_config(AutoencoderConfig(kind="sd-vae", path=str(vae_dir), downsample=2))
    ae.chunk = 3                                            # several chunks for 2 × 4 frames
    video = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    z = ae.encode(video, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 4, 8, 8)
    # Frame by frame and scaled: frame (1, 2) equals the VAE on that frame alone, times 0.18215.
    mean = ae.vae.encode(video[1, 2][None]).latent_dist.mean * 0.18215
    z_mean = ae._frames(video, lambda f: ae.vae.encode(f).latent_dist.mean * ae.scale_factor)
    torch.testing.assert_close(z_mean[1, 2], mean[0], rtol=1e-5, atol=1e-5)
    pixels = ae.decode(z)
    assert pixels.shape == video.shape and pixels.abs().max() <= 1
    torch.testing.assert_close(pixels[0, 1], ae.vae.decode(z[0, 1][None] / 0.18215).sample[0].clamp(-1, 1),
                               rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in ae.parameters())


def test_pixel_space_is_the_identity_and_uint8_conversion():
    ae = Autoencoder.from_config(AutoencoderConfig(kind="pixel", downsample=1))
    x = torch.rand(1, 2, 3, 4, 4) * 2 - 1
    assert torch.equal(ae.encode(x), x) and torch.equal(ae.decode(x), x)
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 3.0])).tolist() == [0, 128, 255, 255]


def test_autoencoder_errors(vae_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no AutoencoderKL at .*sd-vae-ft-ema"):
        Autoencoder.from_config(AutoencoderConfig(kind="sd-vae", path=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="downsamples by 2"):
        Autoencoder.from_config(AutoencoderConfig(kind="sd-vae", path=str(vae_dir), downsample=8))
    with pytest.raises(ValueError, match="downsample 1"):
        Autoencoder.from_config(AutoencoderConfig(kind="pixel", downsample=8))
