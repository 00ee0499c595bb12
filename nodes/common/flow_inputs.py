"""The MAGICPROP_FLOW input as the nodes that take it use it (FlowPropagate, AutoregressivePropagate, FlowRefine):
its check against the frames, the engine that extends it to keyframes, RAFT weights from models/optical_flow, and
RAFT placed on ComfyUI's device."""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import torch

from ...magicprop.errors import MagicPropError
from ...magicprop.log import get_logger
from ...magicprop.motion.engine import ESTIMATORS, FlowEngine, FlowSettings, Motion
from ...magicprop.motion.propagate import KEYFRAME_FLOW_STRATEGIES
from ...magicprop.motion.raft import WEIGHTS_FILE
from .folders import NO_FLOW_WEIGHTS, flow_weights_path

log = get_logger(__name__)


def resolve_weights(name: str | None, estimator: str = "raft") -> str | None:
    """raft_weights (a file name of models/optical_flow) -> its path; None for an estimator that needs no weights.
    One line naming the widget and the fix otherwise."""
    if estimator != "raft":
        return None
    if not name or name == NO_FLOW_WEIGHTS:
        raise MagicPropError(
            f"raft_weights is {NO_FLOW_WEIGHTS!r} but estimator 'raft' needs a weights file: put a {WEIGHTS_FILE} "
            "in models/optical_flow, refresh the page and pick it in raft_weights, or pick estimator 'dis'."
        )
    path = flow_weights_path(name)
    if path is None:
        raise MagicPropError(
            f"raft_weights {name!r} is not a file in models/optical_flow: put the {WEIGHTS_FILE} there and pick "
            "it, or pick estimator 'dis'."
        )
    return path


class placed:
    """RAFT's network placed on ComfyUI's device for the duration of a `with` block, through a ModelPatcher (ComfyUI
    frees memory for it and offloads it after); the engine follows wherever its model's weights are. A no-op for the
    OpenCV estimators."""

    def __init__(self, engine: FlowEngine | None) -> None:
        self.engine, self.patcher = engine, None

    def __enter__(self) -> FlowEngine | None:
        if self.engine is not None and self.engine.settings.estimator == "raft":
            holder = torch.nn.Module()  # ModelPatcher sets attributes the estimator object should not get
            holder.net = self.engine.estimator.model
            self.patcher = comfy.model_patcher.ModelPatcher(
                holder, load_device=comfy.model_management.get_torch_device(),
                offload_device=comfy.model_management.unet_offload_device())
            comfy.model_management.load_models_gpu([self.patcher])
        return self.engine

    def __exit__(self, *exc) -> None:
        if self.patcher is not None:
            self.patcher.detach()


FALLBACK_STRATEGY = "accumulate"
"""What flow that cannot be extended to keyframes (external flow) is propagated with."""


def check_flow(motion, frames: torch.Tensor) -> None:
    """The MAGICPROP_FLOW input must come from these frames."""
    if not isinstance(motion, Motion):
        raise MagicPropError(f"flow is a {type(motion).__name__}: connect the flow output of OpticalFlowSequence.")
    k, h, w = frames.shape[:3]
    if len(motion) != k - 1 or tuple(motion.frame_size) != (h, w):
        fh, fw = motion.frame_size
        raise MagicPropError(
            f"flow was estimated from {len(motion) + 1} frames of {fw}x{fh} but frames has {k} frames of {w}x{h}: "
            "connect the same frames to OpticalFlowSequence and FlowPropagate."
        )


def keyframe_engine(motion: Motion, strategy: str) -> tuple[FlowEngine | None, str]:
    """The engine that extends `motion` to keyframes (the estimator it records, same settings), and the strategy to
    run; flow from elsewhere cannot be extended, so such runs fall back to accumulated flow (logged)."""
    record = motion.settings
    if record.get("estimator") not in ESTIMATORS:
        if strategy in KEYFRAME_FLOW_STRATEGIES:
            log.warning("FlowPropagate: flow from %s cannot be extended to the keyframes that strategy %r needs; "
                        "using %r (consecutive flow composed to the keyframe) instead.",
                        record.get("estimator"), strategy, FALLBACK_STRATEGY)
            strategy = FALLBACK_STRATEGY
        return None, strategy
    weights = resolve_weights(record.get("weights"), record["estimator"])
    settings = FlowSettings.from_record(record, weights, device=str(comfy.model_management.unet_offload_device()))
    return FlowEngine(settings), strategy
