"""Tiny configurations of the real architectures with seeded random weights, shared by tests and benchmarks.

Pure functions: the same seed gives the same weights, whatever ran before (the global generator is forked).
Channel counts are multiples of 32 (ComfyUI's GroupNorm uses 32 groups); the VAE has 4 levels (ComfyUI's key
converter only handles 4-level VAEs) so it downsamples by 8 like SD1.5's.
"""

from __future__ import annotations

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


def sd_shaped_config(channels: list[int]) -> dict:
    """SD1.5's UNet layout (3 cross-attention levels, 2 layers per block, 8 heads, 768 context) at other widths.

    For speed benchmarks: the real layout's cost structure at a width the machine can afford."""
    return {"sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": channels,
            "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}


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


TINY_TEXT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}


def tiny_tokenizer():
    """A CLIPTokenizer whose vocabulary is single characters (every byte-level symbol, alone and word-final) and the
    two special tokens: a real tokenizer without any downloaded vocabulary file."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def save_tiny_sd(folder: Path, seed: int = 0, controlnet: bool = True) -> dict[str, Path]:
    """A tiny Stable Diffusion 1.x-shaped diffusers folder (unet, vae, text_encoder, tokenizer, scheduler with SD1.5's
    schedule) and a tiny ControlNet beside it, seeded random weights."""
    from diffusers import ControlNetModel, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    sd = folder / "tiny-sd"
    unet = tiny_unet(seed)
    unet.save_pretrained(sd / "unet")
    tiny_vae(seed + 1).save_pretrained(sd / "vae")
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(sd / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **special, **TINY_TEXT_CONFIG)).eval()
    text.save_pretrained(sd / "text_encoder")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(sd / "scheduler")
    paths = {"sd": sd}
    if controlnet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 3)
            net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 32, 32))
            for p in net.controlnet_down_blocks.parameters():  # zero-initialised by design: give them weights
                torch.nn.init.normal_(p, std=0.02)
            torch.nn.init.normal_(net.controlnet_mid_block.weight, std=0.02)
        net.save_pretrained(folder / "tiny-controlnet")
        paths["controlnet"] = folder / "tiny-controlnet"
    return paths
