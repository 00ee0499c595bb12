"""Tiny models as ComfyUI objects (its own VAE, CLIP vision and ControlNet classes) for host tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tiny import TINY_CLIP_CONFIG


def comfy_vae(diffusers_vae):
    """A ComfyUI VAE holding a (4-level) diffusers AutoencoderKL's weights."""
    import comfy.sd

    cfg = diffusers_vae.config
    ddconfig = {
        "double_z": True, "z_channels": cfg.latent_channels, "resolution": 256, "in_channels": 3, "out_ch": 3,
        "ch": cfg.block_out_channels[0], "ch_mult": [c // cfg.block_out_channels[0] for c in cfg.block_out_channels],
        "num_res_blocks": cfg.layers_per_block, "attn_resolutions": [], "dropout": 0.0,
    }
    return comfy.sd.VAE(sd=diffusers_vae.state_dict(), config={"params": {"embed_dim": cfg.latent_channels,
                                                                          "ddconfig": ddconfig}})


def clip_vision_json(folder: Path, config: dict = TINY_CLIP_CONFIG) -> Path:
    """ComfyUI's JSON config for a CLIP vision model of the given (transformers) shape."""
    path = folder / "clip_vision_config.json"
    path.write_text(json.dumps({
        **config, "num_channels": 3, "hidden_act": "quick_gelu", "model_type": "clip_vision_model",
        "layer_norm_eps": 1e-5,
    }))
    return path


def comfy_clip_vision(transformers_clip, folder: Path):
    """A ComfyUI ClipVisionModel holding a transformers CLIPVisionModelWithProjection's weights."""
    import comfy.clip_vision

    cfg = transformers_clip.config
    keep = {k: getattr(cfg, k) for k in TINY_CLIP_CONFIG}
    model = comfy.clip_vision.ClipVisionModel(str(clip_vision_json(folder, keep)))
    missing, unexpected = model.load_sd(transformers_clip.state_dict())
    assert not [m for m in missing if "position_ids" not in m], missing
    return model
