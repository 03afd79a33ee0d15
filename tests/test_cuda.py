"""GPU checks (`pytest -m cuda`; skipped without CUDA, the reason printed by -ra): SDPA in bf16 against a float64
reference, FlexDiT's sparse path and the composed FlexDiT ∘ DyDiT skipping forward against their definitions (the
float64 CPU model, the masked forward), generation reproducible from seeds. FLEXGEN_TEST_DEVICE=cpu runs the same
checks on the CPU, which is how their logic is checked on machines without a GPU."""

import os

import pytest
import torch

from flexgen.attention import attention
from flexgen.config import load_config
from flexgen.diffusion import classifier_free_guidance, linear_betas, sample
from flexgen.registry import build_denoiser
from tests.dydit_helpers import GRIDS, dydit_of, inputs, models, randomise_routers
from tests.helpers import SEQLENS_KV, SEQLENS_Q, qkv, reference

DEVICE = os.environ.get("FLEXGEN_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                                   reason="needs a CUDA device (torch.cuda.is_available() is False)")]


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matmuls and convolutions (TF32 would hide a 1e-3 error behind its own)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3), (torch.float32, 1e-5)])
def test_sdpa_matches_the_float64_reference(dtype, tol):
    q, k, v = qkv(sum(SEQLENS_Q), sum(SEQLENS_KV), device=DEVICE, dtype=dtype)
    assert relative_error(attention(q, k, v, backend="sdpa"), reference(q, k, v)) < tol
    packed = attention(q, k, v, seqlens_q=SEQLENS_Q, seqlens_kv=SEQLENS_KV, backend="sdpa")
    expected = torch.cat([reference(q[:, a:a + m], k[:, b:b + n], v[:, b:b + n]) for a, b, m, n in
                          zip([0, 3, 8], [0, 4, 5], SEQLENS_Q, SEQLENS_KV, strict=True)], dim=1)
    assert relative_error(packed, expected) < tol


@pytest.mark.parametrize("case", ["DiT", "Latte", "Latte-cross-frame"])
def test_flexdit_and_composed_paths_match_their_definitions_on_the_device(case):
    flex64, _ = models(case)                                  # float64 on the CPU: FlexDiT's definition there
    flex, composed = (m.to(DEVICE, torch.float32) for m in models(case))
    randomise_routers(composed, seed=3)
    with torch.no_grad():
        for grid, t in zip(GRIDS, (990, 10, 500), strict=True):
            x, tt, y = inputs(flex64, t)
            on = [v.to(DEVICE) for v in (x.float(), tt, y)]
            assert relative_error(flex(*on, grid=grid), flex64(x, tt, y, grid=grid)) < 3e-4   # the sparse path
            for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
                composed.to(dtype)
                args = (on[0].to(dtype), on[1], on[2])
                dydit_of(composed).skip = False
                masked = composed(*args, grid=grid)
                dydit_of(composed).skip = True
                assert relative_error(composed(*args, grid=grid), masked) < tol        # skipping = masked
            assert relative_error(masked, flex(*on, grid=grid)) > 1e-2                 # the routers did act
            composed.float()


def test_generation_is_reproducible_from_seeds():
    torch.manual_seed(0)
    model = build_denoiser(load_config("configs/demo/tiny.yaml")).to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():                           # non-zero gates, so the network shapes the samples
            p.normal_(std=0.05, generator=None)

    def draw(seeds, labels):
        cond = {"y": torch.tensor(labels, device=DEVICE)}
        net = classifier_free_guidance(model, 2.0, cond, model.null_condition(cond))
        return sample(net, model.latent_shape(), seeds, sampler="ddim", steps=10, betas=linear_betas(1000),
                      learned_sigma=model.config.learn_sigma, clip_denoised=True, device=DEVICE).cpu()

    with torch.no_grad():
        first, again = draw([0, 1, 2], [0, 1, 2]), draw([0, 1, 2], [0, 1, 2])
        alone = draw([1], [1])
    torch.testing.assert_close(again, first, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone[0], first[1], rtol=0, atol=1e-4)      # sample i's noise comes from seed i
    assert relative_error(first[0], first[1]) > 0.1


def test_device_cuda_without_an_index_is_this_ranks_gpu():
    """issue 30: `--device cuda` in flexgen sample / train is the rank's GPU (torch refuses set_device without an
    index)."""
    from flexgen.dist import init

    if not DEVICE.startswith("cuda"):
        pytest.skip("checks the CUDA device string")
    env = init("cuda")
    assert env.device == torch.device("cuda", env.local_rank) and torch.cuda.current_device() == env.local_rank
