"""Tiny configurations of the real architectures with seeded random weights, for tests and benchmarks.

Channel counts are multiples of 32 (ComfyUI's GroupNorm uses 32 groups); the VAE has 4 levels (ComfyUI's key
converter only handles 4-level VAEs) so it downsamples by 8 like SD1.5's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

TINY_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 32,
}

TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TINY_CLIP_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
}


def tiny_unet(seed: int = 0, in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**{**TINY_UNET_CONFIG, "in_channels": in_channels}).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**TINY_VAE_CONFIG).eval()


def tiny_clip(seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_CONFIG)).eval()


def tiny_depth_model(seed: int = 0):
    """A tiny DPT (ViT backbone) with its image processor: predicted_depth is relative inverse depth."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5], is_hybrid=False, head_in_index=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DPTForDepthEstimation(config).eval()
    processor = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False, do_pad=False)
    return model, processor


def save_tiny_models(folder: Path) -> dict[str, Path]:
    """Save the tiny VAE, CLIP vision and depth model as local folders, as a user would have them."""
    paths = {"vae": folder / "vae", "clip_vision": folder / "clip_vision", "depth": folder / "depth"}
    tiny_vae(1).save_pretrained(paths["vae"])
    tiny_clip(2).save_pretrained(paths["clip_vision"])
    model, processor = tiny_depth_model(3)
    model.save_pretrained(paths["depth"])
    processor.save_pretrained(paths["depth"])
    return paths


SD15_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}

VIT_L14_CONFIG = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
}


def _save_once(path: Path, make) -> Path:
    """Create `path` with make(tmp_path) unless it exists; atomic, so a killed run leaves no broken cache."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        make(tmp)
        os.replace(tmp, path)
    return path


def full_size_vae(folder: Path) -> Path:
    """SD1.5's AutoencoderKL architecture, seeded random weights, diffusers keys, fp16 safetensors (~167 MB)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    def make(tmp):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(21)
            vae = AutoencoderKL(**SD15_VAE_CONFIG)
        save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(tmp))

    return _save_once(folder / "sd15-vae-random.safetensors", make)


def full_size_clip_vision(folder: Path) -> Path:
    """OpenAI CLIP ViT-L/14 vision architecture, seeded random weights, fp16, as a file and a transformers folder."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    def make_model():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(22)
            return CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14_CONFIG)).half().eval()

    def make_folder(tmp):
        make_model().save_pretrained(tmp)

    folder_path = _save_once(folder / "clip-vit-l14-random", make_folder)

    def make_file(tmp):
        model = CLIPVisionModelWithProjection.from_pretrained(folder_path)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))

    return _save_once(folder / "clip-vit-l14-random.safetensors", make_file)
