"""Drift control at inference: keeping long autoregressive clips on the reference's appearance.

MagicProp's own limit (section 4): beyond ~30 frames, over-smoothing and colour drift from error accumulation.
Three controls, each a switch:

- noise augmentation of the previous-frame latent (training and the matching inference level; GameNGen, Valevski
  et al. 2024, section 3.2.1) lives in ``magicprop.propdpm.conditioning.noise_augment``, its level in the checkpoint;
- training on the model's own rollouts (scheduled sampling, Bengio et al. 2015; self-forcing, Huang et al. 2025)
  lives in the trainer (``TrainConfig.rollout_probability``);
- reference statistics anchoring, here: after each frame, the per-channel mean and standard deviation of the
  generated latent are pulled towards the edited reference's (adaptive instance normalisation, Huang & Belongie
  2017, applied as a correction rather than a style transfer). Colour drift in a latent-diffusion chain shows up
  first in these channel statistics; the reference fixes their target. With masks, both sides' statistics are
  taken inside the edited region only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import MagicPropError
from .loop import FrameDenoiser, FrameRequest, Job, inner_round


def channel_stats(latent: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (1, C, h, w), over the pixels where mask (1, 1, h, w) > 0.5 if given."""
    x = latent.float().flatten(2)  # (1, c, n)
    if mask is None:
        return x.mean(-1, keepdim=True), x.std(-1, keepdim=True).clamp_min(1e-6)
    m = (mask.float().flatten(2) > 0.5).float()  # (1, 1, n)
    n = m.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(-1, keepdim=True) / n
    var = (((x - mean) ** 2) * m).sum(-1, keepdim=True) / (n - 1).clamp_min(1.0)
    return mean, var.sqrt().clamp_min(1e-6)


def anchor_statistics(
    latent: torch.Tensor, reference: torch.Tensor, strength: float,
    mask: torch.Tensor | None = None, reference_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move latent's per-channel statistics towards the reference's by `strength` in [0, 1] (inside the mask)."""
    if not 0.0 <= strength <= 1.0:
        raise MagicPropError(f"anchor strength={strength}: expected a value in [0, 1] (0 = off).")
    if strength == 0.0:
        return latent
    mean, std = channel_stats(latent, mask)
    ref_mean, ref_std = channel_stats(reference, reference_mask if mask is not None else None)
    flat = latent.float().flatten(2)
    matched = ((flat - mean) / std * ref_std + ref_mean).view_as(latent)
    if mask is not None:
        keep = (mask > 0.5).to(latent.dtype)
        matched = matched * keep + latent.float() * (1 - keep)
    return (latent.float() + strength * (matched - latent.float())).to(latent.dtype)


class AnchoredDenoiser:
    """A FrameDenoiser whose every frame is anchored to the reference's channel statistics."""

    def __init__(self, inner: FrameDenoiser, reference_latent: torch.Tensor, strength: float,
                 masks: torch.Tensor | None = None, reference_index: int = 0) -> None:
        """masks: (1 or K, 1, h, w) latent-grid masks of the edited region (the statistics are taken inside)."""
        anchor_statistics(reference_latent, reference_latent, strength)  # validates strength early
        self.inner, self.reference, self.strength, self.masks = inner, reference_latent, strength, masks
        self.reference_index = reference_index

    def _mask(self, k: int) -> torch.Tensor | None:
        if self.masks is None:
            return None
        return self.masks[min(k, self.masks.shape[0] - 1)][None]

    def anchored(self, request: FrameRequest, latent: torch.Tensor) -> torch.Tensor:
        return anchor_statistics(latent, self.reference.to(latent), self.strength, self._mask(request.index),
                                 self._mask(self.reference_index))

    def denoise(self, jobs: Sequence[Job]) -> torch.Tensor:
        """FrameDenoiser: the inner denoisers' frames in one round, each then anchored to its own reference."""
        return torch.cat([d.anchored(r, latent) for (d, r), latent in zip(jobs, inner_round(jobs))])
