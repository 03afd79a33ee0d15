"""Two continuous grades of a SynthMotion clip, computed from its pixels (no learned weights), at the detector's
frame size: a real clip is one flat shape of one colour crossing a flat background in a straight line at constant
speed, so how far a sample is from that is measurable directly.

- `tone` (% of the contrast, lower is better): the clip's pixels are split into its two colours by 2-means over
  the whole clip (initialised with the median border colour as the background and the pixel farthest from it as
  the shape); the score is the RMS distance of every pixel to the nearer of the two colours, over the distance
  between the two colours. Noise, smear and blur raise it (a blurred, washed-out clip has a small residual but a
  small contrast too); the real clips' only residual is the blend at the shape's edge left by resizing.
- `track` (pixels, lower is better): the shape's centre in each frame (each pixel weighted by where its colour
  lies between the background and the shape colour, clipped to [0, 1]) against the best straight constant-speed
  path (least squares over the frames): the RMS distance. A clip whose shape is found in fewer than 2 frames
  scores the frame side.

The class (shape and direction) is judged by the detector (`acc_synthmotion`); these two grade how well it is drawn.
"""

from __future__ import annotations

import torch

ITERATIONS = 10                 # 2-means updates (converges in 2-3 on real clips)
MIN_SHAPE_PIXELS = 0.5          # a frame whose shape weight sums to less than this has no shape


def _two_colours(pixels: torch.Tensor, border: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels (N, P, 3), border pixels (N, B, 3) -> background and shape colours (N, 3) each, by 2-means."""
    background = border.median(dim=1).values                                          # (N, 3)
    far = ((pixels - background[:, None]) ** 2).sum(-1).argmax(dim=1)                 # (N,)
    shape = pixels[torch.arange(len(pixels)), far]                                    # (N, 3)
    for _ in range(ITERATIONS):
        to_shape = ((pixels - shape[:, None]) ** 2).sum(-1) < ((pixels - background[:, None]) ** 2).sum(-1)
        weight = to_shape.double()[..., None]                                         # (N, P, 1)
        count_shape, count_back = weight.sum(1), (1 - weight).sum(1)                  # (N, 1)
        shape = torch.where(count_shape > 0, (weight * pixels).sum(1) / count_shape.clamp(min=1), shape)
        background = torch.where(count_back > 0, ((1 - weight) * pixels).sum(1) / count_back.clamp(min=1),
                                 background)
    return background, shape


def clip_scores(videos: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float videos (N, 3, T, H, W) in 0..255 -> {"tone": (N,), "track": (N,)} float64, one grade per clip."""
    n, _, t, h, w = videos.shape
    x = videos.double().permute(0, 2, 3, 4, 1)                                        # (N, T, H, W, 3)
    edge = torch.zeros(h, w, dtype=torch.bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    background, shape = _two_colours(x.reshape(n, -1, 3), x[:, :, edge].reshape(n, -1, 3))
    d_back = ((x - background[:, None, None, None]) ** 2).sum(-1)                     # (N, T, H, W)
    d_shape = ((x - shape[:, None, None, None]) ** 2).sum(-1)
    contrast = (shape - background).norm(dim=-1).clamp(min=1.0)                       # (N,) levels
    tone = 100 * torch.minimum(d_back, d_shape).mean(dim=(1, 2, 3)).sqrt() / contrast  # (N,) % of the contrast

    axis = shape - background                                                          # (N, 3)
    along = ((x - background[:, None, None, None]) * axis[:, None, None, None]).sum(-1)
    weight = (along / (axis ** 2).sum(-1).clamp(min=1e-9)[:, None, None, None]).clamp(0, 1)   # (N, T, H, W)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    mass = weight.sum(dim=(2, 3))                                                      # (N, T)
    centre = torch.stack([(weight * xx).sum(dim=(2, 3)), (weight * yy).sum(dim=(2, 3))], -1) / mass.clamp(
        min=1e-9)[..., None]                                                           # (N, T, 2)
    track = torch.stack([_line_residual(centre[i], mass[i] >= MIN_SHAPE_PIXELS, float(max(h, w)))
                         for i in range(n)])
    return {"tone": tone, "track": track}


def _line_residual(centre: torch.Tensor, found: torch.Tensor, worst: float) -> torch.Tensor:
    """RMS distance of the found centres (T, 2) from their least-squares line over the frame index."""
    frames = torch.arange(len(centre), dtype=torch.float64)[found]
    if len(frames) < 2:
        return torch.tensor(worst, dtype=torch.float64)
    design = torch.stack([torch.ones_like(frames), frames], 1)                         # (F, 2)
    points = centre[found]                                                             # (F, 2)
    fit = design @ torch.linalg.lstsq(design, points).solution                         # (F, 2)
    return ((points - fit) ** 2).sum(-1).mean().sqrt()
