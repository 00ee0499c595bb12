"""Test-only models: full-size architectures with seeded random weights, cached between runs.

The tiny configurations that tests and benchmarks share live in the package (`magicprop.tiny`); they are
re-exported here so that `from tiny import ...` keeps working in tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from magicprop.tiny import (  # noqa: F401  (re-exported for the tests)
    TINY_CLIP_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    save_tiny_models,
    tiny_clip,
    tiny_depth_model,
    tiny_unet,
    tiny_vae,
)

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


def flow_guided_checkpoint(paper: Path, out: Path, settings, perturb: bool = True, noise: float = 0.0) -> Path:
    """A flow-guided tiny PropDPM made from a paper one (`settings`: the FlowSettings it records); its new input
    channels are zero, or seeded random when `perturb` (so the motion inputs matter)."""
    from magicprop.propdpm.motion_inputs import flow_guided_checkpoint as extend

    def randomise(unet) -> None:
        w = unet.conv_in.weight
        g = torch.Generator().manual_seed(3)
        w[:, 10:] = torch.randn(w[:, 10:].shape, generator=g) * w[:, :4].std()

    return extend(paper, out, settings, "guided", "edit", noise, randomise if perturb else None)
