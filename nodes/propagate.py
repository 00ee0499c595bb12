"""AutoregressivePropagate: the edited reference carried through the clip, frame by frame, with ComfyUI's samplers."""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..magicprop.depth import align_to, depth_from_image, depth_to_latent_grid
from ..magicprop.errors import MagicPropError
from ..magicprop.propagate import chain_order, propagate
from .appearance import check_reference
from .denoiser import ComfyFrameDenoiser, check_control_hints
from .model import PropDPMModel
from .preview import FramePreviews
from .types import APPEARANCE_KEY


def check_inputs(model, positive, negative, depth, reference, reference_index, reference_depth, mask,
                 source_frames) -> None:
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
    if depth.ndim != 4 or depth.shape[0] == 0:
        raise MagicPropError(f"depth has shape {tuple(depth.shape)}: expected the DepthSequence output (K, H, W, 3).")
    k, h, w = depth.shape[:3]
    check_reference(reference)
    if reference.shape[1:3] != (h, w):
        raise MagicPropError(
            f"reference is {reference.shape[2]}x{reference.shape[1]} but the depth frames are {w}x{h}: edit the "
            "frame at the video's size."
        )
    chain_order(reference_index, k)
    if reference_depth is not None and (reference_depth.ndim != 4 or reference_depth.shape[:3] != (1, h, w)):
        raise MagicPropError(
            f"reference_depth has shape {tuple(reference_depth.shape)}: expected one depth image (1, {h}, {w}, 3)."
        )
    if mask is not None:
        m = mask if mask.ndim == 3 else mask[None]
        if m.shape[0] not in (1, k) or m.shape[1:] != (h, w):
            raise MagicPropError(
                f"mask has shape {tuple(mask.shape)}: expected 1 or {k} masks of {w}x{h} (one for all frames, or "
                "one per frame)."
            )
        if source_frames is None:
            raise MagicPropError("mask needs source_frames: connect the source video frames (kept outside the mask).")
    if source_frames is not None:
        if mask is None:
            raise MagicPropError("source_frames is only used with a mask: connect a mask or disconnect source_frames.")
        if source_frames.shape[:3] != (k, h, w):
            raise MagicPropError(
                f"source_frames has {source_frames.shape[0]} frames of {source_frames.shape[2]}x"
                f"{source_frames.shape[1]} but depth has {k} frames of {w}x{h}: expected the same video."
            )
    check_control_hints([positive, negative], k)


class ProgressReporter:
    """One ComfyUI progress bar over all the steps of all generated frames, with step previews; finished frames
    go to the web filmstrip (FramePreviews)."""

    def __init__(self, model, num_frames: int, steps: int, frames: FramePreviews | None = None) -> None:
        self.steps, self.total = steps, max(1, (num_frames - 1) * steps)
        self.done_frames = 0
        self.bar = comfy.utils.ProgressBar(self.total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.frames = frames
        if frames is not None:
            frames.start()

    def on_step(self, index: int, step: int, total_steps: int, x0: torch.Tensor) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = None
        if self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
        self.bar.update_absolute(self.done_frames * self.steps + min(step, self.steps), self.total, preview)

    def on_frame(self, index: int, latent: torch.Tensor, is_reference: bool) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if self.frames is not None:
            self.frames.frame(index, latent)
        if not is_reference:
            self.done_frames += 1
            self.bar.update_absolute(self.done_frames * self.steps, self.total)


class AutoregressivePropagate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AutoregressivePropagate",
            display_name="Autoregressive Propagate (MagicProp)",
            category="MagicProp",
            description="Propagates the edited reference through the video with PropDPM, one frame at a time, "
                        "forward and backward from the reference index, following the clip's depth.",
            inputs=[
                io.Model.Input("model", tooltip="PropDPM from Load PropDPM (LoRAs may be applied)."),
                io.Conditioning.Input("positive", tooltip="AppearanceAdapterEncode's positive (ControlNets may be "
                                                          "applied; a K-frame hint gives frame k its own hint)."),
                io.Conditioning.Input("negative", tooltip="AppearanceAdapterEncode's negative (used when cfg > 1)."),
                io.Vae.Input("vae", tooltip="The VAE: encodes the reference (and source frames), decodes the result."),
                io.Image.Input("depth", tooltip="Aligned clip depth from DepthSequence (K frames)."),
                io.Image.Input("reference", tooltip="The edited frame (one image, the frames' size)."),
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
                               tooltip="Depth of the edited reference when the edit changed shapes (default: the "
                                       "depth of the reference frame)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where to edit (1 mask or one per frame); outside it the source is kept."),
                io.Image.Input("source_frames", optional=True,
                               tooltip="The source video frames, kept outside the mask (needed with a mask)."),
                io.Boolean.Input("pixel_composite", default=True, optional=True,
                                 tooltip="With a mask: copy the source pixels exactly outside it in the images "
                                         "output (the latent output keeps them to latent precision)."),
                io.Boolean.Input("frame_previews", default=True, optional=True,
                                 tooltip="Show each finished frame in the node's filmstrip (a cheap latent preview)."),
            ],
            hidden=[io.Hidden.unique_id],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="All K frames (the reference in its place)."),
                io.Image.Output(display_name="IMAGE", tooltip="The K frames decoded with the VAE."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, depth: torch.Tensor, reference: torch.Tensor,
                reference_index: int, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                reference_depth: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                source_frames: torch.Tensor | None = None, pixel_composite: bool = True,
                frame_previews: bool = True) -> io.NodeOutput:
        check_inputs(model, positive, negative, depth, reference, reference_index, reference_depth, mask,
                     source_frames)
        k = depth.shape[0]
        config = model.model.model_config.magicprop
        ref_latent = vae.encode(reference[..., :3]).float()  # (1, 4, h, w), unscaled
        grid = tuple(ref_latent.shape[-2:])
        clip_depth = depth_from_image(depth)  # (K, H, W), already aligned by DepthSequence
        depth_lat = depth_to_latent_grid(clip_depth[:, None], grid)
        ref_depth = None
        if reference_depth is not None:
            placed = align_to(depth_from_image(reference_depth)[0], clip_depth[reference_index])
            ref_depth = depth_to_latent_grid(placed[None, None], grid)
        masks = source_latents = None
        if mask is not None:
            masks = (mask if mask.ndim == 3 else mask[None]).float()
            source_latents = vae.encode(source_frames[..., :3]).float()

        previews = FramePreviews(model, cls.hidden.unique_id, k, reference_index) if frame_previews else None
        progress = ProgressReporter(model, k, steps, previews)
        denoiser = ComfyFrameDenoiser(model, positive, negative, config, k, steps, cfg, sampler_name, scheduler,
                                      source_latents, masks, on_step=progress.on_step)
        latents = propagate(
            denoiser, ref_latent, depth_lat, reference_index, seed, ref_depth,
            callback=lambda idx, lat: progress.on_frame(idx, lat, idx == reference_index),
            out_device=comfy.model_management.intermediate_device(),
        )
        images = vae.decode(latents)
        if masks is not None and pixel_composite:
            m = masks[..., None].to(images)
            images = source_frames[..., :3].to(images) * (1 - m) + images * m
        return io.NodeOutput({"samples": latents}, images)
