"""One propagation run, whatever the front end: encoded references, keyframe indices and per-frame conditions on
the latent grid, a denoiser per keyframe, optional anchoring -> the latents of every frame.

The command line (``magicprop.jobs.propagate``), the ComfyUI node (``nodes/propdpm/propagate.py``), the benchmarks and
the trainer's validation all go through ``run_inputs`` (checks, reference-depth placement) and ``propagate_run``
(keyframes, anchoring, the autoregressive loop of ``magicprop.propdpm.loop``). They differ only in how they encode
the references and which FrameDenoiser they make (diffusers' DDIM or ComfyUI's samplers).

Everything a run reads per frame sits on the latent grid (h, w) = (H/8, W/8): the clip depth, the reference
depth, placed on the clip's scale there, and for flow-guided checkpoints the carried frames' latents and validity
(``magicprop.propdpm.motion_inputs.CarriedFrames``), which join ``RunInputs`` beside ``depth``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..composite import DEFAULT_BORDER
from ..errors import MagicPropError
from ..keyframes import check_keyframes, keyframe_plan
from ..seeding import frame_seed
from .depth import align_to, depth_from_image, depth_to_latent_grid
from .drift import AnchoredDenoiser
from .loop import (
    FrameCallback,
    FrameDenoiser,
    FrameRequest,
    Keyframe,
    check_latents,
    denoise_frame,
    propagate_chains,
)
from .motion_inputs import (
    CarriedDenoiser,
    CarriedFrames,
    Decode,
    Encode,
    carry_frames,
    check_flow_record,
    checkpoint_settings,
    checkpoint_strategy,
    composite_carried,
)

DenoiserFactory = Callable[[int, int], FrameDenoiser]
"""(position i of the reference in the batch, its absolute frame index) -> the denoiser carrying its appearance."""


@dataclass(frozen=True)
class RunInputs:
    """What a propagation run reads, on the latent grid."""

    reference_latents: torch.Tensor
    """(N, C, h, w) unscaled VAE latents of the edited references, in keyframe order."""
    indices: tuple[int, ...]
    """Absolute frame index of each reference (distinct, increasing)."""
    depth: torch.Tensor
    """(K, 1, h, w) aligned clip depth in [0, 1], near = 1."""
    reference_depth: torch.Tensor | None = None
    """(N, 1, h, w) depth of each edited reference placed on the clip's scale, or None (the clip's depth there)."""
    carried: CarriedFrames | None = None
    """The edit carried by flow propagation and its motion inputs (flow-guided checkpoints), or None."""

    @property
    def num_frames(self) -> int:
        return self.depth.shape[0]


def depth_on_grid(depth_images: torch.Tensor, grid: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """(K, H, W, 3) depth IMAGE (near = bright) -> (K, 1, h, w) on the latent grid, a chunk at a time (no full-size
    float copy of the clip)."""
    return torch.cat([depth_to_latent_grid(depth_from_image(depth_images[i : i + chunk])[:, None], grid)
                      for i in range(0, depth_images.shape[0], chunk)])


def place_reference_depth(reference_depth: torch.Tensor, depth: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """Depth of edited references placed on the clip's scale, on the latent grid: (N, H, W) relative inverse depth
    in [0, 1] (depth images, near = bright, on their own scale) -> (N, 1, h, w) in [0, 1].

    Each map is brought to the latent grid first, then fitted to the clip's depth at its keyframe by the robust
    scale-and-shift fit that aligns the clip's own frames (``magicprop.propdpm.depth.align_to``).
    """
    if reference_depth.ndim != 3 or reference_depth.shape[0] != len(indices):
        raise MagicPropError(
            f"reference depth has shape {tuple(reference_depth.shape)}: expected one depth map per edited "
            f"reference ({len(indices)}, H, W)."
        )
    grid = tuple(depth.shape[-2:])
    small = depth_to_latent_grid(reference_depth[:, None].float(), grid)
    return torch.stack([align_to(small[i, 0], depth[k, 0]) for i, k in enumerate(indices)])[:, None]


def run_inputs(reference_latents: torch.Tensor, indices: Sequence[int], depth: torch.Tensor,
               reference_depth: torch.Tensor | None = None, carried: CarriedFrames | None = None) -> RunInputs:
    """Check and assemble a run's inputs; `reference_depth` is (N, H, W) raw depth of the edited references, placed
    here (``place_reference_depth``); `carried` the flow-guided checkpoint's motion inputs of every frame."""
    check_latents(reference_latents, depth)
    indices = check_keyframes(indices, depth.shape[0], references=reference_latents.shape[0])
    if carried is not None and tuple(carried.latents.shape[:1]) + tuple(carried.latents.shape[-2:]) != \
            (depth.shape[0], *depth.shape[-2:]):
        raise MagicPropError(
            f"carried latents have shape {tuple(carried.latents.shape)}: expected one per frame on the latent grid "
            f"({depth.shape[0]}, 4, {depth.shape[-2]}, {depth.shape[-1]}); carry the same frames the depth is of."
        )
    placed = None if reference_depth is None else place_reference_depth(reference_depth, depth, indices)
    return RunInputs(reference_latents, tuple(indices), depth, placed, carried)


def latent_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(M, H, W) pixel masks -> (M, 1, h, w) coverage on the latent grid (area average)."""
    return torch.nn.functional.interpolate(masks[:, None].float(), size=grid, mode="area")


def generated_frames(inputs: RunInputs, window: int = 8) -> int:
    """How many frames a run samples (shared frames where chains meet count twice): a progress bar's total."""
    chains, _ = keyframe_plan(list(inputs.indices), inputs.num_frames, window)
    return sum(len(c.indices) - 1 for c in chains)


def propagate_run(
    inputs: RunInputs,
    make_denoiser: DenoiserFactory,
    seed: int,
    window: int = 8,
    anchor_strength: float = 0.0,
    masks: torch.Tensor | None = None,
    callback: FrameCallback | None = None,
    out_device: torch.device | str = "cpu",
    feedback: str | None = None,
    encode: Encode | None = None,
    decode: Decode | None = None,
    composite_border: int | None = None,
    max_batch: int = 0,
) -> torch.Tensor:
    """Run the propagation: (K, C, h, w) latents, each reference in its place; the chains' frames of each round in
    one sampler call of at most `max_batch` frames (0 = all ready; ``magicprop.propdpm.loop``).

    anchor_strength > 0 wraps every keyframe's denoiser in reference-statistics anchoring (``magicprop.propdpm.drift``),
    inside `masks` ((1 or K, 1, h, w) latent-grid masks, ``latent_masks``) when given. With `inputs.carried`, every
    frame gets its motion inputs (``magicprop.propdpm.motion_inputs.CarriedDenoiser``, outermost, so anchoring acts on
    the model's own latent); `feedback`, `encode`, `decode` and `composite_border` say what feeds the next frame
(default: the composite re-encoded when `composite_border` is not None, which needs the VAE's `encode` and `decode`;
``magicprop.propdpm.motion_inputs``).
    """
    if not 0.0 <= anchor_strength <= 1.0:
        raise MagicPropError(f"anchor strength={anchor_strength}: expected a value in [0, 1] (0 = off).")
    keyframes = []
    for i, index in enumerate(inputs.indices):
        latent = inputs.reference_latents[i : i + 1]
        denoiser = make_denoiser(i, index)
        if anchor_strength > 0:
            denoiser = AnchoredDenoiser(denoiser, latent, anchor_strength, masks, index)
        if inputs.carried is not None:
            denoiser = CarriedDenoiser(denoiser, inputs.carried, 0.0, feedback, encode, decode, composite_border)
        ref_depth = None if inputs.reference_depth is None else inputs.reference_depth[i : i + 1]
        keyframes.append(Keyframe(index, latent, denoiser, ref_depth))
    return propagate_chains(keyframes, inputs.depth, seed, window, callback=callback, out_device=out_device,
                            max_batch=max_batch)


def teacher_forced_latents(denoiser: FrameDenoiser, latents: torch.Tensor, depth: torch.Tensor,
                           seed: int) -> torch.Tensor:
    """Frame k generated in one step from the TRUE frame k-1 (no accumulated error): (K, C, h, w), frame 0 given."""
    out = [latents[:1]]
    for k in range(1, latents.shape[0]):
        out.append(denoise_frame(denoiser, FrameRequest(k, k - 1, latents[k - 1 : k], depth[k : k + 1],
                                                        depth[k - 1 : k], frame_seed(seed, k))))
    return torch.cat(out)


# -- host-free runs on images (benchmarks, validation); `models` is a diffusers_backend.StandaloneModels --

def carried_for_run(config, frames: torch.Tensor | None, references: torch.Tensor, indices: Sequence[int],
                    encode: Encode, engine=None, motion=None, carry: str | None = None, window: int = 8,
                    mask: torch.Tensor | None = None, blank: bool = True,
                    callback: Callable[[int], None] | None = None, weights: str | None = None,
                    dtype: torch.dtype = torch.float32) -> CarriedFrames | None:
    """The motion inputs a checkpoint declares (None for the paper's layout): flow propagation of the references
    through the source `frames` with the checkpoint's recorded estimator and strategy. `engine` (default: built from
    the checkpoint's record; `weights`: the RAFT weights file it records) and `motion` (the clip's consecutive flow,
    default: estimated here) are refused in one line when made by another estimator. dtype: of the carried frames
    kept for the run (``carry_frames``)."""
    from ..motion.engine import FlowEngine

    if not config.flow_guided:
        return None
    if frames is None:
        raise MagicPropError(
            "this PropDPM is flow-guided (its checkpoint declares motion inputs): pass the source frames (and their "
            "flow, from OpticalFlowSequence in ComfyUI) so flow propagation can carry the edit to every frame."
        )
    if motion is not None:
        check_flow_record(config, motion.settings, "the flow")
    if engine is None:
        engine = FlowEngine(checkpoint_settings(config, weights))
    check_flow_record(config, engine.settings.record(), "the flow engine")
    return carry_frames(frames, references, indices, engine, encode, motion, checkpoint_strategy(config), carry,
                        window, mask, blank, callback, dtype)


def propagate_images(models, reference: torch.Tensor, depth: torch.Tensor, reference_index: int, steps: int = 20,
                     seed: int = 0, cfg: float = 1.0, anchor_strength: float = 0.0,
                     callback: FrameCallback | None = None, frames: torch.Tensor | None = None, engine=None,
                     motion=None, composite_border: int | None = DEFAULT_BORDER, feedback: str | None = None,
                     blank: bool = True, carry: str | None = None, max_batch: int = 0) -> torch.Tensor:
    """(1, H, W, 3) edited reference + (K, H, W) clip depth in [0, 1] -> (K, H, W, 3) propagated frames.

    Flow-guided checkpoints also need the source `frames` (K, H, W, 3) (and take an `engine` or the clip's `motion`
    made with the checkpoint's estimator); their output is composited under the carried pixels over
    `composite_border` px (None = the decoded frames as they are). A paper checkpoint ignores these.
    """
    ref_latent = models.encode(reference)
    carried = carried_for_run(models.config, frames, reference, [reference_index], models.encode, engine, motion,
                              carry, blank=blank)
    inputs = run_inputs(ref_latent, [reference_index],
                        depth_to_latent_grid(depth[:, None].float(), tuple(ref_latent.shape[-2:])), carried=carried)
    denoiser = models.denoiser(reference, ref_latent, steps, cfg)
    latents = propagate_run(inputs, lambda _i, _k: denoiser, seed, anchor_strength=anchor_strength,
                            callback=callback, feedback=feedback, encode=models.encode, decode=models.decode,
                            composite_border=composite_border, max_batch=max_batch)
    images = models.decode(latents)
    return images if carried is None else composite_carried(images, carried.frames, carried.filled, composite_border)


def teacher_forced(models, frames: torch.Tensor, depth: torch.Tensor, steps: int = 20, seed: int = 0) -> torch.Tensor:
    """(K, H, W, 3) true edited frames + (K, H, W) depth -> (K, H, W, 3): each frame in one step of the chain from the
    true previous frame, with frame 0 as the reference."""
    latents = models.encode(frames)
    depth_lat = depth_to_latent_grid(depth[:, None].float(), tuple(latents.shape[-2:]))
    denoiser = models.denoiser(frames[:1], latents[:1], steps)
    return models.decode(teacher_forced_latents(denoiser, latents, depth_lat, seed))
