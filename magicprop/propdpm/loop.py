"""The autoregressive propagation loop (MagicProp section 3.2, eq. 6), generic over "denoise one frame".

    z^k = PropDPM(m^k, z^{k-1}, m^{k-1}, x^#)

The edited reference sits at ANY absolute index r. Frames r+1 .. K-1 are generated forward and r-1 .. 0 backward,
each from its predecessor in its direction (the paper starts from x^0 = x^#; going backward is the same model run
with time reversed, which the trainer covers by sampling both directions). The reference frame's own latent is the
VAE encoding of the edited reference.

Randomness: the initial noise and any sampler noise of frame k depend only on (seed, k), through
``seeding.frame_seed``, so a frame's result does not depend on the order frames are made in, on chunking, or on
which chains run.

Batching: the chains of a run (forward and backward from a mid-clip reference, one or two per keyframe) do not depend
on each other, so the loop advances them in lockstep: at round j the j-th frame of every chain that has one is made
in ONE sampler call, a batch (``denoise_round``), capped at `max_batch` frames (0 = every ready frame; 1 = one frame
per call, the sequential run). A batch holds at most one frame per chain, so memory does not grow with the clip.
Because a frame's inputs and noise do not depend on the other frames of its batch, batched and one-at-a-time runs
agree up to the float rounding of a batched convolution (deterministic samplers).

Backends and wrappers implement ``FrameDenoiser``, one method, batch first (``denoise``; one frame is a batch of
one): diffusers in ``magicprop.propdpm.diffusers_backend``, ComfyUI's samplers in ``nodes/``. A whole run
(references, keyframes, anchoring) is assembled by ``magicprop.propdpm.run``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import MagicPropError
from ..keyframes import check_max_batch, keyframe_plan, meet, rounds
from ..seeding import frame_seed


@dataclass(frozen=True)
class FrameRequest:
    """Everything needed to generate one frame."""

    index: int
    """Absolute index k of the frame to generate."""
    source_index: int
    """Absolute index of its predecessor (k - 1 forward, k + 1 backward; r for the reference's neighbours)."""
    prev_latent: torch.Tensor
    """(1, C, h, w) unscaled VAE latent of the predecessor (as VAE.encode returns it)."""
    depth: torch.Tensor
    """(1, 1, h, w) depth of frame k at the latent grid, [0, 1], near = 1."""
    prev_depth: torch.Tensor
    """(1, 1, h, w) depth of the predecessor (for the reference: the reference depth)."""
    seed: int
    """frame_seed(run seed, k): seeds this frame's initial noise and sampler noise."""
    carried_latent: torch.Tensor | None = None
    """(1, C, h, w) unscaled VAE latent of the reference carried to frame k by flow propagation (flow-guided
    checkpoints only; ``magicprop.propdpm.motion_inputs`` attaches it)."""
    carried_valid: torch.Tensor | None = None
    """(1, 1, h, w) share of frame k's latent cell the flow carried (1) rather than filled (0)."""
    motion_noise_level: float | None = None
    """Noise augmentation level of the carried latent (training draws it; inference: 0)."""


class FrameDenoiser(Protocol):
    """Denoise frames from pure noise, each conditioned as in its request: (B, C, h, w) unscaled latents.

    `jobs` are (denoiser, request) pairs, one frame is a list of one. The first denoiser is `self`; the others are its
    siblings of the same run (each chain's, e.g. each keyframe's appearance), made by the same factory and so of its
    type: a backend makes them in one sampler call where they can share one.
    """

    def denoise(self, jobs: Sequence[Job]) -> torch.Tensor: ...


Job = tuple[FrameDenoiser, FrameRequest]
"""A frame to make and the denoiser of its chain."""


def denoise_frame(denoiser: FrameDenoiser, request: FrameRequest) -> torch.Tensor:
    """One frame: (1, C, h, w)."""
    return denoiser.denoise([(denoiser, request)])


def denoise_round(jobs: Sequence[Job]) -> list[torch.Tensor]:
    """The frames of one round, (1, C, h, w) each, in one call of the first job's denoiser."""
    return list(jobs[0][0].denoise(list(jobs)).split(1))


def inner_round(jobs: Sequence[Job], transform: Callable[[FrameDenoiser, FrameRequest], FrameRequest] | None = None
                ) -> list[torch.Tensor]:
    """``denoise_round`` on the inner denoisers of wrapping denoisers (each has ``.inner``), each request passed
    through `transform` first: the batched call of a wrapper that changes requests or results around its inner one."""
    return denoise_round([(d.inner, r if transform is None else transform(d, r)) for d, r in jobs])


FrameCallback = Callable[[int, torch.Tensor], None]
"""Called after each generated frame with (absolute index, latent); raise inside it to cancel."""


class ChainState:
    """Where a chain stands: the next index to make and its predecessor's latent and depth."""

    def __init__(self, indices: list[int], start_latent: torch.Tensor, start_depth: torch.Tensor | None = None,
                 key: int = 0) -> None:
        self.indices, self.key, self.position = indices, key, 0
        self.latent, self.depth = start_latent, start_depth

    @property
    def pending(self) -> bool:
        return self.position + 1 < len(self.indices)

    def request(self, depth: torch.Tensor, seed: int) -> FrameRequest:
        src, k = self.indices[self.position], self.indices[self.position + 1]
        prev_depth = depth[src : src + 1] if self.depth is None else self.depth
        return FrameRequest(k, src, self.latent, depth[k : k + 1], prev_depth, frame_seed(seed, k))

    def advance(self, latent: torch.Tensor, depth: torch.Tensor) -> None:
        self.position += 1
        k = self.indices[self.position]
        self.latent, self.depth = latent, depth[k : k + 1]


@dataclass(frozen=True)
class Keyframe:
    """An edited reference at an absolute index, with the denoiser that carries its appearance."""

    index: int
    latent: torch.Tensor
    """(1, C, h, w) unscaled VAE latent of the edited frame."""
    denoiser: FrameDenoiser
    depth: torch.Tensor | None = None
    """(1, 1, h, w) depth of the edited frame when the edit changed shapes (default: the clip's depth there)."""


def check_latents(latents: torch.Tensor, depth: torch.Tensor, what: str = "reference latents",
                  frames: int | None = None) -> None:
    """The shape check of the tensors a PropDPM run starts from, in one place (once per run: ``propagate_keyframes``
    for the loop's own callers, ``magicprop.propdpm.run.run_inputs`` for a whole run): `depth` (K, 1, h, w) at the
    latent grid, and the edited frames' `latents` (N, C, h, w) on the same grid (N = `frames` when given)."""
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise MagicPropError(f"depth has shape {tuple(depth.shape)}: expected (K, 1, h, w) at the latent grid.")
    n = "N" if frames is None else frames
    if latents.ndim != 4 or latents.shape[0] == 0 or (frames is not None and latents.shape[0] != frames):
        raise MagicPropError(
            f"{what} have shape {tuple(latents.shape)}: expected ({n}, C, h, w), one per edited reference."
        )
    if latents.shape[-2:] != depth.shape[-2:]:
        raise MagicPropError(
            f"{what}: latent grid {tuple(latents.shape[-2:])} differs from the depth grid {tuple(depth.shape[-2:])}: "
            "the references must have the same size as the video frames."
        )


def propagate_keyframes(
    keyframes: Sequence[Keyframe],
    depth: torch.Tensor,
    seed: int,
    window: int = 8,
    callback: FrameCallback | None = None,
    out_device: torch.device | str = "cpu",
    max_batch: int = 0,
) -> torch.Tensor:
    """Propagate several edited keyframes through the clip: (K, C, h, w) latents, keyframes in their places.

    Every frame comes from its nearest keyframe's chain; where two chains meet they are blended over `window`
    frames (keyframe_plan). Frame k's noise depends on (seed, k) only, so both chains start frame k from the same
    noise. The chains advance in lockstep, the frames of a round batched up to `max_batch` (module docstring). The
    callback sees each frame once, when its final latent is known.
    """
    for kf in keyframes:
        check_latents(kf.latent, depth, f"keyframe {kf.index}'s latent", frames=1)
    return propagate_chains(keyframes, depth, seed, window, callback, out_device, max_batch)


def propagate_chains(
    keyframes: Sequence[Keyframe],
    depth: torch.Tensor,
    seed: int,
    window: int = 8,
    callback: FrameCallback | None = None,
    out_device: torch.device | str = "cpu",
    max_batch: int = 0,
) -> torch.Tensor:
    """``propagate_keyframes`` on tensors already checked (``check_latents``): a whole run's loop, whose inputs
    ``magicprop.propdpm.run.run_inputs`` checked."""
    keyframes = sorted(keyframes, key=lambda kf: kf.index)
    num_frames = depth.shape[0]
    chains, blends = keyframe_plan([kf.index for kf in keyframes], num_frames, window)
    out = torch.empty((num_frames, *keyframes[0].latent.shape[1:]), dtype=keyframes[0].latent.dtype,
                      device=out_device)
    for kf in keyframes:
        out[kf.index] = kf.latent[0].to(out_device)
        if callback is not None:
            callback(kf.index, kf.latent)
    check_max_batch(max_batch)
    pending: dict[int, dict[int, torch.Tensor]] = {}
    states = [ChainState(c.indices, keyframes[c.key].latent, keyframes[c.key].depth, c.key) for c in chains]
    while ready := [s for s in states if s.pending]:
        for batch in rounds(ready, max_batch):
            jobs = [(keyframes[s.key].denoiser, s.request(depth, seed)) for s in batch]
            for state, (_, request), latent in zip(batch, jobs, denoise_round(jobs)):
                state.advance(latent, depth)
                k = request.index
                latent = meet(pending, blends, k, state.key, latent)
                if latent is None:
                    continue
                out[k] = latent[0].to(out_device)
                if callback is not None:
                    callback(k, latent)
    return out


def propagate(
    denoiser: FrameDenoiser,
    reference_latent: torch.Tensor,
    depth: torch.Tensor,
    reference_index: int,
    seed: int,
    reference_depth: torch.Tensor | None = None,
    callback: FrameCallback | None = None,
    out_device: torch.device | str = "cpu",
    max_batch: int = 0,
) -> torch.Tensor:
    """Propagate the edited reference through the clip: returns (K, C, h, w) latents, frame r = reference_latent.

    reference_latent: (1, C, h, w) VAE encoding of the edited reference (unscaled).
    depth: (K, 1, h, w) aligned clip depth at the latent grid.
    reference_depth: depth of the edited reference when the edit changed its shape (default depth[r]).
    """
    key = Keyframe(reference_index, reference_latent, denoiser, reference_depth)
    return propagate_keyframes([key], depth, seed, callback=callback, out_device=out_device, max_batch=max_batch)
