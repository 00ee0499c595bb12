"""AppearanceAdapterEncode: the edited reference -> appearance tokens (positive) and their null (negative)."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ...magicprop.errors import MagicPropError
from ...magicprop.propdpm.adapter import null_tokens
from ...magicprop.propdpm.clip import check_clip_compatible, projection_fingerprint
from ..common.types import APPEARANCE_KEY, Adapter, AppearanceInfo
from ..common.validation import check_reference
from .model import AdapterHandle


def clip_token_shape(clip_vision) -> tuple[int, int]:
    """(projection width, number of tokens) of a ComfyUI CLIP vision model, read from its modules."""
    model = clip_vision.model
    proj = getattr(model, "visual_projection", None)
    if not isinstance(proj, torch.nn.Module):
        raise MagicPropError("clip_vision has no visual projection: load a CLIP vision model (OpenAI ViT-L/14).")
    return proj.weight.shape[0], model.vision_model.embeddings.position_embedding.weight.shape[0]


@torch.no_grad()
def appearance_tokens(handle: AdapterHandle, clip_vision, vae, reference: torch.Tensor) -> torch.Tensor:
    """(N, 1 + hw/4, C) appearance tokens of N references, through ComfyUI's CLIP vision (no crop) and VAE."""
    width, count = clip_token_shape(clip_vision)
    proj = clip_vision.model.visual_projection.weight
    check_clip_compatible(handle.config.clip, width, count, projection_fingerprint(proj))
    out = clip_vision.encode_image(reference[..., :3], crop=False)
    model = clip_vision.model
    hidden = out["last_hidden_state"].to(clip_vision.load_device, proj.dtype)
    tokens = model.visual_projection(model.vision_model.post_layernorm(hidden)).float()  # (1, 1+n, c)
    latent = vae.encode(reference[..., :3]).float()  # (1, 4, h, w), unscaled
    comfy.model_management.load_model_gpu(handle.patcher)
    adapter = handle.patcher.model
    device = handle.patcher.load_device
    fused = adapter(tokens.to(device), latent.to(device) * handle.config.latent_scale)
    return fused.to(comfy.model_management.intermediate_device())


class AppearanceAdapterEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AppearanceAdapterEncode",
            display_name="Appearance Adapter Encode (MagicProp)",
            category="MagicProp",
            description="Encodes the edited reference frame into PropDPM's appearance conditioning (its CLIP tokens "
                        "fused with its VAE latent); the negative is the null appearance used for guidance.",
            inputs=[
                Adapter.Input("adapter", tooltip="The appearance adapter from Load PropDPM."),
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model the checkpoint was trained with "
                                                           "(OpenAI CLIP ViT-L/14, 224 px)."),
                io.Vae.Input("vae", tooltip="The VAE of the video latents (SD1.5's VAE)."),
                io.Image.Input("reference", tooltip="The edited frame: one image at the video's size (sides multiples "
                                                    "of 16), made by any image-edit graph; or a batch of edited "
                                                    "keyframes."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The reference's appearance."),
                io.Conditioning.Output(display_name="negative", tooltip="The null appearance (zeros), for cfg > 1."),
            ],
        )

    @classmethod
    def execute(cls, adapter: AdapterHandle, clip_vision, vae, reference: torch.Tensor) -> io.NodeOutput:
        check_reference(reference)
        tokens = appearance_tokens(adapter, clip_vision, vae, reference)
        info = dict(checkpoint=adapter.name, token_dim=tokens.shape[-1])
        positive = [[tokens, {APPEARANCE_KEY: AppearanceInfo(**info, unconditional=False)}]]
        negative = [[null_tokens(tokens), {APPEARANCE_KEY: AppearanceInfo(**info, unconditional=True)}]]
        return io.NodeOutput(positive, negative)
