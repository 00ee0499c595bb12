"""FlowPropagate: edited reference(s) carried through the clip along its optical flow (EbSynth-style, no model)."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ...magicprop.composite import over_frames, premultiplied
from ...magicprop.errors import MagicPropError
from ...magicprop.motion.engine import FlowEngine, FlowSettings, Motion
from ...magicprop.motion.external import DIRECTIONS, check_external_flow, external_motion
from ...magicprop.motion.propagate import (
    CARRIES,
    DEFAULT_CARRY,
    DEFAULT_FILL,
    DEFAULT_STRATEGY,
    FILLS,
    STRATEGIES,
    check_mask,
    flow_propagate,
)
from ..common.flow_inputs import check_flow, keyframe_engine, placed
from ..common.progress import steps_callback
from ..common.types import ExternalFlow, Flow
from ..common.validation import UNCONNECTED, keyframes, parse_keyframe_indices, refusal


def check_widgets(keyframe_indices: str | None, flow, external_flow) -> None:
    """Every FlowPropagate error its widgets and connections decide alone (validate_inputs: before anything runs);
    None is a widget turned into a socket, UNCONNECTED an optional socket left empty."""
    if keyframe_indices is not None:
        parse_keyframe_indices(keyframe_indices)
    if (flow is UNCONNECTED) == (external_flow is UNCONNECTED):
        state = "neither is" if flow is UNCONNECTED else "both are"
        raise MagicPropError(f"flow and external_flow: {state} connected: connect exactly one, OpticalFlowSequence's "
                             "flow of the frames to flow or controlnet_aux's OPTICAL_FLOW to external_flow.")


class FlowPropagate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FlowPropagate",
            display_name="Flow Propagate (MagicProp)",
            category="MagicProp",
            description="Carries the edited reference(s) to every frame along the clip's optical flow, forward and "
                        "backward from each edited frame (no pretrained model). What the flow cannot see (occluded, "
                        "revealed) is the source frame rendered in the edit's look, learned from the edited frame.",
            inputs=[
                io.Image.Input("frames", tooltip="The source video frames (K, H, W, 3), as given to "
                                                 "OpticalFlowSequence."),
                io.Image.Input("reference", tooltip="The edited frame (one image, the frames' size), or several edited "
                                                    "frames (a batch) with keyframe_indices. An image with alpha "
                                                    "(JoinImageWithAlpha: a paint layer) is laid over the frame it "
                                                    "edits."),
                io.Int.Input("reference_index", default=0, min=0, max=1_000_000,
                             tooltip="Which frame of the clip was edited (0 = first)."),
                io.Combo.Input("strategy", options=sorted(STRATEGIES), default=DEFAULT_STRATEGY,
                               tooltip="direct: flow from each frame straight to its keyframe; chain: frame to frame; "
                                       "accumulate: consecutive flow composed to the keyframe; mixed: the best valid "
                                       "of direct and accumulate per pixel; guided: flow to the keyframe refined from "
                                       f"the composed guess. Default {DEFAULT_STRATEGY} (measured best)."),
                Flow.Input("flow", optional=True, tooltip="OpticalFlowSequence's flow of the same frames."),
                ExternalFlow.Input("external_flow", optional=True,
                                   tooltip="Instead of flow: controlnet_aux's OPTICAL_FLOW (K-1, H, W, 2) in pixels, "
                                           "e.g. from its Unimatch node; see flow_direction. The other direction is "
                                           "estimated from frames with DIS for the occlusion check. It cannot be "
                                           "extended to the keyframes, so the direct, mixed and guided strategies "
                                           "use accumulate with it (logged)."),
                io.Combo.Input("flow_direction", options=list(DIRECTIONS), default="forward", optional=True,
                               tooltip="Direction of external_flow: forward = frame k to k+1 (controlnet_aux's "
                                       "default), backward = k+1 to k (its backward_flow option)."),
                io.String.Input("keyframe_indices", default="", optional=True,
                                tooltip="With several edited frames in reference: their frame numbers, e.g. \"0, 60, "
                                        "119\". Each frame is carried from its two nearest keyframes: per pixel the "
                                        "nearer one's edit where the flow carries it, else the other's."),
                io.Int.Input("keyframe_window", default=8, min=0, max=1000, optional=True,
                             tooltip="Frames around the midpoint of two keyframes over which the nearer one changes "
                                     "(the two are blended there)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where the edit applies (1 mask or one per frame); outside it the source frames "
                                      "are kept."),
                io.Combo.Input("carry", options=list(CARRIES), default=DEFAULT_CARRY, optional=True,
                               tooltip="residual: each frame's own pixels through the edit's colour mapping, plus the "
                                       "part of the edit the mapping cannot explain carried by the flow (sharp "
                                       "detail, exact colour edits); edit: the edited pixels themselves carried. "
                                       f"Default {DEFAULT_CARRY} (measured best)."),
                io.Combo.Input("fill", options=list(FILLS), default=DEFAULT_FILL, optional=True,
                               tooltip="What the pixels the flow cannot see get (the filled mask): learned = the "
                                       "frame's own content rendered the way the edit renders it, by a small network "
                                       "trained on the reference pair, followed along the flow from frame to frame "
                                       "so it does not flicker (several seconds per keyframe; an edit that "
                                       "does not follow from the content, a colour edit or a decal, keeps the colour "
                                       "fill); colour = the frame through the edit's colour mapping; synthesis = "
                                       "patches of the edited reference placed where the frame's own content guides "
                                       "them, made once and then carried along the flow (slower: about 0.25-1 s per "
                                       f"frame on a CPU). Default {DEFAULT_FILL}."),
                # no control after generate: a seed the frontend randomized would redo the whole propagation at
                # every queue and change the filled pixels each time
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, optional=True,
                             tooltip="The learned fill's training and synthesis's random search (the same seed "
                                     "gives the same frames; it stays as set between runs)."),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="All K frames with the edit carried along the flow."),
                io.Mask.Output(display_name="filled", tooltip="Pixels the flow could not carry, filled from the "
                                                              "source frame in the edit's look (1 = filled)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, frames, keyframe_indices="", flow=UNCONNECTED, external_flow=UNCONNECTED) -> bool | str:
        # frames (a required socket, so always in the prompt) is named for the host to attach the refusal to: with
        # both flows unconnected and keyframe_indices unset, no other named input is there to carry it
        return refusal(lambda: check_widgets(keyframe_indices, flow, external_flow))

    @classmethod
    def execute(cls, frames: torch.Tensor, reference: torch.Tensor, reference_index: int, strategy: str,
                flow: Motion | None = None, external_flow: torch.Tensor | None = None,
                flow_direction: str = "forward", keyframe_indices: str = "", keyframe_window: int = 8,
                mask: torch.Tensor | None = None, carry: str = DEFAULT_CARRY, fill: str = DEFAULT_FILL,
                seed: int = 0) -> io.NodeOutput:
        if frames.ndim != 4 or frames.shape[0] < 1:
            raise MagicPropError(f"frames has shape {tuple(frames.shape)}: expected video frames (K, H, W, 3).")
        k, h, w = frames.shape[:3]
        if reference.ndim != 4 or tuple(reference.shape[1:3]) != (h, w):
            raise MagicPropError(f"reference has shape {tuple(reference.shape)}: expected edited frame(s) of the "
                                 f"frames' size (N, {h}, {w}, 3); edit the frame at the video's size.")
        keys = keyframes(reference_index, keyframe_indices, reference.shape[0], k)
        if mask is not None and tuple(mask.shape[-2:]) == (64, 64) != (h, w) and not bool(mask.any()):
            raise MagicPropError("mask is an empty 64x64 mask, what LoadImage gives for an image without an alpha "
                                 "channel: paint the mask into the image's alpha, or load a black-and-white mask "
                                 "image and turn it into a mask with ImageToMask.")
        masks = check_mask(None if mask is None else mask.float().cpu(), (k, h, w), keys)  # before the flow's work
        if reference.shape[-1] == 4:  # a paint layer with transparency (JoinImageWithAlpha): laid over its frame
            reference = over_frames(premultiplied(reference.float().cpu()), frames, keys)
        if external_flow is not None:
            check_external_flow(external_flow, k, (h, w))
            # the missing direction estimated from the frames by the default engine: occlusions are then found
            flow = external_motion(external_flow, flow_direction, (h, w), frames=frames[..., :3].float().cpu(),
                                   engine=FlowEngine(FlowSettings()))
        elif flow is not None:
            check_flow(flow, frames)
        engine, strategy = keyframe_engine(flow, strategy) if flow is not None else (None, strategy)
        frames = frames[..., :3].float().cpu()
        with placed(engine):
            result = flow_propagate(frames, reference[..., :3].float().cpu(), keys, engine, motion=flow,
                                    strategy=strategy, window=keyframe_window, mask=masks,
                                    progress=steps_callback(), carry=carry, fill=fill, seed=seed,
                                    device=comfy.model_management.get_torch_device())
        device = comfy.model_management.intermediate_device()
        return io.NodeOutput(result.frames.to(device), result.filled.float().to(device))
