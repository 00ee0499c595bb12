"""Spatial conditions of PropDPM: what is concatenated to the noisy latent, in one fixed channel order.

MagicProp section 3.2, eq. (6): frame k is generated from its depth m^k, the previous edited frame x^{k-1} and the
previous depth m^{k-1}. The UNet input has 4 + 6 channels, in this order:

    [0:4]  noisy latent z_t                   (scaled latent space)
    [4:8]  previous edited latent z^{k-1}     (scaled by the latent scale, like the noisy latent)
    [8]    target depth m^k                   (inverse depth, near = 1, mapped from [0, 1] to [-1, 1])
    [9]    previous depth m^{k-1}             (same mapping)

Both backends (diffusers and ComfyUI) build the 6 conditioning channels with ``spatial_condition``.
"""

from __future__ import annotations

import torch

from .errors import MagicPropError

LATENT_CHANNELS = 4
CONDITION_CHANNELS = 6  # previous latent (4) + target depth (1) + previous depth (1)
CHANNEL_ORDER = ("noisy_latent", "previous_latent", "target_depth", "previous_depth")


def depth_to_input(depth: torch.Tensor) -> torch.Tensor:
    """Depth in [0, 1] (near = 1) -> the UNet's centred range [-1, 1]."""
    return depth * 2.0 - 1.0


def spatial_condition(
    prev_latent_scaled: torch.Tensor, depth: torch.Tensor, prev_depth: torch.Tensor
) -> torch.Tensor:
    """(B, 4, h, w) scaled previous latent, (B, 1, h, w) target and previous depth in [0, 1] -> (B, 6, h, w)."""
    b, c, h, w = prev_latent_scaled.shape
    for name, d in (("depth", depth), ("prev_depth", prev_depth)):
        if d.ndim != 4 or d.shape[1] != 1 or d.shape[-2:] != (h, w):
            raise MagicPropError(
                f"{name} has shape {tuple(d.shape)}: expected (batch, 1, {h}, {w}), a depth map at the latent size "
                "(use magicprop.depth.depth_to_latent_grid)."
            )
    depth = depth.expand(b, -1, -1, -1).to(prev_latent_scaled)
    prev_depth = prev_depth.expand(b, -1, -1, -1).to(prev_latent_scaled)
    return torch.cat([prev_latent_scaled, depth_to_input(depth), depth_to_input(prev_depth)], dim=1)


def noise_augment(
    latent_scaled: torch.Tensor, level: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Corrupt the previous-frame latent with Gaussian noise of std `level` (drift control).

    Noise augmentation of the context frames, as in GameNGen (Valevski et al. 2024, section 3.2.1): a model that
    learns to read through noisy previous frames is less sensitive to its own accumulated errors. The same level is
    used in training and at inference. The latent is mixed variance-preserving: sqrt(1 - l^2) z + l eps.
    """
    if level <= 0:
        return latent_scaled
    if level >= 1:
        raise MagicPropError(f"noise augmentation level={level}: expected a value in [0, 1).")
    noise = torch.randn(latent_scaled.shape, generator=generator, device="cpu", dtype=torch.float32)
    noise = noise.to(latent_scaled)
    return (1 - level * level) ** 0.5 * latent_scaled + level * noise
