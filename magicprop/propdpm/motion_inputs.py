"""Motion inputs of a flow-guided PropDPM, built in one place for the trainer, the diffusers backend and the ComfyUI
denoiser; and the pixel composite of its output (DESIGN.md, "Motion: flow carries, the model makes").

Flow carries, the model makes. Flow propagation (``magicprop.motion.propagate.flow_propagate``, the checkpoint's
recorded estimator and strategy) carries the edited reference to every frame IN PIXEL SPACE (warping on the latent
grid costs ~3 dB); its filled pixels (occluded, revealed, out of frame) are blanked to grey (``GREY``) and the frame
is VAE-encoded: the ``carried_latent`` input. ``carried_valid`` is the carried share of each latent cell. The model
then makes what the flow could not see, and ``composite_carried`` puts its decoded frame under the carried pixels:
carried pixels are kept exactly, the model's pixels are used where flow propagation filled, over a soft border
(``magicprop.composite``) that fades the carried pixels into the model's inside the hole.

Grey blanking: in self-supervised training the reference is a source frame, so flow propagation's fill (the source
frame through the edit's colour mapping, an identity there) IS the target: training must blank it or the model
learns to copy it. Inference blanks alike by default (``blank=True``), as the model was trained.

What feeds frame k+1, and what the LATENT output holds (``FEEDBACK``): with the composite on, the composite
re-encoded ("composite", ``DEFAULT_FEEDBACK``): the carried pixels exactly and the model's pixels where flow
propagation filled, so frame k+1's previous-frame input carries no drift where the flow is valid; the LATENT output
holds these same re-encoded composites (a VAE Decode of it gives the composite to the VAE's round-trip precision; the
IMAGE output is the composite in pixels). With the composite off, the model's own latent feeds frame k+1 and is the
LATENT output (the model alone).

Both defaults (composite feeding frame k+1, grey blanking) were chosen by a measured trial: docs/decisions.md,
"Flow-guided PropDPM: feedback and blanking".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..composite import DEFAULT_BORDER, composite
from ..errors import MagicPropError
from .loop import FrameDenoiser, FrameRequest, Job, inner_round

GREY = 0.5
"""The value filled pixels are blanked to before encoding (mid-grey in [0, 1], the VAE's zero in [-1, 1])."""
TRAIN_CARRY = "edit"
"""What training carries: the reference's own pixels (the residual carry of a source frame is an identity)."""
ESTIMATOR_KEYS = ("estimator", "preset", "work_size", "raft_iterations", "weights_sha256")
"""The parts of a ``FlowSettings.record()`` that must match between training and inference."""
FEEDBACK = ("latent", "composite")
"""What feeds the next frame (and the LATENT output): the model's latent, or the pixel composite re-encoded."""
DEFAULT_FEEDBACK = "composite"
"""With the composite on (measured best: docs/decisions.md); with it off the model's latent feeds the next frame."""

Encode = Callable[[torch.Tensor], torch.Tensor]
"""(B, H, W, 3) images in [0, 1] -> (B, 4, h, w) unscaled VAE latents (either backend's VAE)."""
Decode = Callable[[torch.Tensor], torch.Tensor]
"""(B, 4, h, w) unscaled latents -> (B, H, W, 3) images in [0, 1]."""


# -- the checkpoint's estimator --------------------------------------------------------------------------------

def motion_record(settings, strategy: str, carry: str = TRAIN_CARRY) -> dict[str, Any]:
    """What a flow-guided checkpoint records in `motion`: the estimator's FlowSettings record, the flow propagation
    strategy and what training carried."""
    return {**settings.record(), "strategy": strategy, "carry": carry}


def describe_record(record: dict) -> str:
    """'dis (preset medium, work_size 512)' from a FlowSettings record."""
    rest = ", ".join(f"{k} {record[k]}" for k in ESTIMATOR_KEYS[1:] if k in record)
    return f"{record.get('estimator')}" + (f" ({rest})" if rest else "")


def check_flow_record(config, record: dict, what: str = "flow") -> None:
    """Refuse, in one line, flow estimated otherwise than the flow-guided checkpoint's training flow.

    `external` flow (controlnet_aux's OPTICAL_FLOW) is refused: flow propagation must estimate flow to the keyframes
    with the checkpoint's estimator. A paper checkpoint accepts anything (it reads no flow)."""
    if not config.flow_guided:
        return
    from ..motion.external import EXTERNAL

    trained = config.motion
    fix = (f"estimate it with {describe_record(trained)} (OpticalFlowSequence in ComfyUI; `--flow "
           f"{trained.get('estimator')}` on the command line)")
    if record.get("estimator") == EXTERNAL:
        raise MagicPropError(f"{what} is external flow, which a flow-guided PropDPM cannot use (flow propagation "
                             f"estimates flow to the keyframes with the checkpoint's estimator): {fix}.")
    want = {k: trained[k] for k in ESTIMATOR_KEYS if k in trained}
    got = {k: record.get(k) for k in want}
    if got != want:
        raise MagicPropError(f"{what} was estimated with {describe_record(record)} but this flow-guided PropDPM was "
                             f"trained with {describe_record(trained)}: {fix}.")


def checkpoint_settings(config, weights: str | None = None, device: str = "cpu"):
    """The FlowSettings of the estimator a flow-guided checkpoint records (RAFT needs `weights`, the file's path)."""
    from ..motion.engine import FlowSettings

    if not config.flow_guided:
        raise MagicPropError("this PropDPM declares no motion inputs: it reads no flow (pass no flow settings).")
    record = {k: v for k, v in config.motion.items() if k in (*ESTIMATOR_KEYS, "weights")}
    return FlowSettings.from_record(record, weights, device)


def checkpoint_strategy(config) -> str:
    """The flow propagation strategy the checkpoint was trained with (the engine's default for older records)."""
    from ..motion.propagate import DEFAULT_STRATEGY

    return config.motion.get("strategy", DEFAULT_STRATEGY)


# -- building the inputs ---------------------------------------------------------------------------------------

def blank_filled(frames: torch.Tensor, filled: torch.Tensor, grey: float = GREY) -> torch.Tensor:
    """(K, H, W, 3) frames with each pixel moved to `grey` by its filled share (K, H, W) in [0, 1]."""
    f = filled.to(frames)[..., None]
    return frames * (1 - f) + grey * f


def valid_on_grid(filled: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) filled share -> (K, 1, h, w) carried share of each latent cell (area average)."""
    return F.interpolate((1 - filled.float())[:, None], size=tuple(grid), mode="area")


@dataclass
class CarriedFrames:
    """The edit carried to every frame by flow propagation, in pixels and as the model's motion inputs."""

    frames: torch.Tensor
    """(K, H, W, 3) in [0, 1]: flow propagation's frames (carried pixels and its fill), not blanked."""
    filled: torch.Tensor
    """(K, H, W) share of each pixel flow propagation filled (0 = carried)."""
    latents: torch.Tensor
    """(K, 4, h, w) unscaled VAE latents of the carried frames with the filled pixels blanked (the model's input)."""
    valid: torch.Tensor
    """(K, 1, h, w) carried share of each latent cell."""

    def attach(self, request: FrameRequest, level: float = 0.0) -> FrameRequest:
        """The request with frame k's carried latent, validity and motion noise level."""
        k = request.index
        return dataclasses.replace(request, carried_latent=self.latents[k : k + 1], carried_valid=self.valid[k : k + 1],
                                   motion_noise_level=level)


def encode_carried(frames: torch.Tensor, filled: torch.Tensor, encode: Encode, blank: bool = True,
                   chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents (K, 4, h, w), validity (K, 1, h, w)) of carried frames (K, H, W, 3) and their filled share, `chunk`
    frames at a time (nothing float32 at frame size is made for the whole clip)."""
    latents, valid = [], []
    for i in range(0, frames.shape[0], chunk):
        pixels, share = frames[i : i + chunk].float(), filled[i : i + chunk]
        latents.append(encode(blank_filled(pixels, share) if blank else pixels).float().cpu())
        valid.append(valid_on_grid(share, tuple(latents[-1].shape[-2:])))
    return torch.cat(latents), torch.cat(valid)


def carry_frames(frames: torch.Tensor, references: torch.Tensor, indices: Sequence[int], engine, encode: Encode,
                 motion=None, strategy: str | None = None, carry: str | None = None, window: int = 8,
                 mask: torch.Tensor | None = None, blank: bool = True,
                 callback: Callable[[int], None] | None = None, dtype: torch.dtype = torch.float32) -> CarriedFrames:
    """Flow propagation of the edited `references` (N, H, W, 3) at `indices` through the source `frames`
    (K, H, W, 3), float or uint8, with `engine` (and the clip's consecutive `motion` when already estimated; else
    estimated pair by pair), then encoded.

    strategy: flow propagation's (default: the engine's default); carry: what the flow carries (default: the
    engine's default, the residual carry; training carries "edit"). mask: the edited region (source kept outside).
    dtype: of the carried frames and filled shares kept for the run (float16 for long clips).
    """
    from ..motion.propagate import DEFAULT_CARRY, DEFAULT_STRATEGY, flow_propagate

    result = flow_propagate(frames.cpu(), references.float().cpu(), list(indices), engine, motion=motion,
                            strategy=strategy or DEFAULT_STRATEGY, window=window, mask=mask, callback=callback,
                            carry=carry or DEFAULT_CARRY, dtype=dtype)
    latents, valid = encode_carried(result.frames, result.filled, encode, blank)
    return CarriedFrames(result.frames, result.filled, latents, valid)


# -- running and compositing -----------------------------------------------------------------------------------

def composite_carried(decoded: torch.Tensor, carried: torch.Tensor, filled: torch.Tensor,
                      border: int | None = DEFAULT_BORDER) -> torch.Tensor:
    """The model's decoded frames (..., H, W, 3) under the carried frames: carried pixels (filled share < 0.5) kept
    exactly, the model's pixels where flow propagation filled, the carried pixels fading into the model's over
    `border` px inside the filled region (``magicprop.composite``). border None = no composite (the decoded frames)."""
    if border is None:
        return decoded
    return composite(decoded, carried.to(decoded), filled.to(decoded) < 0.5, int(border))


def feedback_for(feedback: str | None, border: int | None) -> str:
    """The feedback of a run: as given, or by default the composite when it is on and the model's latent when off."""
    if feedback is None:
        return DEFAULT_FEEDBACK if border is not None else "latent"
    check_feedback(feedback)
    return feedback


class CarriedDenoiser:
    """A FrameDenoiser that gives every request its frame's motion inputs; with feedback "composite" the frame it
    returns (which feeds the next frame and the LATENT output) is the pixel composite re-encoded."""

    def __init__(self, inner: FrameDenoiser, carried: CarriedFrames, level: float = 0.0,
                 feedback: str | None = None, encode: Encode | None = None, decode: Decode | None = None,
                 border: int | None = DEFAULT_BORDER) -> None:
        feedback = feedback_for(feedback, border)
        if feedback == "composite" and (encode is None or decode is None or border is None):
            raise MagicPropError("feedback 'composite' needs the VAE (encode and decode) and a composite border: "
                                 "turn the composite on, or feed the model's latent.")
        self.inner, self.carried, self.level = inner, carried, float(level)
        self.feedback, self.encode, self.decode, self.border = feedback, encode, decode, border

    def denoise(self, jobs: Sequence[Job]) -> torch.Tensor:
        """FrameDenoiser: the frames of a round made in one batched call with their motion inputs, then composited
        and re-encoded as one batch (each frame under its own carried pixels)."""
        latents = inner_round(jobs, lambda d, r: d.carried.attach(r, d.level))
        same = all(d.feedback == self.feedback and d.border == self.border and d.carried is self.carried
                   for d, _ in jobs)
        if not same:
            return torch.cat([d.fed_back([r.index], latent) for (d, r), latent in zip(jobs, latents)])
        return self.fed_back([r.index for _, r in jobs], torch.cat(latents))

    def fed_back(self, indices: list[int], latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) latents of frames `indices` -> what feeds their next frames (module docstring)."""
        if self.feedback == "latent":
            return latents
        image = composite_carried(self.decode(latents), self.carried.frames[indices], self.carried.filled[indices],
                                  self.border)
        return self.encode(image).to(latents)


def check_feedback(feedback: str) -> None:
    if feedback not in FEEDBACK:
        raise MagicPropError(f"feedback {feedback!r}: expected one of {list(FEEDBACK)} (what feeds the next frame).")


def flow_guided_model(config, unet, settings, strategy: str, carry: str = TRAIN_CARRY,
                      motion_noise_augmentation: float = 0.0):
    """(config, unet) of a flow-guided PropDPM made from a paper one: the new input channels start at zero (so it
    computes what the paper model computes), and the estimator it is to be trained with is recorded."""
    from .conditioning import FLOW_GUIDED_INPUTS
    from .unet import extend_inputs

    unet = extend_inputs(unet, FLOW_GUIDED_INPUTS)
    config = dataclasses.replace(
        config, unet_config={k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
        inputs=FLOW_GUIDED_INPUTS, motion=motion_record(settings, strategy, carry),
        motion_noise_augmentation=motion_noise_augmentation)
    return config, unet


def flow_guided_checkpoint(paper, out, settings, strategy: str = "guided", carry: str = TRAIN_CARRY,
                           motion_noise_augmentation: float = 0.0, edit: Callable[[Any], None] | None = None):
    """Write a flow-guided PropDPM made from the paper-layout checkpoint file `paper` (``flow_guided_model``: new
    channels zero; `edit(unet)` may change its weights first, e.g. seeded random for tests); returns `out`."""
    from .checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(paper)
    config, unet = flow_guided_model(ckpt.config, ckpt.build_unet(), settings, strategy, carry,
                                     motion_noise_augmentation)
    if edit is not None:
        with torch.no_grad():
            edit(unet)
    return save_checkpoint(out, config, unet, ckpt.build_adapter())
