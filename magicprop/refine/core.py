"""Refining the carried frames with any Stable Diffusion checkpoint (img2img), per frame or in a loopback.

Flow propagation (``magicprop.motion.propagate``) carries the edit's pixels; where the flow is blind it fills by
colour only. An image model the user already owns repaints those places: each carried frame is encoded, noised to
`denoise` and sampled back with the user's model, LoRAs and ControlNets (SDEdit, Meng et al., "SDEdit: Guided Image
Synthesis and Editing with Stochastic Differential Equations", ICLR 2022). Two refinements here:

- filled pixels get more freedom: the run samples at `filled_denoise` with a per-pixel denoise level that is 1
  inside the filled mask and, outside it, the share of the run's timestep range at which a run at `denoise` would
  start; a pixel takes part in sampling once the current timestep falls below its level (the thresholding of
  Differential Diffusion, Levin & Fried, "Differential Diffusion: Giving Each Pixel Its Strength", 2023);
- `loopback`: frame k starts from the previous refined frame carried by one step of flow where that flow is valid,
  and from the carried frame k elsewhere (the loop of WarpFusion / Rerender-A-Video's cross-frame init, Yang et al.,
  SIGGRAPH Asia 2023), so a repainted region stays stable from frame to frame.

Keyframes are never refined and start the loopback chains, forward and backward, blended where chains meet by the
keyframe plan (``magicprop.keyframes.keyframe_plan``). The refined pixels are put back with
``magicprop.composite.composite``, the one feathered pixel composite.

Backends implement ``FrameRefiner`` (ComfyUI's samplers in ``nodes/``, diffusers in
``magicprop.refine.diffusers_backend``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..composite import DEFAULT_BORDER, composite
from ..errors import MagicPropError
from ..keyframes import check_keyframes, check_max_batch, keyframe_plan, lockstep_order, meet, rounds
from ..seeding import frame_seed

MODES = ("per_frame", "loopback")
"""per_frame: img2img of each carried frame; loopback: from the previous refined frame carried by the flow."""
NOISE_MODES = ("fixed", "per_frame")
"""fixed: the seed itself for every frame (less flicker); per_frame: frame_seed(seed, k)."""
FILLED_THRESHOLD = 0.5
"""A pixel counts as filled (repainted at filled_denoise) when at least this share of it came from the fill."""
LEVEL_EPS = 1e-6
"""Added to a denoise level so a step at exactly the level's timestep already samples the pixel (rounding)."""


# -- the per-pixel denoise levels ----------------------------------------------------------------------------------


def check_denoise(denoise: float, filled_denoise: float, what: tuple[str, str] = ("denoise", "filled_denoise")) -> None:
    """denoise in [0, 1], filled_denoise in [denoise, 1]; one line naming the fix otherwise."""
    d, fd = what
    if not 0.0 <= denoise <= 1.0:
        raise MagicPropError(f"{d}={denoise}: expected a value from 0 (keep the frames) to 1 (repaint them).")
    if not 0.0 <= filled_denoise <= 1.0:
        raise MagicPropError(f"{fd}={filled_denoise}: expected a value from 0 to 1.")
    if filled_denoise < denoise:
        raise MagicPropError(
            f"{fd}={filled_denoise} is below {d}={denoise}: filled pixels (not carried by the flow) need at least "
            f"the freedom of the others; set {fd} >= {d} ({fd} = {d} turns the per-pixel level off)."
        )


def filled_region(filled: torch.Tensor) -> torch.Tensor:
    """(..., H, W) share of each pixel filled by the colour fill -> bool: filled."""
    return filled >= FILLED_THRESHOLD


def latent_region(region: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool pixel region -> (1, 1, h, w) bool on the latent grid: a cell is in when any of its pixels is."""
    return F.adaptive_max_pool2d(region.float()[None, None], tuple(grid)) > 0


def start_level(t_start: float, t_from: float, t_to: float) -> float:
    """The denoise level of a pixel that should start sampling at timestep `t_start`, in a run going from timestep
    `t_from` to `t_to`: the share of the run's timestep range at which it starts (1 = from the first step)."""
    if t_from <= t_to:
        return 1.0
    if t_start <= t_to:
        return 0.0  # never sampled (denoise 0)
    return min(1.0, (t_start - t_to) / (t_from - t_to)) + LEVEL_EPS


def denoise_levels(region: torch.Tensor, level: float) -> torch.Tensor:
    """(1, 1, h, w) float levels: 1 inside `region` (the latent cells of filled pixels), `level` elsewhere."""
    return torch.where(region, torch.ones((), dtype=torch.float32), torch.full((), float(level)))


def active(levels: torch.Tensor, t_now: float, t_from: float, t_to: float) -> torch.Tensor:
    """Which pixels take part in the step at timestep `t_now` (1) and which stay the noised input (0): those whose
    level is at least the share of the timestep range still ahead (Differential Diffusion's threshold)."""
    threshold = 1.0 if t_from <= t_to else (t_now - t_to) / (t_from - t_to)
    return (levels >= threshold).to(levels.dtype)


# -- the run -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefineRequest:
    """Everything needed to refine one frame."""

    index: int
    """Absolute frame index k (selects its ControlNet hint)."""
    image: torch.Tensor
    """(H, W, 3) init image in [0, 1]: the carried frame, or in loopback the previous refined frame carried there."""
    region: torch.Tensor | None
    """(H, W) bool filled pixels to sample at filled_denoise, or None when the per-pixel level is off."""
    seed: int
    """The frame's noise seed (the run's seed, or frame_seed(seed, k))."""


class FrameRefiner(Protocol):
    """img2img of frames in one sampler call: one (H, W, 3) refined image in [0, 1] per request (sampled at denoise,
    or per pixel with its region). One frame is a list of one; ``refine_round`` gives it frames that share their
    denoise (all with a filled region, or all without)."""

    def refine(self, requests: list[RefineRequest]) -> list[torch.Tensor]: ...


PER_FRAME_BATCH = 4
"""per_frame mode, max_batch 0: frames per sampler call (every frame is ready at once; a cap keeps memory flat)."""


def refine_round(refine: FrameRefiner, requests: list[RefineRequest]) -> list[torch.Tensor]:
    """The requests' refined frames, in order: one ``refine`` call per group of equal denoise."""
    out: list = [None] * len(requests)
    for with_region in (False, True):
        group = [i for i, r in enumerate(requests) if (r.region is not None) == with_region]
        if group:
            for i, image in zip(group, refine.refine([requests[i] for i in group]), strict=True):
                out[i] = image
    return out


@dataclass(frozen=True)
class RefineSettings:
    mode: str = "per_frame"
    """A name in MODES."""
    noise: str = "fixed"
    """A name in NOISE_MODES."""
    seed: int = 0
    denoise: float = 0.35
    filled_denoise: float = 0.6
    border: int = DEFAULT_BORDER
    window: int = 8
    """Frames over which two keyframes' loopback chains blend where they meet."""
    max_batch: int = 0
    """Frames per sampler call: loopback's chains advance together, their next frames batched (0 = all of them);
    per_frame's frames go in batches of this many (0 = PER_FRAME_BATCH). 1 = one frame at a time."""

    def check(self) -> None:
        if self.mode not in MODES:
            raise MagicPropError(f"mode {self.mode!r}: expected one of {list(MODES)}.")
        if self.noise not in NOISE_MODES:
            raise MagicPropError(f"noise {self.noise!r}: expected one of {list(NOISE_MODES)}.")
        check_denoise(self.denoise, self.filled_denoise)
        if self.border < 0:
            raise MagicPropError(f"border={self.border}: expected 0 or more pixels.")
        check_max_batch(self.max_batch)

    def frame_seed(self, k: int) -> int:
        return self.seed if self.noise == "fixed" else frame_seed(self.seed, k)

    def region(self, filled: torch.Tensor | None) -> torch.Tensor | None:
        """The pixels sampled at filled_denoise in a frame with fill share `filled` (H, W), or None when none are."""
        if filled is None or self.filled_denoise <= self.denoise:
            return None
        region = filled_region(filled)
        return region if bool(region.any()) else None

    def samples(self, filled: torch.Tensor | None) -> bool:
        """Whether a frame is sampled at all (denoise 0 leaves frames without filled pixels untouched)."""
        return self.denoise > 0 or self.region(filled) is not None


def loopback_init(previous: torch.Tensor, carried: torch.Tensor, flow: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """Frame k's loopback init: the previous refined frame carried to k by one step of flow where it is valid, the
    carried frame k elsewhere.

    previous, carried: (H, W, 3); flow: (1, 2, h, w) flow_{k->prev} in pixels of its resolution; valid: (h, w)
    bool (its forward-backward check on frame k). Exactly the carried previous frame where validity is 1.
    """
    from ..motion.engine import resize_flow, warp

    size = tuple(carried.shape[:2])
    moved = warp(previous.permute(2, 0, 1)[None].float(), resize_flow(flow.float(), size))[0].permute(1, 2, 0)
    w = valid.float()[None, None]
    if tuple(w.shape[-2:]) != size:
        w = F.interpolate(w, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    w = w[0, 0, ..., None]
    return torch.where(w >= 1, moved, w * moved + (1 - w) * carried.float())


def check_refine_inputs(carried, filled, keys: Sequence[int], settings: RefineSettings,
                        motion=None) -> torch.Tensor | None:
    """Every check on a run's inputs, before any model work; returns the filled mask as (1 or K, H, W) float (a
    tensor), or the object given (any with a `shape` whose `filled[k]` is frame k's (H, W) mask: read when used)."""
    if len(carried.shape) != 4 or carried.shape[-1] != 3 or carried.shape[0] < 1:
        raise MagicPropError(f"carried frames of shape {tuple(carried.shape)}: expected (K, H, W, 3) RGB frames.")
    k, h, w, _ = carried.shape
    settings.check()
    check_keyframes(keys, k)
    if filled is not None:
        if isinstance(filled, torch.Tensor):
            filled = filled.float()
            if filled.ndim == 2:
                filled = filled[None]
        if len(filled.shape) != 3 or filled.shape[0] not in (1, k) or tuple(filled.shape[1:]) != (h, w):
            raise MagicPropError(f"filled mask of shape {tuple(filled.shape)}: expected (K, H, W) or (1, H, W) with "
                                 f"(K, H, W) = {(k, h, w)}: FlowPropagate's filled output for these frames.")
    if settings.mode == "loopback" and k > 1:
        if motion is None:
            raise MagicPropError("mode 'loopback' needs the flow of the clip (MAGICPROP_FLOW from "
                                 "OpticalFlowSequence, or --flow on the command line); or use mode 'per_frame'.")
        if len(motion) != k - 1 or tuple(motion.frame_size) != (h, w):
            fh, fw = motion.frame_size
            raise MagicPropError(f"flow was estimated from {len(motion) + 1} frames of {fw}x{fh} but the carried "
                                 f"frames are {k} of {w}x{h}: give the flow of the source frames of this clip.")
    return filled


def refine_plan(keys: Sequence[int], num_frames: int, settings: RefineSettings,
                filled: torch.Tensor | None = None) -> list[int]:
    """The frames a run samples, in order (a frame two loopback chains share is sampled by both)."""
    keys = [int(i) for i in keys]
    if settings.mode == "per_frame":
        order = [k for k in range(num_frames) if k not in keys]
    else:
        order = lockstep_order(keyframe_plan(keys, num_frames, settings.window)[0])
    return [k for k in order if settings.samples(_fill_of(filled, k))]


def _fill_of(filled: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if filled is None else filled[k if filled.shape[0] > 1 else 0]


def flow_refine(
    carried,
    filled,
    keys: Sequence[int],
    refine: FrameRefiner,
    settings: RefineSettings,
    motion=None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    keep: bool = True,
) -> torch.Tensor | None:
    """Refine the carried frames (K, H, W, 3) with `refine`; returns (K, H, W, 3), keyframes unchanged.

    carried: a tensor (float in [0, 1] or uint8) or a `FrameSpool` (read a frame at a time). filled: (1 or K, H, W)
    share of each pixel filled by flow propagation's fill (FlowPropagate's mask), a tensor or any object with that
    `shape` whose `filled[k]` is frame k's (H, W) mask, or None. motion: the clip's consecutive flow
    (``magicprop.motion.engine.Motion``, or ``PairwiseMotion``: estimated pair by pair), needed by loopback. keep:
    False returns None and holds no output clip: the frames go to `callback` only (what is held is then each chain's
    previous frame and the blend window's first parts). Each refined
    frame is composited into its carried frame with ``composite``: everywhere when denoise > 0, else around its
    filled pixels (denoise 0 leaves the rest of the frame, and frames without filled pixels, bit-identical).
    callback(k, frame) once per finished frame (it may raise to cancel). Frames are sampled in rounds of up to
    `settings.max_batch` (``refine_round``): per_frame in frame order, loopback with its chains in lockstep.
    """
    from ..motion.engine import as_frame

    keys = [int(i) for i in keys]
    filled = check_refine_inputs(carried, filled, keys, settings, motion)
    num = carried.shape[0]

    def frame(k: int) -> torch.Tensor:
        """Carried frame k, (H, W, 3) float."""
        return as_frame(carried[k])

    out = torch.stack([frame(k) for k in range(num)]) if keep else None  # every frame is finished into it

    def finish(k: int, image: torch.Tensor) -> None:
        if out is not None:
            out[k] = image
        if callback is not None:
            callback(k, image)

    def refined(jobs: list[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
        """(k, init image) of a round -> each frame refined and put back into its carried frame."""
        fills = [_fill_of(filled, k) for k, _ in jobs]  # a lazily read mask is read once per frame
        sampled = [(j, k, init, settings.region(fill))
                   for j, ((k, init), fill) in enumerate(zip(jobs, fills, strict=True)) if settings.samples(fill)]
        new = refine_round(refine, [RefineRequest(k, init, region, settings.frame_seed(k))
                                    for _, k, init, region in sampled])
        made = {}  # by position in the round: two loopback chains can make the same frame k in one round
        for (j, k, init, region), image in zip(sampled, new):
            image = image.float().cpu().clamp(0, 1)
            # denoise > 0 repaints the whole frame; at 0 only the filled pixels change and the rest stays the input
            taken = torch.ones(init.shape[:2]) if settings.denoise > 0 else region.float()
            made[j] = composite(frame(k), image, taken, settings.border)
        return [made[j] if j in made else frame(k) for j, (k, _) in enumerate(jobs)]

    for k in keys:
        finish(k, frame(k))
    if settings.mode == "per_frame":
        todo = [k for k in range(num) if k not in keys]
        for batch in rounds(todo, settings.max_batch or PER_FRAME_BATCH):
            for k, image in zip(batch, refined([(k, frame(k)) for k in batch])):
                finish(k, image)
        return out

    from ..motion.propagate import chain_steps

    chains, blends = keyframe_plan(keys, num, settings.window)
    pending: dict[int, dict[int, torch.Tensor]] = {}
    steps = [chain_steps(motion, chain.indices) for chain in chains]
    previous = {n: frame(chain.indices[0]) for n, chain in enumerate(chains)}
    made = dict.fromkeys(range(len(chains)), 0)  # frames each chain has made
    while ready := [n for n, chain in enumerate(chains) if made[n] + 1 < len(chain.indices)]:
        for batch in rounds(ready, settings.max_batch):
            jobs = []
            for n in batch:
                k, flow, _, valid = next(steps[n])
                jobs.append((k, loopback_init(previous[n], frame(k), flow, valid)))
            for n, (k, _), image in zip(batch, jobs, refined(jobs)):
                made[n] += 1
                previous[n] = image  # the chain goes on from its own result, blended or not
                image = meet(pending, blends, k, chains[n].key, image)
                if image is not None:
                    finish(k, image)
    return out
