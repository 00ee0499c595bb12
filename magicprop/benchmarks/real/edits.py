"""The edits `bench real` propagates: per-pixel colour edits (the ground truth of frame t is the same mapping of
source frame t) and spatial edits painted on the known-motion stills."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ...motion.colour import luma

_PALETTE = torch.tensor([  # a thermal-camera style false-colour ramp: black, indigo, magenta, orange, yellow, white
    [0.02, 0.01, 0.10], [0.25, 0.05, 0.55], [0.80, 0.15, 0.50], [0.98, 0.55, 0.10], [0.99, 0.90, 0.30],
    [1.00, 1.00, 0.95]])
_MIX = torch.tensor([[0.70, 0.45, -0.15], [0.10, 0.75, 0.15], [-0.20, 0.35, 0.85]])  # rows: output r, g, b


def false_colour(x: torch.Tensor) -> torch.Tensor:
    """Luminance through a piecewise-linear false-colour palette (non-linear, many-to-one in colour)."""
    y = luma(x).clamp(0, 1) * (len(_PALETTE) - 1)
    i = y.floor().clamp(max=len(_PALETTE) - 2).long()
    t = (y - i)[..., None]
    return _PALETTE[i] * (1 - t) + _PALETTE[i + 1] * t


def channel_mix(x: torch.Tensor) -> torch.Tensor:
    """A grade: channels mixed by a matrix, per-channel gammas, then an S-curve of contrast (smoothstep)."""
    m = (x.float() @ _MIX.T).clamp(0, 1) ** torch.tensor([0.8, 1.0, 1.3])
    return m * m * (3 - 2 * m)


EDITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x.float().clone(),
    "false colour": false_colour,
    "channel mix": channel_mix,
}


def soft(d: torch.Tensor) -> torch.Tensor:
    """Coverage of a pixel by a shape from the signed distance (pixels) to its edge: anti-aliased over 1 px."""
    return (0.5 - d).clamp(0, 1)


def stripes(img: torch.Tensor) -> torch.Tensor:
    """Diagonal magenta stripes blended over the image (12 periods over its short side)."""
    h, w = img.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    period = min(h, w) / 12
    m = ((torch.sin(2 * math.pi * (xs + ys) / period) - 0.2) * 3).clamp(0, 1)[..., None] * 0.7
    return img * (1 - m) + torch.tensor([0.95, 0.2, 0.6]) * m


def discs(img: torch.Tensor) -> torch.Tensor:
    """Two opaque painted discs (orange, teal) at fixed places of the image, edges anti-aliased.

    Both lie where the reference view shows the background: a user paints what the edited frame shows. (The teal disc
    sat at (0.68, 0.6) until the layer was found to hide 80% of it in the reference, which made most of it an edit no
    reference contains: frames that revealed it scored 16 dB on the filled pixels whatever the method.)"""
    h, w = img.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = img.float().clone()
    side = min(h, w)
    for (u, v, r), colour in (((0.35, 0.4, 0.14), (1.0, 0.55, 0.1)), ((0.66, 0.26, 0.1), (0.1, 0.75, 0.7))):
        a = soft(torch.sqrt((xs + 0.5 - u * w) ** 2 + (ys + 0.5 - v * h) ** 2) - r * side)[..., None]
        out = out * (1 - a) + torch.tensor(colour) * a
    return out


SPATIAL_EDITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"stripes": stripes, "painted discs": discs}
