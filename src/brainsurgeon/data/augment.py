"""Input augmentation for training and transfer sets: small integer shifts plus Gaussian noise.

Hinton et al. (2015) trained the MNIST teacher on inputs "jittered by up to two pixels in any
direction"; the same transform builds the ``augmented`` distillation transfer set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image of ``x`` (N, C, H, W) by integer ``shifts`` (N, 2) = (dy, dx) pixels.

    Pixels moved in from outside repeat the border (the background for digit images).
    """
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shifts[:, 1].to(x.dtype) / w
    theta[:, 1, 2] = -2.0 * shifts[:, 0].to(x.dtype) / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def augment(
    x: torch.Tensor, *, noise: float, shift: int, generator: torch.Generator
) -> torch.Tensor:
    """``x`` shifted by up to ``shift`` pixels (uniform per image and axis) plus N(0, noise^2).

    Shifts apply to image batches (N, C, H, W) only; flat inputs get the noise alone.
    """
    if shift and x.dim() == 4 and min(x.shape[-2:]) > 1:
        shifts = torch.randint(-shift, shift + 1, (x.shape[0], 2), generator=generator)
        x = shift_images(x, shifts.to(x.device))
    if noise:
        x = x + noise * torch.randn(x.shape, generator=generator).to(x.device)
    return x
