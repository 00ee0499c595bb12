"""The one pixel composite: generated pixels put into a frame inside a region, faded over a feathered border.

Shared by FlowRefine (refined pixels into the carried frames), the `refine` command and the flow-guided PropDPM
(valid carried pixels kept, the model's pixels where the flow is blind). Pixels farther than the border from the
region are the base frame bit for bit.
"""

from __future__ import annotations

import torch

DEFAULT_BORDER = 16
"""Pixels over which a region's pixels fade into the frame they are composited into."""


def feather(region: torch.Tensor, border: int = DEFAULT_BORDER) -> torch.Tensor:
    """(..., H, W) region (> 0 = in) -> float weight: 1 inside, falling linearly with the Euclidean distance to 0 at
    `border` px outside (exactly 0 from there on); border 0 = the region itself, hard-edged."""
    inside = region > 0
    if border <= 0 or not bool(inside.any()):
        return inside.float()
    from .motion.engine import import_cv2

    cv2 = import_cv2()
    import numpy as np

    flat = inside.reshape(-1, *inside.shape[-2:]).cpu().numpy()
    out = []
    for m in flat:
        # distance of every pixel to the nearest pixel inside (0 inside)
        dist = cv2.distanceTransform(np.where(m, 0, 255).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        out.append(torch.from_numpy(np.clip(1.0 - dist / float(border), 0.0, 1.0)))
    return torch.stack(out).reshape(inside.shape).to(region.device)


def composite(base: torch.Tensor, new: torch.Tensor, region: torch.Tensor,
              border: int = DEFAULT_BORDER) -> torch.Tensor:
    """`new` inside `region`, `base` elsewhere, faded over `border` px outside the region.

    base, new: (..., H, W, C) images; region: (..., H, W), > 0 where `new` is taken. Pixels more than `border` px
    outside the region are `base` bit for bit.
    """
    w = feather(region, border).to(base.dtype)[..., None]
    return torch.where(w > 0, w * new.to(base.dtype) + (1 - w) * base, base)


def premultiplied(rgba: torch.Tensor) -> torch.Tensor:
    """(..., 4) straight alpha (PNG's, ComfyUI's JoinImageWithAlpha's) -> (..., 4) RGB premultiplied by alpha, and
    alpha: what `over_frames` takes, and what resamples without the colour of transparent pixels bleeding in."""
    alpha = rgba[..., 3:]
    return torch.cat([rgba[..., :3] * alpha, alpha], -1)


def over_frames(layers: torch.Tensor, frames, indices: list[int]) -> torch.Tensor:
    """(N, H, W, 4) paint layers, premultiplied RGB and alpha -> (N, H, W, 3) edited frames: each laid over the source
    frame it edits, frames[indices[n]] ((H, W, 3), uint8 or float in [0, 1]), so a layer with transparency edits what
    it covers; a layer opaque everywhere is its RGB as it is."""
    rgb, a = layers[..., :3], layers[..., 3:]
    if bool((a >= 1).all()):
        return rgb

    def as_float(frame) -> torch.Tensor:
        frame = torch.as_tensor(frame)
        return frame.float() / 255 if frame.dtype == torch.uint8 else frame[..., :3].float()

    under = torch.stack([as_float(frames[i]) for i in indices]).to(rgb.device)
    return (rgb + (1 - a) * under).clamp(0, 1)
