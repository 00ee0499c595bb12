"""What a PropDPM checkpoint records about itself (README, "Checkpoint format").

Everything inference needs to reproduce training is here, so that the loaders can infer settings instead of asking
the user, and refuse a file that does not fit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import CheckpointError, MagicPropError
from .adapter import AdapterConfig
from .clip import ClipSpec
from .conditioning import PAPER_INPUTS, check_inputs, has_motion
from .schedule import ScheduleConfig

FORMAT_NAME = "magicprop.propdpm"
LAYOUT_FIELDS = ("inputs", "motion", "motion_noise_augmentation")
"""Fields of the flow-guided layout; a paper-layout checkpoint leaves them out (their defaults describe it)."""
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GapDistribution:
    """How far the previous frame is from the target in training triplets (MagicProp section 3.3.3).

    Inference steps one frame at a time, forward and backward, so the distribution includes gap 1 and both
    directions; larger gaps teach larger motions.
    """

    gaps: tuple[int, ...] = (1, 2, 3, 4)
    weights: tuple[float, ...] = (0.55, 0.2, 0.15, 0.1)
    backward: float = 0.5
    """Probability that the previous frame comes after the target in time (backward propagation)."""

    def __post_init__(self) -> None:
        if not self.gaps or len(self.gaps) != len(self.weights) or min(self.gaps) < 1 or min(self.weights) < 0:
            raise CheckpointError(
                f"gap distribution gaps={self.gaps} weights={self.weights}: expected positive gaps with one "
                "non-negative weight each, e.g. gaps (1, 2, 3, 4) weights (0.55, 0.2, 0.15, 0.1)."
            )
        if not 0.0 <= self.backward <= 1.0:
            raise CheckpointError(f"gap distribution backward={self.backward}: expected a probability in [0, 1].")


@dataclass(frozen=True)
class DepthSpec:
    """The depth convention the model was trained with (README, "How it works" and "Checkpoint format")."""

    convention: str = "inverse_depth"
    """Relative inverse depth (disparity): larger = nearer."""
    near: float = 1.0
    """Nearest value after normalisation; the farthest is 0."""
    normalisation: str = "per_clip"
    """One affine normalisation to [0, 1] for the whole clip, after per-frame robust alignment."""
    model: str = "unknown"
    """The depth estimator used to make training depth (e.g. Intel/dpt-hybrid-midas, or "synthetic")."""


@dataclass(frozen=True)
class PropDPMConfig:
    """Metadata of one PropDPM checkpoint. Field docs say why each one is recorded."""

    unet_config: dict[str, Any]
    """diffusers UNet2DConditionModel config (in_channels 4 + the inputs' channels): rebuilds the UNet on both
    backends."""
    adapter: AdapterConfig = AdapterConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    """Prediction type (v) and zero terminal SNR: ComfyUI's model config and the samplers follow them."""
    latent_scale: float = 0.18215
    """VAE latent -> UNet input space; applied to the noisy latent, the previous latent and the adapter input."""
    clip: ClipSpec = ClipSpec()
    """Which CLIP vision model made the appearance tokens; checked at load time."""
    appearance_dropout: float = 0.1
    """Training probability of replacing the appearance tokens by the null (enables guidance)."""
    null_tokens: str = "zeros"
    """The unconditional appearance: zeros of the same shape as the adapter's output."""
    gap: GapDistribution = GapDistribution()
    prev_noise_augmentation: float = 0.0
    """Std of the noise mixed into the previous-frame latent in training; inference uses the same level."""
    previous_frame: bool = True
    """False for the no-previous-frame baseline: its previous-latent channels are always zero."""
    resolution: int = 256
    """Training frame side in pixels (square centre crops)."""
    depth: DepthSpec = DepthSpec()
    vae: dict[str, Any] = field(default_factory=dict)
    """The VAE the latents came from (name, scaling factor); informational."""
    training: dict[str, Any] = field(default_factory=dict)
    """How the weights were made (source, steps, data); informational."""
    inputs: tuple[str, ...] = PAPER_INPUTS
    """The UNet's extra input channels by name, in channel order (``magicprop.propdpm.conditioning.INPUTS``): the
    paper's layout by default, so files written before this field load and run as they did."""
    motion: dict[str, Any] = field(default_factory=dict)
    """Flow-guided checkpoints: the estimator the motion inputs were made with in training (``FlowSettings.record()``)
    plus the flow propagation `strategy` and training `carry`; inference refuses flow from another estimator. Empty
    for the paper's layout."""
    motion_noise_augmentation: float = 0.0
    """Largest std of the noise mixed into the carried latent in training (the level drawn per sample is fed to the
    model as the motion_noise_level input); inference feeds level 0."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        try:
            names = check_inputs(self.inputs, "checkpoint inputs")
        except MagicPropError as e:
            raise CheckpointError(str(e)) from None
        object.__setattr__(self, "inputs", names)
        if has_motion(names) and not self.motion.get("estimator"):
            raise CheckpointError(
                f"checkpoint inputs {list(names)} declare motion channels but its `motion` record names no flow "
                "estimator: the trainer records the one it used; re-export the checkpoint with this MagicProp."
            )
        if not 0.0 <= self.motion_noise_augmentation < 1.0:
            raise CheckpointError(f"checkpoint motion_noise_augmentation={self.motion_noise_augmentation}: expected "
                                  "a level in [0, 1).")

    @property
    def flow_guided(self) -> bool:
        """Whether the checkpoint declares motion inputs (a run then needs source frames and their flow)."""
        return has_motion(self.inputs)

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        if not self.flow_guided:  # the paper's layout is written as before these fields existed (older readers load it)
            for name in LAYOUT_FIELDS:
                data.pop(name)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PropDPMConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"the checkpoint's magicprop metadata is not valid JSON ({e}).") from None
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format_version={version!r}: this MagicProp reads version {FORMAT_VERSION}. "
                + ("Update MagicProp to load it." if isinstance(version, int) and version > FORMAT_VERSION else
                   "Re-export the checkpoint with this MagicProp.")
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"checkpoint metadata has unknown fields {unknown}: made by another MagicProp?")
        try:
            data["adapter"] = AdapterConfig.from_dict(data.get("adapter", {}))
            data["schedule"] = ScheduleConfig.from_dict(data.get("schedule", {}))
            data["clip"] = ClipSpec.from_dict(data.get("clip", {}))
            gap = data.get("gap", {})
            data["gap"] = GapDistribution(**{k: tuple(v) if isinstance(v, list) else v for k, v in gap.items()})
            data["depth"] = DepthSpec(**data.get("depth", {}))
            if "inputs" in data:
                data["inputs"] = tuple(data["inputs"])
            return cls(**data)
        except TypeError as e:
            raise CheckpointError(f"checkpoint metadata does not match this MagicProp's format: {e}.") from None
