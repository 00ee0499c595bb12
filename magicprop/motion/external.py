"""Flow computed elsewhere (e.g. controlnet_aux's `OPTICAL_FLOW`) as a `Motion`, so every propagation path takes it.

Such a tensor holds one direction only, (K-1, H, W, 2) in pixels, x then y. The other direction is its inverse,
found per pixel by the fixed-point iteration b(q) = -f(q + b(q)) (the standard way to invert a displacement field,
e.g. Chen et al., "A simple fixed-point approach to invert a deformation field", Med. Phys. 2008); where the field is
not invertible (occlusions, content leaving the frame) the forward-backward check marks the pixels invalid.
"""

from __future__ import annotations

import torch

from ..errors import MagicPropError
from .engine import Motion, consistency, warp

DIRECTIONS = ("forward", "backward")
"""forward: flow[k] = flow_{k->k+1} (controlnet_aux's default); backward: flow[k] = flow_{k+1->k}."""
EXTERNAL = "external"
"""The estimator name recorded with such flow: it cannot be extended to new frame pairs."""


def check_external_flow(flow, frames: int, size: tuple[int, int], what: str = "external_flow") -> None:
    """One line naming the input and the fix when `flow` is not (frames-1, H, W, 2) pixel flow of these frames."""
    expected = (frames - 1, size[0], size[1], 2)
    shape = tuple(getattr(flow, "shape", ()))
    if not isinstance(flow, torch.Tensor) or shape != expected:
        got = f"shape {shape}" if isinstance(flow, torch.Tensor) else f"a {type(flow).__name__}"
        raise MagicPropError(
            f"{what} has {got}: expected controlnet_aux's OPTICAL_FLOW layout {expected} (one flow per pair of "
            f"consecutive frames of the {frames} frames, {size[1]}x{size[0]}, x then y in pixels); compute it from "
            "the same frames, or connect OpticalFlowSequence's flow instead."
        )
    if not torch.isfinite(flow).all():
        raise MagicPropError(f"{what} holds NaN or infinite values: recompute the flow.")


def invert_flow(flow: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """(N, 2, H, W) flow_{a->b} -> flow_{b->a} by the fixed-point iteration b(q) = -f(q + b(q))."""
    back = -flow
    for _ in range(iterations):
        back = -warp(flow, back)
    return back


def external_motion(flow: torch.Tensor, direction: str, frame_size: tuple[int, int]) -> Motion:
    """controlnet_aux's (K-1, H, W, 2) flow of one direction -> Motion (both directions and validity, fp16, CPU).

    Kept at the resolution it comes in; recorded as estimator `external` (it cannot estimate flow to keyframes).
    """
    if direction not in DIRECTIONS:
        raise MagicPropError(f"flow_direction {direction!r}: expected one of {list(DIRECTIONS)}.")
    given = flow.detach().float().cpu().permute(0, 3, 1, 2).contiguous()  # (N, H, W, 2) -> (N, 2, H, W)
    other = invert_flow(given)
    forward, backward = (given, other) if direction == "forward" else (other, given)
    return Motion(forward.half(), backward.half(), consistency(forward, backward), consistency(backward, forward),
                  tuple(frame_size), {"estimator": EXTERNAL, "direction": direction})
