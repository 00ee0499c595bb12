"""Test-only ComfyUI nodes that provide tiny models where the host's loaders expect full-size files.

They stand in for CheckpointLoaderSimple, VAELoader, CLIPVisionLoader and ControlNetLoader when example workflows
run in tests ("tiny models substituted"); registered by the test session and the host benchmarks, never by the pack.
"""

from __future__ import annotations

from pathlib import Path

from magicprop.propdpm.unet_config import comfy_unet_config

CONTROL_LOG: list = []
"""Every hint a test ControlNet received, in call order."""


class TestTinyVAE:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, folder):
        from diffusers import AutoencoderKL

        from .comfy_models import comfy_vae

        return (comfy_vae(AutoencoderKL.from_pretrained(folder)),)


class TestTinyCLIPVision:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, folder):
        from transformers import CLIPVisionModelWithProjection

        from .comfy_models import comfy_clip_vision

        return (comfy_clip_vision(CLIPVisionModelWithProjection.from_pretrained(folder), Path(folder)),)


class TestTinyCheckpoint:
    """(MODEL, CLIP, VAE) of a tiny SD1.5-shaped image model, like CheckpointLoaderSimple gives."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_folder": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, vae_folder):
        from diffusers import AutoencoderKL

        from magicprop.tiny import tiny_unet

        from .comfy_models import comfy_sd15_model, comfy_tiny_text_clip, comfy_vae

        unet = tiny_unet(seed=11)
        model = comfy_sd15_model(comfy_unet_config(dict(unet.config)), unet)
        vae = comfy_vae(AutoencoderKL.from_pretrained(vae_folder))
        return (model, comfy_tiny_text_clip(unet.config.cross_attention_dim), vae)


class TestTinyControlNet:
    """A tiny SD1.5-shaped ControlNet that records the hints it receives (CONTROL_LOG)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed):
        from magicprop.tiny import TINY_UNET_CONFIG

        from .comfy_models import RecordingControlNet

        return (RecordingControlNet.build(comfy_unet_config(dict(TINY_UNET_CONFIG)), CONTROL_LOG, seed),)


TEST_NODES = {
    "TestTinyVAE": TestTinyVAE,
    "TestTinyCLIPVision": TestTinyCLIPVision,
    "TestTinyCheckpoint": TestTinyCheckpoint,
    "TestTinyControlNet": TestTinyControlNet,
}


def register(nodes_module) -> None:
    for name, cls in TEST_NODES.items():
        nodes_module.NODE_CLASS_MAPPINGS[name] = cls
