"""OpticalFlowSequence: video frames -> the clip's consecutive flow in both directions (MAGICPROP_FLOW), estimated
once and used by FlowPropagate; plus a flow-colour preview."""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..magicprop.errors import MagicPropError
from ..magicprop.log import get_logger
from ..magicprop.motion.engine import DIS_PRESETS, ESTIMATORS, FlowEngine, FlowSettings, Motion
from ..magicprop.motion.propagate import KEYFRAME_FLOW_STRATEGIES
from .folders import NO_FLOW_WEIGHTS, flow_weight_files, flow_weights_path
from .types import Flow
from .validation import refusal

log = get_logger(__name__)

MAX_PREVIEWS = 16
"""Flow-colour images shown on the node (every n-th pair of a long clip); the IMAGE output has them all."""


def resolve_weights(name: str | None, estimator: str = "raft") -> str | None:
    """raft_weights (a file name of models/optical_flow) -> its path; None for an estimator that needs no weights.
    One line naming the widget and the fix otherwise."""
    if estimator != "raft":
        return None
    if not name or name == NO_FLOW_WEIGHTS:
        raise MagicPropError(
            f"raft_weights is {NO_FLOW_WEIGHTS!r} but estimator 'raft' needs a weights file: put a torchvision RAFT "
            "weights file (raft_small or raft_large, .safetensors or .pth) in models/optical_flow, refresh the page "
            "and pick it in raft_weights, or pick estimator 'dis'."
        )
    path = flow_weights_path(name)
    if path is None:
        raise MagicPropError(
            f"raft_weights {name!r} is not a file in models/optical_flow: put the torchvision RAFT weights file "
            "(.safetensors or .pth) there and pick it, or pick estimator 'dis'."
        )
    return path


def check_estimator(estimator: str | None, raft_weights: str | None) -> None:
    """OpticalFlowSequence's estimator and raft_weights, checked by the core's FlowEngine (known estimator, OpenCV
    importable, RAFT's file and torchvision) before anything runs; None is a widget turned into a socket (then the
    same checks run in execute)."""
    if estimator is None or (estimator == "raft" and raft_weights is None):
        return
    FlowEngine(FlowSettings(estimator=estimator, weights=resolve_weights(raft_weights, estimator)))


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


def frame_callback(total: int):
    """A per-item callback: one ComfyUI progress step, and a stop when the user cancels the run."""
    bar = comfy.utils.ProgressBar(max(total, 1))

    def on_item(done: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(min(done, total), total)

    return on_item


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
                               tooltip="torchvision RAFT weights (small or large, .safetensors or .pth) in "
                                       "models/optical_flow; only for estimator raft."),
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


def counted(on_done):
    """flow_propagate's per-frame callback (a frame index) -> a count of frames done for the progress bar."""
    done = [0]

    def on_frame(_index: int) -> None:
        done[0] += 1
        on_done(done[0])

    return on_frame
