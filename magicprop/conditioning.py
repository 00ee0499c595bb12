"""Spatial conditions of PropDPM: what is concatenated to the noisy latent, in one fixed channel order.

MagicProp section 3.2, eq. (6): frame k is generated from its depth m^k, the previous edited frame x^{k-1} and the
previous depth m^{k-1}. The UNet input has 4 + 6 channels, in this order:

    [0:4]  noisy latent z_t                   (scaled latent space)
    [4:8]  previous edited latent z^{k-1}     (scaled by the latent scale, like the noisy latent)
    [8]    target depth m^k                   (inverse depth, near = 1, mapped from [0, 1] to [-1, 1])
    [9]    previous depth m^{k-1}             (same mapping)

This module is the one owner of that recipe: ``condition_for`` builds the 6 channels of a request for the trainer
(``magicprop.train.loop.Batcher``), the diffusers backend and the ComfyUI denoiser alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .errors import MagicPropError
from .propagate import FrameRequest

LATENT_CHANNELS = 4
CONDITION_CHANNELS = 6  # previous latent (4) + target depth (1) + previous depth (1)

AUGMENT_SEED_SALT = 0x5EED_A06
"""Offsets a frame's seed for the previous-latent noise augmentation draw (independent of its initial noise)."""


class ConditionSettings(Protocol):
    """What the recipe reads from a checkpoint's config (``PropDPMConfig`` has these fields)."""

    latent_scale: float
    previous_frame: bool
    prev_noise_augmentation: float


@dataclass(frozen=True)
class ConditionRecipe:
    """The recipe's settings where no checkpoint config exists yet (the trainer, from its run config)."""

    latent_scale: float
    previous_frame: bool = True
    prev_noise_augmentation: float = 0.0


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


def augment_generator(seed: int) -> torch.Generator:
    """The generator of a frame's previous-latent noise augmentation, from the request's seed."""
    return torch.Generator(device="cpu").manual_seed(seed ^ AUGMENT_SEED_SALT)


def condition_for(request: FrameRequest, settings: ConditionSettings) -> torch.Tensor:
    """The (1, 6, h, w) extra input channels of one request, in the UNet's input space.

    The previous latent is scaled like the noisy latent, zeroed for a model trained without it, and noise-augmented
    at the checkpoint's level with a generator seeded from the request's seed; the depths are centred.
    """
    prev = request.prev_latent.to(torch.float32) * settings.latent_scale
    if not settings.previous_frame:
        prev = torch.zeros_like(prev)
    prev = noise_augment(prev, settings.prev_noise_augmentation, augment_generator(request.seed))
    return spatial_condition(prev, request.depth.to(prev), request.prev_depth.to(prev))
