"""Propagating a clip with the host-free backend, and scoring it against ground truth (PSNR, SSIM)."""

from __future__ import annotations

from typing import Sequence

import torch

from .backend import DiffusersDenoiser, StandaloneModels
from .depth import depth_to_latent_grid
from .propagate import FrameCallback, propagate


def propagate_frames(
    models: StandaloneModels, reference: torch.Tensor, depth: torch.Tensor, reference_index: int,
    steps: int = 20, seed: int = 0, cfg: float = 1.0, callback: FrameCallback | None = None,
) -> torch.Tensor:
    """(1, H, W, 3) edited reference + (K, H, W) clip depth in [0, 1] -> (K, H, W, 3) propagated frames."""
    ref_latent = models.encode(reference)
    depth_lat = depth_to_latent_grid(depth[:, None].float(), tuple(ref_latent.shape[-2:]))
    tokens = models.appearance_tokens(reference, ref_latent)
    denoiser = DiffusersDenoiser(models.unet, models.config, tokens, steps=steps, cfg=cfg)
    latents = propagate(denoiser, ref_latent, depth_lat, reference_index, seed, callback=callback)
    return models.decode(latents)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of (K, H, W, 3) images in [0, 1]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Per-frame SSIM (kornia, 11x11 Gaussian window) of (K, H, W, 3) images in [0, 1]."""
    import kornia

    return kornia.metrics.ssim(a.movedim(-1, 1).float(), b.movedim(-1, 1).float(), window).flatten(1).mean(1)


def strip(rows: Sequence[torch.Tensor], frames: Sequence[int], gap: int = 2) -> torch.Tensor:
    """A (H_total, W_total, 3) image: one row per clip in `rows`, the chosen frames side by side."""
    h, w = rows[0].shape[1:3]
    out = torch.ones(len(rows) * (h + gap) - gap, len(frames) * (w + gap) - gap, 3)
    for r, clip in enumerate(rows):
        for c, k in enumerate(frames):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = clip[k].float().clamp(0, 1)
    return out
