"""Exact flow of a known camera motion: what the flow tests and `bench/flow.py` render frames with and score
estimated flow against."""

from __future__ import annotations

import math

import torch


def similarity_flow(h: int, w: int, degrees: float = 0.0, tx: float = 0.0, ty: float = 0.0, scale: float = 1.0,
                    inverse: bool = False) -> torch.Tensor:
    """(1, 2, h, w) exact flow of a camera similarity about the frame centre c: p -> scale R(degrees) (p - c) + c + t.

    With inverse=True, the flow of the inverse map: `warp(a, similarity_flow(..., inverse=True))` renders the frame b
    whose content at M p is a's content at p, and `similarity_flow(...)` is then the true flow_{a->b} (known-motion
    tests and benchmarks).
    """
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    x, y = xs - (w - 1) / 2, ys - (h - 1) / 2
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    if inverse:  # q -> R^-1 (q - c - t) / scale + c
        x, y = x - tx, y - ty
        nx, ny = (cos * x + sin * y) / scale, (-sin * x + cos * y) / scale
    else:
        nx, ny = scale * (cos * x - sin * y) + tx, scale * (sin * x + cos * y) + ty
    return torch.stack([nx - x - (tx if inverse else 0), ny - y - (ty if inverse else 0)])[None].float()
