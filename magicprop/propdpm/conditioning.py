"""Spatial conditions of PropDPM: what is concatenated to the noisy latent, in the order the checkpoint declares.

MagicProp section 3.2, eq. (6): frame k is generated from its depth m^k, the previous edited frame x^{k-1} and the
previous depth m^{k-1}. The paper's UNet input has 4 + 6 channels, in this order (``PAPER_INPUTS``):

    [0:4]  noisy latent z_t                   (scaled latent space)
    [4:8]  previous edited latent z^{k-1}     (scaled by the latent scale, like the noisy latent)
    [8]    target depth m^k                   (inverse depth, near = 1, mapped from [0, 1] to [-1, 1])
    [9]    previous depth m^{k-1}             (same mapping)

A checkpoint lists its inputs by name (``PropDPMConfig.inputs``, names from ``INPUTS``). The flow-guided layout
(``FLOW_GUIDED_INPUTS``, 16 channels) appends the motion inputs that ``magicprop.propdpm.motion_inputs`` builds:

    [10:14] carried latent    the reference carried to frame k by flow propagation in pixel space (filled pixels
                              blanked), then VAE-encoded; scaled by the latent scale, noise-augmented at the
                              request's motion noise level
    [14]    carried validity  1 where the flow carried the reference, 0 where flow propagation filled (latent grid)
    [15]    motion noise level  a constant plane: the augmentation level of the carried latent

This module is the one owner of that recipe: ``condition_for`` builds the declared channels of a request for the
trainer (``magicprop.train.loop.Batcher``), the diffusers backend and the ComfyUI denoiser alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import MagicPropError
from .loop import FrameRequest

LATENT_CHANNELS = 4
CONDITION_CHANNELS = 6  # the paper's: previous latent (4) + target depth (1) + previous depth (1)

AUGMENT_SEED_SALT = 0x5EED_A06
"""Offsets a frame's seed for the previous-latent noise augmentation draw (independent of its initial noise)."""
MOTION_SEED_SALT = 0x5EED_C42
"""Offsets a frame's seed for the carried-latent noise augmentation draw (independent of the other two)."""

PAPER_INPUTS = ("prev_latent", "depth", "prev_depth")
"""The paper's input layout (MagicProp eq. 6): every checkpoint without an `inputs` field has it."""
MOTION_INPUTS = ("carried_latent", "carried_valid", "motion_noise_level")
"""The flow-guided inputs (README, "Checkpoint format"); a checkpoint declaring any of them needs flow to run."""
FLOW_GUIDED_INPUTS = PAPER_INPUTS + MOTION_INPUTS


class ConditionSettings(Protocol):
    """What the recipe reads from a checkpoint's config (``PropDPMConfig`` has these fields)."""

    latent_scale: float
    previous_frame: bool
    prev_noise_augmentation: float
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class ConditionRecipe:
    """The recipe's settings where no checkpoint config exists yet (the trainer, from its run config)."""

    latent_scale: float
    previous_frame: bool = True
    prev_noise_augmentation: float = 0.0
    inputs: tuple[str, ...] = PAPER_INPUTS


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
                "(use magicprop.propdpm.depth.depth_to_latent_grid)."
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


def augment_generator(seed: int, salt: int = AUGMENT_SEED_SALT) -> torch.Generator:
    """The generator of a frame's noise augmentation draw, from the request's seed (one salt per input)."""
    return torch.Generator(device="cpu").manual_seed(seed ^ salt)


# -- the input registry: name -> channels and builder ----------------------------------------------------------

def _need(request: FrameRequest, field: str) -> torch.Tensor:
    value = getattr(request, field)
    if value is None:
        raise MagicPropError(
            f"frame {request.index}: the checkpoint declares the input {field!r} but the request has none: a "
            "flow-guided PropDPM needs the source frames and their flow (OpticalFlowSequence in ComfyUI; the frames "
            "in the command line), which magicprop.propdpm.motion_inputs turns into its motion inputs."
        )
    return value


def _prev_latent(request: FrameRequest, settings: ConditionSettings) -> torch.Tensor:
    prev = request.prev_latent.to(torch.float32) * settings.latent_scale
    if not settings.previous_frame:
        prev = torch.zeros_like(prev)
    return noise_augment(prev, settings.prev_noise_augmentation, augment_generator(request.seed))


def _plane(request: FrameRequest, value: torch.Tensor) -> torch.Tensor:
    """(1, 1, h, w) on the request's latent grid, float32."""
    h, w = request.prev_latent.shape[-2:]
    return value.to(torch.float32).expand(1, 1, h, w)


def _depth(request: FrameRequest, settings: ConditionSettings) -> torch.Tensor:
    return depth_to_input(request.depth.to(torch.float32))


def _prev_depth(request: FrameRequest, settings: ConditionSettings) -> torch.Tensor:
    return depth_to_input(request.prev_depth.to(torch.float32))


def _level(request: FrameRequest) -> float:
    level = float(request.motion_noise_level or 0.0)
    if not 0.0 <= level < 1.0:
        raise MagicPropError(f"frame {request.index}: motion noise level={level}: expected a value in [0, 1).")
    return level


def _carried_latent(request: FrameRequest, settings: ConditionSettings) -> torch.Tensor:
    carried = _need(request, "carried_latent").to(torch.float32) * settings.latent_scale
    return noise_augment(carried, _level(request), augment_generator(request.seed, MOTION_SEED_SALT))


def _carried_valid(request: FrameRequest, settings: ConditionSettings) -> torch.Tensor:
    return _plane(request, _need(request, "carried_valid"))


def _motion_noise_level(request: FrameRequest, settings: ConditionSettings) -> torch.Tensor:
    return _plane(request, torch.tensor(_level(request)))


@dataclass(frozen=True)
class InputSpec:
    channels: int
    build: Callable[[FrameRequest, ConditionSettings], torch.Tensor]
    """(request, settings) -> (1, channels, h, w) float32 in the UNet's input space."""
    doc: str


INPUTS: dict[str, InputSpec] = {
    "prev_latent": InputSpec(4, _prev_latent, "previous edited latent, scaled, noise-augmented at the checkpoint's "
                                              "prev_noise_augmentation"),
    "depth": InputSpec(1, _depth, "target depth, [0, 1] -> [-1, 1]"),
    "prev_depth": InputSpec(1, _prev_depth, "previous depth, [0, 1] -> [-1, 1]"),
    "carried_latent": InputSpec(4, _carried_latent, "the reference carried to the frame by flow propagation in pixel "
                                                    "space, filled pixels blanked, VAE-encoded, scaled"),
    "carried_valid": InputSpec(1, _carried_valid, "1 where flow carried, 0 where flow propagation filled"),
    "motion_noise_level": InputSpec(1, _motion_noise_level, "the carried latent's noise augmentation level"),
}
"""Every input a PropDPM checkpoint may declare, by name (error messages list these names)."""


def check_inputs(names, what: str = "inputs") -> tuple[str, ...]:
    """The declared input names as a tuple, refused in one line unless they start with the paper's and are known."""
    names = tuple(names)
    unknown = [n for n in names if n not in INPUTS]
    if unknown or len(set(names)) != len(names) or names[: len(PAPER_INPUTS)] != PAPER_INPUTS:
        raise MagicPropError(
            f"{what}={list(names)}: expected distinct names from {sorted(INPUTS)} starting with the paper's "
            f"{list(PAPER_INPUTS)} (e.g. the flow-guided layout {list(FLOW_GUIDED_INPUTS)})."
        )
    return names


def input_channels(names) -> int:
    """Channels the declared inputs add to the noisy latent (the paper's: 6)."""
    return sum(INPUTS[n].channels for n in check_inputs(names))


def has_motion(names) -> bool:
    """Whether a layout declares motion inputs (then a run needs source frames and flow)."""
    return any(n in MOTION_INPUTS for n in names)


def condition_for(request: FrameRequest, settings: ConditionSettings) -> torch.Tensor:
    """The (1, C, h, w) extra input channels of one request, in the UNet's input space, in the declared order.

    The previous latent is scaled like the noisy latent, zeroed for a model trained without it, and noise-augmented
    at the checkpoint's level with a generator seeded from the request's seed; the depths are centred. Motion inputs
    come from the request (``magicprop.propdpm.motion_inputs``); a missing one is refused in one line.
    """
    names = getattr(settings, "inputs", PAPER_INPUTS)
    if tuple(names) == PAPER_INPUTS:  # the paper's recipe exactly as it was built before inputs were declared
        prev = _prev_latent(request, settings)
        return spatial_condition(prev, request.depth.to(prev), request.prev_depth.to(prev))
    parts = [INPUTS[n].build(request, settings) for n in check_inputs(names)]
    h, w = request.prev_latent.shape[-2:]
    for name, part in zip(names, parts):
        if part.shape[-2:] != (h, w):
            raise MagicPropError(
                f"frame {request.index}: input {name!r} has shape {tuple(part.shape)}: expected (1, "
                f"{INPUTS[name].channels}, {h}, {w}), on the latent grid of the frame."
            )
    return torch.cat(parts, dim=1)
