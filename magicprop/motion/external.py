"""Flow computed elsewhere (e.g. controlnet_aux's `OPTICAL_FLOW`) as a `Motion`, so every propagation path takes it.

Such a tensor holds one direction only, (K-1, H, W, 2) in pixels, x then y. The forward-backward check needs the
other direction too. Given the frames and an engine, it is ESTIMATED from the frames (the engine's own flow, resized
to the given flow's resolution), so the check compares two independent estimates and flags occlusions (on the
occluder scene of tests/test_motion_engine.py it finds at least 70% of the occluded pixels). Without frames it is
the given flow's inverse, by the fixed-point iteration b(q) = -f(q + b(q)) (Chen et al., "A simple fixed-point
approach to invert a deformation field", Med. Phys. 2008): an inverse agrees with its own field almost everywhere,
so that check finds only part of the occlusions (under half on that scene) and pixels the flow cannot see are
carried instead of filled.
"""

from __future__ import annotations

import torch

from ..errors import MagicPropError
from ..log import get_logger
from .engine import FlowEngine, Motion, consistency, resize_flow, warp

log = get_logger(__name__)

DIRECTIONS = ("forward", "backward")
"""forward: flow[k] = flow_{k->k+1} (controlnet_aux's default); backward: flow[k] = flow_{k+1->k}."""
EXTERNAL = "external"
"""The estimator name recorded with such flow: it cannot be extended to new frame pairs."""
MOVING = 0.5
"""Pixels whose estimated motion is at least this (px) tell which way the given flow points (`_check_direction`)."""
MOVING_SHARE = 0.01
"""`_check_direction` judges only when this share of the pixels moves (a still clip's few noisy pixels decide
nothing)."""


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


def _check_direction(given: torch.Tensor, other: torch.Tensor, direction: str) -> None:
    """One warning line when the given flow (N, 2, h, w) looks like the wrong direction or no motion at all: where
    the frames move (the estimated other direction, `other`, at least MOVING px on MOVING_SHARE of the pixels or
    more), flow of the direction it is said to be points against `other` (given + other near 0); flow of the other
    direction points with it. Pair by pair (no temporary the size of the clip's flow)."""
    moving = same = 0
    still = True
    for g, o in zip(given, other):
        m = o.square().sum(0) >= MOVING**2
        moving += int(m.sum())
        same += int((((g - o).square().sum(0) < (g + o).square().sum(0)) & m).sum())
        still = still and float(g.abs().max()) == 0
    if moving < MOVING_SHARE * given.shape[0] * given.shape[-2] * given.shape[-1]:
        return
    if still:
        log.warning("external_flow is 0 everywhere while the frames move: the edit will not follow the motion; "
                    "connect the flow node's output for these frames.")
        return
    if same > 0.5 * moving:
        other_way = DIRECTIONS[1 - DIRECTIONS.index(direction)]
        log.warning("external_flow points the other way on %.0f%% of the moving pixels: it looks like %s flow, but "
                    "flow_direction is %r; set flow_direction to %r (most pixels will otherwise fail the "
                    "forward-backward check and be filled).", 100 * same / moving, other_way, direction, other_way)


def invert_flow(flow: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """(N, 2, H, W) flow_{a->b} -> flow_{b->a} by the fixed-point iteration b(q) = -f(q + b(q))."""
    back = -flow
    for _ in range(iterations):
        back = -warp(flow, back)
    return back


def external_motion(flow: torch.Tensor, direction: str, frame_size: tuple[int, int], frames: torch.Tensor | None = None,
                    engine: FlowEngine | None = None, batch: int = 8) -> Motion:
    """controlnet_aux's (K-1, H, W, 2) flow of one direction -> Motion (both directions and validity, fp16, CPU).

    frames, engine: the K frames the flow was computed from and the engine that estimates the missing direction from
    them (module docstring); without them the missing direction is the given one's inverse. Kept at the resolution
    the flow comes in; recorded as estimator `external` (it cannot estimate flow to keyframes).
    """
    if direction not in DIRECTIONS:
        raise MagicPropError(f"flow_direction {direction!r}: expected one of {list(DIRECTIONS)}.")
    given = flow.detach().float().cpu().permute(0, 3, 1, 2).contiguous()  # (N, H, W, 2) -> (N, 2, H, W)
    record = {"estimator": EXTERNAL, "direction": direction}
    if frames is None or engine is None:
        other = invert_flow(given)
        record["other_direction"] = "inverted"
    else:
        if frames.shape[0] != given.shape[0] + 1:
            raise MagicPropError(f"external flow has {given.shape[0]} pairs but {frames.shape[0]} frames were given: "
                                 "expected one flow per pair of consecutive frames.")
        a, b = (frames[1:], frames[:-1]) if direction == "forward" else (frames[:-1], frames[1:])
        other = torch.cat([resize_flow(engine.flow(a[i:i + batch], b[i:i + batch]), tuple(given.shape[-2:]))
                           for i in range(0, given.shape[0], batch)])
        record["other_direction"] = engine.settings.record()
        _check_direction(given, other, direction)
    forward, backward = (given, other) if direction == "forward" else (other, given)
    return Motion(forward.half(), backward.half(), consistency(forward, backward), consistency(backward, forward),
                  tuple(frame_size), record)
