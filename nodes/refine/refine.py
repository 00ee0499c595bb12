"""FlowRefine: the carried frames refined with any SD checkpoint (img2img on ComfyUI's own samplers), per frame or
in a loopback along the clip's flow; filled pixels repainted more strongly than carried ones."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import torch
from comfy_api.latest import io

from ...magicprop.composite import DEFAULT_BORDER
from ...magicprop.errors import MagicPropError
from ...magicprop.refine.core import (
    MODES,
    NOISE_MODES,
    RefineRequest,
    RefineSettings,
    active,
    check_denoise,
    check_refine_inputs,
    denoise_levels,
    flow_refine,
    latent_region,
    refine_plan,
    start_level,
)
from ...magicprop.seeding import frame_noise
from ..common.conditioning import check_control_hints, frame_conditioning
from ..common.flow_inputs import check_flow
from ..common.preview import FramePreviews
from ..common.progress import ProgressReporter
from ..common.types import Flow
from ..common.validation import UNCONNECTED, keyframes, parse_keyframe_indices, refusal
from ..propdpm.model import PropDPMModel


def timestep_range(model_sampling, sigmas: torch.Tensor) -> tuple[float, float]:
    """(first, last) timestep of a run over `sigmas`; the last is the model's smallest sigma when the schedule ends
    at 0 (as the host's DifferentialDiffusion reads it)."""
    sigma_to = model_sampling.sigma_min
    if sigmas[-1] > sigma_to:
        sigma_to = sigmas[-1]
    ts = model_sampling.timestep
    return float(ts(torch.as_tensor(sigmas[0]))), float(ts(torch.as_tensor(sigma_to)))


def refine_mask_function(sigma: torch.Tensor, denoise_mask: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """The pack's denoise-mask function (model_options["denoise_mask_function"], on a clone of the MODEL): a pixel
    whose level is below the share of the timestep range still ahead stays the noised input (magicprop.refine.core)."""
    model_sampling = extra_options["model"].inner_model.model_sampling
    t_from, t_to = timestep_range(model_sampling, extra_options["sigmas"])
    return active(denoise_mask, float(model_sampling.timestep(sigma[0])), t_from, t_to)


def outside_level(model, steps: int, sampler_name: str, scheduler: str, denoise: float, filled_denoise: float) -> float:
    """The denoise level of pixels outside the filled mask: where, in a run at filled_denoise, a run at denoise would
    start (both schedules from the host's own KSampler)."""
    device = model.load_device
    run = comfy.samplers.KSampler(model, steps, device, sampler_name, scheduler, denoise=filled_denoise).sigmas
    model_sampling = model.get_model_object("model_sampling")
    t_from, t_to = timestep_range(model_sampling, run)
    if denoise <= 0:
        return 0.0
    start = comfy.samplers.KSampler(model, steps, device, sampler_name, scheduler, denoise=denoise).sigmas
    return start_level(float(model_sampling.timestep(start[0])), t_from, t_to)


class ComfyFrameRefiner:
    """FrameRefiner on the host: VAEEncode -> KSampler (each frame k's ControlNet hints) -> VAEDecode of frames, as
    the host's own nodes do it; with a filled region, sampled at filled_denoise with per-pixel levels."""

    def __init__(self, model, vae, positive: list, negative: list, num_frames: int, steps: int, cfg: float,
                 sampler_name: str, scheduler: str, denoise: float, filled_denoise: float, on_step=None) -> None:
        self.model, self.vae, self.positive, self.negative = model, vae, positive, negative
        self.num_frames, self.steps, self.cfg = num_frames, steps, cfg
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.denoise, self.filled_denoise, self.on_step = denoise, filled_denoise, on_step
        self.level = None

    def refine(self, requests: list[RefineRequest]) -> list[torch.Tensor]:
        """Frames that share their denoise in ONE comfy.sample.sample call: each its own init, noise, per-pixel
        levels and ControlNet hint; cfg batched by the host as usual."""
        indices = [r.index for r in requests]
        latent = self.vae.encode(torch.stack([r.image for r in requests])[..., :3])  # (B, 4, h, w), unscaled
        latent = comfy.sample.fix_empty_latent_channels(self.model, latent)
        noise = torch.cat([frame_noise(latent.shape[1:], r.seed, latent.dtype)[None] for r in requests])
        cache: dict = {}
        positive = frame_conditioning(self.positive, indices, self.num_frames, cache)
        negative = frame_conditioning(self.negative, indices, self.num_frames, cache)
        denoise, mask = self.denoise, None
        if requests[0].region is not None:
            if self.level is None:
                self.level = outside_level(self.model, self.steps, self.sampler_name, self.scheduler, self.denoise,
                                           self.filled_denoise)
            denoise = self.filled_denoise
            grid = tuple(latent.shape[-2:])
            mask = torch.cat([denoise_levels(latent_region(r.region, grid), self.level) for r in requests])
        callback = None
        if self.on_step is not None:
            def callback(step, x0, x, total_steps):
                self.on_step(indices, step + 1, total_steps, x0)
        samples = comfy.sample.sample(
            self.model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler, positive, negative, latent,
            denoise=denoise, noise_mask=mask, callback=callback, disable_pbar=True, seed=requests[0].seed,
        )
        return list(self.vae.decode(samples))


def check_widgets(mode: str | None, denoise: float | None, filled_denoise: float | None, keyframe_indices: str | None,
                  flow) -> None:
    """Every FlowRefine error its widgets decide alone (validate_inputs: before anything runs). None is a widget
    turned into a socket (checked in execute by the core); flow is UNCONNECTED when no flow is connected."""
    if mode is not None:
        RefineSettings(mode=mode).check()  # the core's check of mode (the other settings at their defaults)
    if denoise is not None and filled_denoise is not None:
        check_denoise(denoise, filled_denoise)
    if keyframe_indices is not None:
        parse_keyframe_indices(keyframe_indices)
    if mode == "loopback" and flow is UNCONNECTED:
        raise MagicPropError("mode 'loopback' needs flow, which is not connected: connect OpticalFlowSequence's flow "
                             "of the source frames to flow, or pick mode 'per_frame'.")


def check_inputs(model, positive, negative, images: torch.Tensor, filled, flow, mode: str) -> None:
    """Every input error the node can see in its inputs' values, before any encoding or sampling."""
    if isinstance(getattr(model, "model", None), PropDPMModel):
        raise MagicPropError("model is a PropDPM (from Load PropDPM): FlowRefine refines with an image model (an SD "
                             "checkpoint); propagate with PropDPM through AutoregressivePropagate instead.")
    if images.ndim != 4 or images.shape[0] < 1:
        raise MagicPropError(f"images has shape {tuple(images.shape)}: expected the carried frames (K, H, W, 3).")
    k, h, w = images.shape[:3]
    if h % 8 or w % 8:
        raise MagicPropError(f"images are {w}x{h}: the VAE needs sides that are multiples of 8; resize the frames "
                             "(e.g. Upscale Image to a multiple of 8) before OpticalFlowSequence and FlowPropagate.")
    if mode == "loopback" and k > 1 and flow is not None:  # whether it is connected: check_widgets
        check_flow(flow, images)
    check_control_hints([positive, negative], k)


class FlowRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FlowRefine",
            display_name="Flow Refine (MagicProp)",
            category="MagicProp",
            description="Refines the frames FlowPropagate carried with any SD checkpoint (img2img on the host's "
                        "samplers, with your LoRAs and ControlNets): per frame, or in a loopback where each frame "
                        "starts from the previous refined frame carried by the flow. Pixels the flow could not carry "
                        "(the filled mask) are repainted more strongly (filled_denoise).",
            inputs=[
                io.Model.Input("model", tooltip="Any SD-family image model (Load Checkpoint; LoRAs applied upstream). "
                                                "Not a PropDPM: that one goes to AutoregressivePropagate."),
                io.Conditioning.Input("positive", tooltip="Text conditioning; a ControlNet applied with one hint per "
                                                          "frame (e.g. DepthSequence's output) gives frame k hint k."),
                io.Conditioning.Input("negative", tooltip="Negative text conditioning (same ControlNets)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE: encodes each frame and decodes the result."),
                io.Image.Input("images", tooltip="The carried frames (FlowPropagate's IMAGE), K frames."),
                io.Combo.Input("mode", options=list(MODES), default="per_frame",
                               tooltip="per_frame: img2img of each carried frame. loopback (needs flow): frame k "
                                       "starts from the previous refined frame carried by one step of flow where the "
                                       "flow is valid, the carried frame elsewhere; keeps repainted regions stable."),
                io.Int.Input("reference_index", default=0, min=0, max=1_000_000,
                             tooltip="The edited frame: output unchanged, and where loopback chains start."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed (see noise)."),
                io.Combo.Input("noise", options=list(NOISE_MODES), default="fixed",
                               tooltip="fixed: the seed itself for every frame (less flicker); per_frame: a seed per "
                                       "frame from (seed, k)."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps per frame (as KSampler)."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance (as KSampler)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                               tooltip="Sampler (as KSampler)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal",
                               tooltip="Scheduler (as KSampler)."),
                io.Float.Input("denoise", default=0.35, min=0.0, max=1.0, step=0.01,
                               tooltip="How much every frame is repainted (KSampler's denoise). 0 returns the frames "
                                       "bit-identical (no VAE round trip) apart from the filled pixels."),
                io.Float.Input("filled_denoise", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="Denoise of the filled pixels (the flow could not carry them); >= denoise, "
                                       "equal = off. Above denoise the run samples at filled_denoise with a per-pixel "
                                       "mask: the other pixels join when the run reaches denoise's start, so they "
                                       "differ from a plain KSampler run at denoise."),
                io.Mask.Input("filled", optional=True,
                              tooltip="FlowPropagate's filled mask: pixels sampled at filled_denoise."),
                Flow.Input("flow", optional=True,
                           tooltip="OpticalFlowSequence's flow of the source frames (needed by loopback)."),
                io.String.Input("keyframe_indices", default="", optional=True,
                                tooltip="With several edited frames: their frame numbers, e.g. \"0, 60, 119\" "
                                        "(output unchanged; each starts loopback chains)."),
                io.Int.Input("keyframe_window", default=8, min=0, max=1000, optional=True,
                             tooltip="Frames over which the loopback chains of two keyframes blend where they meet."),
                io.Int.Input("border", default=DEFAULT_BORDER, min=0, max=256, optional=True,
                             tooltip="Pixels over which refined pixels fade into the carried frame (with denoise 0: "
                                     "around the filled mask; beyond it the frame is unchanged)."),
                io.Boolean.Input("frame_previews", default=True, optional=True,
                                 tooltip="Show each finished frame in the node's filmstrip."),
                io.Int.Input("max_batch", default=0, min=0, max=1024, optional=True,
                             tooltip="Frames per sampler call. loopback: the chains' next frames together (0 = all "
                                     "of them); per_frame: 0 = 4 frames. 1 = one frame at a time (least memory). With "
                                     "euler or ddim the result does not depend on it; samplers that draw step noise "
                                     "share one draw per batch."),
            ],
            hidden=[io.Hidden.unique_id],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The K refined frames (keyframes unchanged).")],
        )

    @classmethod
    def validate_inputs(cls, mode, denoise, filled_denoise, keyframe_indices="", flow=UNCONNECTED) -> bool | str:
        return refusal(lambda: check_widgets(mode, denoise, filled_denoise, keyframe_indices, flow))

    @classmethod
    def execute(cls, model, positive, negative, vae, images: torch.Tensor, mode: str, reference_index: int,
                seed: int, noise: str, steps: int, cfg: float, sampler_name: str, scheduler: str, denoise: float,
                filled_denoise: float, filled: torch.Tensor | None = None, flow=None, keyframe_indices: str = "",
                keyframe_window: int = 8, border: int = DEFAULT_BORDER, frame_previews: bool = True,
                max_batch: int = 0) -> io.NodeOutput:
        check_inputs(model, positive, negative, images, filled, flow, mode)
        k = images.shape[0]
        keys = keyframes(reference_index, keyframe_indices, 1, k, one_per_reference=False)
        settings = RefineSettings(mode=mode, noise=noise, seed=seed, denoise=denoise, filled_denoise=filled_denoise,
                                  border=border, window=keyframe_window, max_batch=max_batch)
        frames = images[..., :3].float().cpu()
        masks = check_refine_inputs(frames, None if filled is None else filled.cpu(), keys, settings, flow)
        plan = refine_plan(keys, k, settings, masks)
        if settings.filled_denoise > settings.denoise and masks is not None:
            model = model.clone()  # the pack's own per-pixel levels; the input MODEL is left as it was
            model.set_model_denoise_mask_function(refine_mask_function)
        previews = FramePreviews(model, cls.hidden.unique_id, k, keys[0]) if frame_previews else None
        progress = ProgressReporter(model, len(plan), steps, previews)
        refiner = ComfyFrameRefiner(model, vae, positive, negative, k, steps, cfg, sampler_name, scheduler, denoise,
                                    filled_denoise, on_step=progress.on_step)

        def on_frame(index: int, image: torch.Tensor) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            if previews is not None:
                previews.image(index, image)

        out = flow_refine(frames, masks, keys, refiner, settings, motion=flow, callback=on_frame)
        return io.NodeOutput(out.to(comfy.model_management.intermediate_device()))
