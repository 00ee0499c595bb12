"""AutoregressivePropagate: edited references carried through the clip, frame by frame, with ComfyUI's samplers."""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ...magicprop.composite import DEFAULT_BORDER
from ...magicprop.errors import MagicPropError
from ...magicprop.log import get_logger
from ...magicprop.propdpm.depth import depth_from_image
from ...magicprop.propdpm.motion_inputs import (
    CarriedFrames,
    check_flow_record,
    checkpoint_strategy,
    composite_carried,
)
from ...magicprop.propdpm.run import (
    RunInputs,
    carried_for_run,
    depth_on_grid,
    generated_frames,
    latent_masks,
    propagate_run,
    run_inputs,
)
from ..common.conditioning import check_control_hints
from ..common.flow_inputs import check_flow, keyframe_engine, placed
from ..common.preview import FramePreviews
from ..common.progress import ProgressReporter, counted, frame_callback
from ..common.types import APPEARANCE_KEY, Flow
from ..common.validation import UNCONNECTED, check_reference, keyframes, parse_keyframe_indices, refusal
from .denoiser import ComfyFrameDenoiser
from .model import PropDPMModel

log = get_logger(__name__)


def node_run_inputs(vae, depth: torch.Tensor, reference: torch.Tensor, keys: list[int],
                    reference_depth: torch.Tensor | None = None, carried: CarriedFrames | None = None) -> RunInputs:
    """The run's inputs from the node's: references encoded with ComfyUI's VAE, the DepthSequence clip depth and the
    reference depth (placed by the core) on the latent grid, and a flow-guided checkpoint's carried frames."""
    ref_latents = vae.encode(reference[..., :3]).float()  # (N, 4, h, w), unscaled
    depth_lat = depth_on_grid(depth, tuple(ref_latents.shape[-2:]))  # (K, 1, h, w), aligned by DepthSequence
    raw = None if reference_depth is None else depth_from_image(reference_depth)
    return run_inputs(ref_latents, keys, depth_lat, raw, carried)


def node_carried(config, vae, flow, source_frames: torch.Tensor | None, reference: torch.Tensor, keys: list[int],
                 masks: torch.Tensor | None, window: int) -> CarriedFrames | None:
    """A flow-guided checkpoint's motion inputs: the references carried through the source frames by flow
    propagation with the flow's own estimator (the checkpoint's, checked before), encoded with ComfyUI's VAE."""
    if not config.flow_guided:
        return None
    engine, _ = keyframe_engine(flow, checkpoint_strategy(config))
    with placed(engine):
        return carried_for_run(config, source_frames[..., :3].float().cpu(), reference[..., :3].float().cpu(), keys,
                               lambda x: vae.encode(x).float(), engine, flow, window=window,
                               mask=None if masks is None else masks.float().cpu(),
                               callback=counted(frame_callback(source_frames.shape[0])))


def check_flow_inputs(config, flow, source_frames) -> None:
    """A flow-guided checkpoint needs the source frames and their flow from its own estimator (one line each)."""
    if not config.flow_guided:
        return
    if flow is None or source_frames is None:
        missing = [n for n, v in (("flow", flow), ("source_frames", source_frames)) if v is None]
        raise MagicPropError(
            f"this PropDPM is flow-guided but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            "connected: connect the source video frames to "
            "source_frames and OpticalFlowSequence's flow of those frames to flow (estimator "
            f"{config.motion.get('estimator')!r}, as the checkpoint was trained)."
        )
    check_flow(flow, source_frames)
    check_flow_record(config, flow.settings, "flow (OpticalFlowSequence)")


def check_inputs(model, positive, negative, depth, reference, keys, reference_depth, mask, source_frames,
                 flow=None) -> None:
    """Every input error this node can see, raised before any encoding or sampling."""
    if not isinstance(getattr(model, "model", None), PropDPMModel):
        raise MagicPropError(
            f"model is a {type(getattr(model, 'model', model)).__name__}, not PropDPM: connect the MODEL output of "
            "Load PropDPM (LoRA loaders in between are fine)."
        )
    for name, cond in (("positive", positive), ("negative", negative)):
        if not cond or any(APPEARANCE_KEY not in d for _, d in cond):
            raise MagicPropError(
                f"{name} is not appearance conditioning: connect the {name} output of AppearanceAdapterEncode "
                "(text conditioning, e.g. from CLIP Text Encode, cannot drive PropDPM)."
            )
        if any(t.shape[0] not in (1, len(keys)) for t, _ in cond):
            raise MagicPropError(
                f"{name} holds the appearance of {cond[0][0].shape[0]} references but {len(keys)} reference images "
                "are given: encode the same reference batch with AppearanceAdapterEncode."
            )
    k, h, w = depth.shape[:3]
    if reference.shape[1:3] != (h, w):
        raise MagicPropError(
            f"reference is {reference.shape[2]}x{reference.shape[1]} but the depth frames are {w}x{h}: edit the "
            "frame at the video's size."
        )
    if reference_depth is not None and (reference_depth.ndim != 4 or reference_depth.shape[1:3] != (h, w)
                                        or reference_depth.shape[0] != reference.shape[0]):
        raise MagicPropError(
            f"reference_depth has shape {tuple(reference_depth.shape)}: expected one depth image per reference "
            f"({reference.shape[0]}, {h}, {w}, 3)."
        )
    if mask is not None:
        m = mask if mask.ndim == 3 else mask[None]
        if m.shape[0] not in (1, k) or m.shape[1:] != (h, w):
            raise MagicPropError(
                f"mask has shape {tuple(mask.shape)}: expected 1 or {k} masks of {w}x{h} (one for all frames, or "
                "one per frame)."
            )
    config = model.model.model_config.magicprop
    if source_frames is not None and source_frames.shape[:3] != (k, h, w):
        raise MagicPropError(
            f"source_frames has {source_frames.shape[0]} frames of {source_frames.shape[2]}x"
            f"{source_frames.shape[1]} but depth has {k} frames of {w}x{h}: expected the same video."
        )
    if not config.flow_guided and (flow is not None or (source_frames is not None and mask is None)):
        log.warning("AutoregressivePropagate: this PropDPM declares no motion inputs, so flow and source_frames "
                    "(without a mask) are not used; a flow-guided PropDPM uses them.")
    check_flow_inputs(config, flow, source_frames)
    check_control_hints([positive, negative], k)


def check_widgets(keyframe_indices: str | None, mask, source_frames) -> None:
    """Every AutoregressivePropagate error its widgets and connections decide alone (validate_inputs: before
    anything runs); None is a widget turned into a socket, UNCONNECTED an optional socket left empty."""
    if keyframe_indices is not None:
        parse_keyframe_indices(keyframe_indices)
    if mask is not UNCONNECTED and source_frames is UNCONNECTED:
        raise MagicPropError("mask is connected but source_frames is not: connect the source video frames to "
                             "source_frames (kept outside the mask), or disconnect mask to edit every pixel.")


def select_reference(conditioning: list, i: int) -> list:
    """The conditioning of reference i of a batch (a single reference's serves every keyframe)."""
    return [[t[i : i + 1] if t.shape[0] > 1 else t, d] for t, d in conditioning]


def check_image_output_unused(prompt: dict | None, node_id: str | None) -> None:
    """With decode off the IMAGE output is empty: refuse a graph that reads it, before any work."""
    if not prompt or node_id is None:
        return
    for other_id, node in prompt.items():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == 1:
                raise MagicPropError(
                    f"decode is off but node {other_id} ({node.get('class_type')}) reads the IMAGE output through "
                    f"{name!r}: turn decode on, or decode the LATENT output with a VAE Decode node."
                )


class AutoregressivePropagate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AutoregressivePropagate",
            display_name="Autoregressive Propagate (MagicProp)",
            category="MagicProp",
            description="Propagates the edited reference(s) through the video with PropDPM, one frame at a time, "
                        "forward and backward from each edited frame, following the clip's depth.",
            inputs=[
                io.Model.Input("model", tooltip="PropDPM from Load PropDPM (LoRAs may be applied)."),
                io.Conditioning.Input("positive", tooltip="AppearanceAdapterEncode's positive (ControlNets may be "
                                                          "applied; a K-frame hint gives frame k its own hint)."),
                io.Conditioning.Input("negative", tooltip="AppearanceAdapterEncode's negative (used when cfg > 1)."),
                io.Vae.Input("vae", tooltip="The VAE: encodes the reference (and source frames), decodes the result."),
                io.Image.Input("depth", tooltip="Aligned clip depth from DepthSequence (K frames)."),
                io.Image.Input("reference", tooltip="The edited frame (one image, the frames' size), or several edited "
                                                    "frames (a batch) with keyframe_indices."),
                io.Int.Input("reference_index", default=0, min=0, max=1_000_000,
                             tooltip="Which frame of the clip was edited (0 = first)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Frame k's noise depends on (seed, k) only."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps per frame."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Appearance guidance; 1 = off, as in the paper."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                               tooltip="Sampler (euler or ddim reproduce the training-time DDIM)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="Scheduler; simple gives trailing timesteps, right for zero-terminal-SNR."),
                io.Image.Input("reference_depth", optional=True,
                               tooltip="Depth of each edited reference when the edit changed shapes (default: the "
                                       "depth of that frame)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where to edit (1 mask or one per frame); outside it the source is kept."),
                io.Image.Input("source_frames", optional=True,
                               tooltip="The source video frames: kept outside the mask (needed with a mask), and "
                                       "carried along with the edit by a flow-guided PropDPM (needed by one)."),
                io.Boolean.Input("pixel_composite", default=True, optional=True,
                                 tooltip="With a mask: copy the source pixels exactly outside it in the images "
                                         "output (the latent output keeps them to latent precision)."),
                io.Boolean.Input("frame_previews", default=True, optional=True,
                                 tooltip="Show each finished frame in the node's filmstrip (a cheap latent preview)."),
                io.Boolean.Input("decode", default=True, optional=True,
                                 tooltip="Also decode the frames into the IMAGE output. Turn off when only the LATENT "
                                         "output is used (e.g. VAE Decode (Tiled) downstream): saves time and memory."),
                io.String.Input("keyframe_indices", default="", optional=True,
                                tooltip="With several edited frames in reference: their frame numbers, e.g. \"0, 60, "
                                        "119\". Each frame comes from its nearest keyframe."),
                io.Int.Input("keyframe_window", default=8, min=0, max=1000, optional=True,
                             tooltip="Frames over which the chains of two keyframes are blended where they meet."),
                io.Float.Input("anchor_strength", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Drift control: pull each frame's latent channel statistics towards the "
                                       "reference's (inside the mask if one is given); 0 = off."),
                Flow.Input("flow", optional=True,
                           tooltip="OpticalFlowSequence's flow of source_frames, for a flow-guided PropDPM (needed by "
                                   "one; its estimator must be the one the checkpoint was trained with)."),
                io.Boolean.Input("carried_composite", default=True, optional=True,
                                 tooltip="Flow-guided PropDPM: keep the pixels the flow carried exactly in the IMAGE "
                                         "output and take the model's pixels where flow propagation filled, blended "
                                         "over composite_border px."),
                io.Int.Input("composite_border", default=DEFAULT_BORDER, min=0, max=256, optional=True,
                             tooltip="Pixels over which the carried pixels fade into the model's inside the filled "
                                     "regions (0 = hard edge)."),
                io.Int.Input("max_batch", default=0, min=0, max=1024, optional=True,
                             tooltip="Frames per sampler call. The chains (forward and backward from a mid-clip "
                                     "reference, those of every keyframe) advance together and their next frames are "
                                     "sampled as one batch: 0 = all of them, 1 = one frame at a time (least memory). "
                                     "With euler or ddim the result does not depend on it; samplers that draw step "
                                     "noise (ancestral, SDE) share one draw per batch."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            outputs=[
                io.Latent.Output(display_name="LATENT",
                                 tooltip="All K frames (the references in their places); with a flow-guided PropDPM "
                                         "and carried_composite on, each frame's composite re-encoded (what fed the "
                                         "next frame)."),
                io.Image.Output(display_name="IMAGE", tooltip="The K frames decoded with the VAE."),
            ],
        )

    @classmethod
    def validate_inputs(cls, keyframe_indices="", mask=UNCONNECTED, source_frames=UNCONNECTED) -> bool | str:
        return refusal(lambda: check_widgets(keyframe_indices, mask, source_frames))

    @classmethod
    def execute(cls, model, positive, negative, vae, depth: torch.Tensor, reference: torch.Tensor,
                reference_index: int, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                reference_depth: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                source_frames: torch.Tensor | None = None, flow=None, carried_composite: bool = True,
                composite_border: int = DEFAULT_BORDER, max_batch: int = 0, pixel_composite: bool = True,
                frame_previews: bool = True, decode: bool = True, keyframe_indices: str = "",
                keyframe_window: int = 8, anchor_strength: float = 0.0) -> io.NodeOutput:
        if depth.ndim != 4 or depth.shape[0] == 0:
            raise MagicPropError(
                f"depth has shape {tuple(depth.shape)}: expected the DepthSequence output (K, H, W, 3)."
            )
        check_reference(reference, batch=True)
        k = depth.shape[0]
        keys = keyframes(reference_index, keyframe_indices, reference.shape[0], k)
        check_inputs(model, positive, negative, depth, reference, keys, reference_depth, mask, source_frames, flow)
        if not decode:
            check_image_output_unused(cls.hidden.prompt, cls.hidden.unique_id)
        config = model.model.model_config.magicprop
        masks = None if mask is None else (mask if mask.ndim == 3 else mask[None])
        carried = node_carried(config, vae, flow, source_frames, reference, keys, masks, keyframe_window)
        inputs = node_run_inputs(vae, depth, reference, keys, reference_depth, carried)
        grid = tuple(inputs.depth.shape[-2:])
        source_latents = anchor_masks = None
        if mask is not None:
            source_latents = vae.encode(source_frames[..., :3]).float()
            anchor_masks = latent_masks(masks, grid)
        border = composite_border if carried_composite else None

        previews = FramePreviews(model, cls.hidden.unique_id, k, keys[0]) if frame_previews else None
        progress = ProgressReporter(model, generated_frames(inputs, keyframe_window), steps, previews)

        def make_denoiser(i: int, _index: int) -> ComfyFrameDenoiser:
            return ComfyFrameDenoiser(model, select_reference(positive, i), select_reference(negative, i), config, k,
                                      steps, cfg, sampler_name, scheduler, source_latents, masks,
                                      on_step=progress.on_step)

        latents = propagate_run(inputs, make_denoiser, seed, keyframe_window, anchor_strength, anchor_masks,
                                callback=progress.on_frame, out_device=comfy.model_management.intermediate_device(),
                                encode=vae.encode, decode=vae.decode, composite_border=border, max_batch=max_batch)
        if not decode:
            return io.NodeOutput({"samples": latents}, None)
        images = vae.decode(latents)
        if carried is not None:
            images = composite_carried(images, carried.frames.to(images), carried.filled.to(images), border)
        if masks is not None and pixel_composite:
            m = masks[..., None].to(images)
            images = source_frames[..., :3].to(images) * (1 - m) + images * m
        return io.NodeOutput({"samples": latents}, images)
