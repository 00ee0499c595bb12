"""OpticalFlowSequence: video frames -> the clip's consecutive flow in both directions (MAGICPROP_FLOW), estimated
once and used by FlowPropagate; plus a flow-colour preview."""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ...magicprop.errors import MagicPropError
from ...magicprop.log import get_logger
from ...magicprop.motion.engine import DIS_PRESETS, ESTIMATORS, FlowEngine, FlowSettings
from ...magicprop.motion.raft import WEIGHTS_FILE
from ..common.flow_inputs import placed, resolve_weights
from ..common.folders import NO_FLOW_WEIGHTS, flow_weight_files
from ..common.progress import frame_callback
from ..common.types import Flow
from ..common.validation import refusal

log = get_logger(__name__)

MAX_PREVIEWS = 16
"""Flow-colour images shown on the node (every n-th pair of a long clip); the IMAGE output has them all."""


def check_estimator(estimator: str | None, raft_weights: str | None) -> None:
    """OpticalFlowSequence's estimator and raft_weights, checked by the core's FlowEngine (known estimator, OpenCV
    importable, RAFT's file and torchvision) before anything runs; None is a widget turned into a socket (then the
    same checks run in execute)."""
    if estimator is None or (estimator == "raft" and raft_weights is None):
        return
    FlowEngine(FlowSettings(estimator=estimator, weights=resolve_weights(raft_weights, estimator)))


def flow_colours(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, h, w) flow -> (N, h, w, 3) IMAGE in the Middlebury colour wheel (torchvision.utils.flow_to_image)."""
    from torchvision.utils import flow_to_image

    return flow_to_image(flow.float()).permute(0, 2, 3, 1).float() / 255.0


class OpticalFlowSequence(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpticalFlowSequence",
            display_name="Optical Flow Sequence (MagicProp)",
            category="MagicProp",
            description="Forward and backward optical flow between consecutive frames, with a per-pixel validity "
                        "(forward-backward check), at a working resolution. Estimated once, used by FlowPropagate. "
                        "DIS, Farneback and DualTVL1 come from OpenCV; RAFT from torchvision with a local weights "
                        "file in models/optical_flow.",
            inputs=[
                io.Image.Input("frames", tooltip="The video frames (K, H, W, 3), K >= 2."),
                io.Combo.Input("estimator", options=sorted(ESTIMATORS), default="dis",
                               tooltip="dis: fast and robust (default); farneback; dualtvl1 (needs opencv-contrib); "
                                       "raft: a learnt model, needs raft_weights."),
                io.Combo.Input("dis_preset", options=list(DIS_PRESETS), default="medium",
                               tooltip="DIS speed/quality preset (ultrafast, fast, medium); the others ignore it."),
                io.Combo.Input("raft_weights", options=[NO_FLOW_WEIGHTS, *flow_weight_files()],
                               default=NO_FLOW_WEIGHTS,
                               tooltip=f"A {WEIGHTS_FILE} in models/optical_flow; only for "
                                       "estimator raft."),
                io.Int.Input("work_size", default=512, min=64, max=4096, step=8,
                             tooltip="Long side of the resolution flow is estimated at (larger frames are "
                                     "downscaled for it, never upscaled)."),
                io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="Frame pairs per batch."),
            ],
            outputs=[
                Flow.Output(display_name="flow", tooltip="Forward and backward flow of the K-1 consecutive pairs, "
                                                         "their validity, and the estimator's settings."),
                io.Image.Output(display_name="preview", tooltip="Forward flow of each pair in colour (hue = "
                                                                "direction, saturation = speed), K-1 images."),
            ],
        )

    @classmethod
    def validate_inputs(cls, estimator, raft_weights) -> bool | str:
        return refusal(lambda: check_estimator(estimator, raft_weights))

    @classmethod
    def execute(cls, frames: torch.Tensor, estimator: str, dis_preset: str, raft_weights: str, work_size: int,
                batch_size: int) -> io.NodeOutput:
        if frames.ndim != 4 or frames.shape[0] < 2:
            raise MagicPropError(f"frames has shape {tuple(frames.shape)}: expected at least 2 video frames "
                                 "(K, H, W, 3).")
        weights = resolve_weights(raft_weights, estimator)
        settings = FlowSettings(estimator=estimator, preset=dis_preset, weights=weights, work_size=work_size,
                                device=str(comfy.model_management.unet_offload_device()))
        engine = FlowEngine(settings)
        with placed(engine):
            motion = engine.consecutive(frames[..., :3].cpu(), batch=batch_size,
                                        callback=frame_callback(frames.shape[0] - 1))
        preview = flow_colours(motion.forward)
        step = max(1, -(-preview.shape[0] // MAX_PREVIEWS))
        out = preview.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(motion, out, ui=ui.PreviewImage(preview[::step], cls=cls))


