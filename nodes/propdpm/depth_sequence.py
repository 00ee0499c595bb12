"""DepthSequence: video frames -> clip-consistent depth (one scale for the whole clip), as an IMAGE batch."""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
from comfy_api.latest import io

from ...magicprop.errors import MagicPropError
from ...magicprop.io.images import resize
from ...magicprop.log import get_logger
from ...magicprop.propdpm.depth import DepthEstimator, align_clip_depth, depth_from_image
from ..common.folders import NO_DEPTH_MODEL, depth_model_folders, depth_model_path
from ..common.validation import UNCONNECTED, refusal

log = get_logger(__name__)


def resolve_depth_model(name: str) -> str:
    """depth_model (a folder name of models/depth_estimation) -> its path; one line naming the fix otherwise."""
    try:
        return depth_model_path(name)
    except FileNotFoundError:
        raise MagicPropError(
            f"depth_model {name!r} is not a folder with config.json under models/depth_estimation; put a "
            "transformers depth-estimation model there (e.g. Depth-Anything-V2-Small-hf)."
        ) from None


def fit_depth_images(depth_images: torch.Tensor, clip: tuple[int, int, int]) -> torch.Tensor:
    """One depth map per frame at the frames' (K, H, W) size: maps of the frames' shape at another resolution (a
    preprocessor's `resolution`) are resized to it, logged; another count or shape is refused."""
    k, h, w = clip
    dk, dh, dw = depth_images.shape[:3]
    if dk != k or abs(dw / dh - w / h) > 0.05 * w / h:
        raise MagicPropError(f"depth_images has shape {(dk, dh, dw)} but frames has {(k, h, w)}: expected one depth "
                             "map per frame, of the frames' shape (any resolution).")
    if (dh, dw) == (h, w):
        return depth_images
    log.info("depth_images are %dx%d, the frames %dx%d: resized to the frames' size.", dw, dh, w, h)
    return resize(depth_images[..., :3].float(), h, w)


def check_depth_source(depth_model: str | None, depth_images) -> None:
    """Where DepthSequence's depth comes from, decided by its widget and connection alone (validate_inputs: before
    anything runs): depth_images when connected, else depth_model's folder. None is a widget turned into a socket."""
    if depth_images is not UNCONNECTED or depth_model is None:
        return
    if depth_model == NO_DEPTH_MODEL:
        raise MagicPropError(
            f"depth_model is {NO_DEPTH_MODEL!r} and depth_images is not connected: connect depth_images (any depth "
            "preprocessor) or choose a depth_model from models/depth_estimation."
        )
    resolve_depth_model(depth_model)


def estimate_depth(name: str, frames: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(K, H, W) relative inverse depth from a transformers model in models/depth_estimation/<name>.

    The model runs through a ModelPatcher (ComfyUI places it and frees memory for it) and is offloaded after use.
    """
    path = resolve_depth_model(name)
    offload = comfy.model_management.unet_offload_device()
    estimator = DepthEstimator.from_folder(path, device=offload)
    holder = torch.nn.Module()  # ModelPatcher sets .device, a read-only property of transformers models
    holder.net = estimator.model
    patcher = comfy.model_patcher.ModelPatcher(
        holder, load_device=comfy.model_management.get_torch_device(), offload_device=offload
    )
    comfy.model_management.load_models_gpu([patcher])
    pbar = comfy.utils.ProgressBar(frames.shape[0])
    try:
        return estimator(frames, batch_size=batch_size, on_batch=pbar.update)
    finally:
        patcher.detach()


class DepthSequence(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DepthSequence",
            display_name="Depth Sequence (MagicProp)",
            category="MagicProp",
            description="Temporally consistent depth for a clip: per-frame depth (from a depth model or any depth "
                        "preprocessor) aligned by a robust per-frame scale and shift, then one normalisation for the "
                        "whole clip (near = white). Also a good hint for a depth ControlNet.",
            inputs=[
                io.Image.Input("frames", tooltip="The video frames (K, H, W, 3)."),
                io.Combo.Input("depth_model", options=[NO_DEPTH_MODEL, *depth_model_folders()], default=NO_DEPTH_MODEL,
                               tooltip="A transformers depth-estimation model folder in models/depth_estimation; "
                                       "not used when depth_images is connected."),
                io.Int.Input("batch_size", default=8, min=1, max=256,
                             tooltip="Frames per depth-model batch (lower it if memory is short)."),
                io.Image.Input("depth_images", optional=True,
                               tooltip="Per-frame depth maps from any depth preprocessor node (near = bright), one "
                                       "per frame; they are aligned across the clip."),
            ],
            outputs=[io.Image.Output(display_name="depth", tooltip="Aligned depth (K, H, W, 3), near = 1.")],
        )

    @classmethod
    def validate_inputs(cls, depth_model, depth_images=UNCONNECTED) -> bool | str:
        return refusal(lambda: check_depth_source(depth_model, depth_images))

    @classmethod
    def execute(cls, frames: torch.Tensor, depth_model: str, batch_size: int,
                depth_images: torch.Tensor | None = None) -> io.NodeOutput:
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise MagicPropError(
                f"frames has shape {tuple(frames.shape)}: expected a batch of video frames (K, H, W, 3).")
        if depth_images is not None:
            relative = depth_from_image(fit_depth_images(depth_images, frames.shape[:3]))
        else:  # depth_model is a folder: check_depth_source
            relative = estimate_depth(depth_model, frames, batch_size)
        aligned = align_clip_depth(relative)  # (K, 1, H, W) in [0, 1]
        out = aligned[:, 0, :, :, None].expand(-1, -1, -1, 3).contiguous()
        return io.NodeOutput(out.to(comfy.model_management.intermediate_device()))
