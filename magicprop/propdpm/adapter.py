"""The appearance adapter: reference CLIP tokens + reference VAE latent -> cross-attention context.

Implements section 3.3.1 of MagicProp (Yan et al., arXiv 2309.00908) and the behaviour of its Listing 1:

- CLIP patch tokens (a square grid) are resized bilinearly to (h/2, w/2) and reduced from C to C/2 channels by two
  1x1 convolutions;
- the reference latent (already multiplied by the latent scale, the UNet's own input space) goes 4 -> C/2 channels
  by a 3x3 convolution, a 2x max-pool and a 1x1 convolution;
- both are concatenated (CLIP part first) and mixed by two 3x3 convolutions to C channels;
- the untouched CLIP class token is prepended: (B, 1 + hw/4, C).

SiLU sits between the layers as in the listing. The output replaces the text context of the UNet.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from ..errors import MagicPropError


@dataclass(frozen=True)
class AdapterConfig:
    """Shape of the adapter; saved in every checkpoint."""

    token_dim: int = 768
    """C: width of the CLIP projected tokens and of the UNet's cross-attention (768 for ViT-L/14 and SD1.5)."""
    latent_channels: int = 4
    """Channels of the VAE latent (4 for SD1.x VAEs)."""

    def __post_init__(self) -> None:
        if self.token_dim <= 0 or self.token_dim % 2:
            raise MagicPropError(
                f"AdapterConfig.token_dim={self.token_dim}: expected a positive even number (the adapter splits it "
                "in two halves, CLIP and VAE); use the CLIP projection width, e.g. 768."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        return cls(**data)


class AppearanceAdapter(nn.Module):
    """Fuses the class-level and patch-level appearance of the edited reference (MagicProp, section 3.3.1)."""

    def __init__(self, config: AdapterConfig = AdapterConfig()) -> None:
        super().__init__()
        self.config = config
        c, half = config.token_dim, config.token_dim // 2
        self.clip_down = nn.Sequential(
            nn.Conv2d(c, half, kernel_size=1),
            nn.SiLU(),
            nn.Conv2d(half, half, kernel_size=1),
            nn.SiLU(),
        )
        self.latent_down = nn.Sequential(
            nn.Conv2d(config.latent_channels, half, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(half, half, kernel_size=1),
            nn.SiLU(),
        )
        self.mix = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
        )

    def check_inputs(self, clip_tokens: torch.Tensor, latent: torch.Tensor) -> int:
        """Validate shapes before any work; returns the side of the square CLIP patch grid."""
        cfg = self.config
        if clip_tokens.ndim != 3 or clip_tokens.shape[-1] != cfg.token_dim:
            raise MagicPropError(
                f"clip_tokens has shape {tuple(clip_tokens.shape)}: expected (batch, 1 + N, {cfg.token_dim}), the "
                "projected CLIP vision tokens (class token first). Use the CLIP vision model the checkpoint was "
                f"trained with (its projection width is {cfg.token_dim})."
            )
        if latent.ndim != 4 or latent.shape[1] != cfg.latent_channels:
            raise MagicPropError(
                f"latent has shape {tuple(latent.shape)}: expected (batch, {cfg.latent_channels}, h, w), a VAE latent."
            )
        if clip_tokens.shape[0] != latent.shape[0]:
            raise MagicPropError(
                f"batch mismatch: clip_tokens has batch {clip_tokens.shape[0]} but latent has batch "
                f"{latent.shape[0]}; encode the same reference images with CLIP and with the VAE."
            )
        h, w = latent.shape[-2:]
        if h % 2 or w % 2:
            raise MagicPropError(
                f"latent size {h}x{w} has an odd side: the adapter pools by 2, so latent sides must be even, i.e. "
                "frame sides must be multiples of 16 pixels. Crop or resize the frames."
            )
        n = clip_tokens.shape[1] - 1
        side = math.isqrt(max(n, 0))
        if n <= 0 or side * side != n:
            raise MagicPropError(
                f"clip_tokens has {n} patch tokens after the class token: expected a square grid (e.g. 256 = 16x16 "
                "for ViT-L/14 at 224 px). Pass the full token sequence of a ViT CLIP vision model."
            )
        return side

    def forward(self, clip_tokens: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """clip_tokens (B, 1+N, C) projected CLIP tokens; latent (B, 4, h, w) scaled VAE latent -> (B, 1+hw/4, C)."""
        side = self.check_inputs(clip_tokens, latent)
        h, w = latent.shape[-2:]
        cls_token = clip_tokens[:, :1]  # (b, 1, c), passes through untouched
        patches = rearrange(clip_tokens[:, 1:], "b (h w) c -> b c h w", h=side, w=side)
        patches = nn.functional.interpolate(patches, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        patches = self.clip_down(patches)  # (b, c/2, h/2, w/2)
        fused = self.mix(torch.cat([patches, self.latent_down(latent)], dim=1))  # (b, c, h/2, w/2)
        return torch.cat([cls_token, rearrange(fused, "b c h w -> b (h w) c")], dim=1)


def null_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The unconditional appearance: zeros of the same shape (appearance dropout's null; PropDPMConfig.null_tokens)."""
    return torch.zeros_like(tokens)
