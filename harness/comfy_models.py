"""Tiny models as ComfyUI objects (its own VAE, CLIP vision and ControlNet classes) for host tests and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from magicprop.tiny import TINY_CLIP_CONFIG


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


def fill_random(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Seeded random weights for modules built with comfy.ops (which skip initialisation): norms at 1/0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight")):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def comfy_sd15_model(unet_config: dict, diffusers_unet):
    """A ComfyUI SD1.5 (eps) MODEL with a tiny diffusers UNet's weights, built like the host builds SD15."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    config = comfy.supported_models.SD15(unet_config)
    config.unet_config.update(num_heads=unet_config["num_heads"], num_head_channels=-1)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    key_map = comfy.utils.unet_to_diffusers(config.unet_config)
    model.diffusion_model.load_state_dict({key_map[k]: v for k, v in diffusers_unet.state_dict().items()}, strict=True)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def comfy_tiny_text_clip(hidden: int = 32, seed: int = 0):
    """A ComfyUI CLIP (SD1 tokenizer, a tiny CLIP-L-shaped text encoder of width `hidden`)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    tiny = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
            "num_attention_heads": 2, "projection_dim": hidden}
    clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": tiny, "dtype": torch.float32})
    fill_random(clip.cond_stage_model, seed, std=0.02)
    return clip


class RecordingControlNet:
    """Factory for a ComfyUI ControlNet that records the hint it is given at every call (and survives copy())."""

    @staticmethod
    def build(unet_config: dict, log: list, seed: int = 0):
        import comfy.cldm.cldm
        import comfy.controlnet
        import comfy.ops

        class Recording(comfy.controlnet.ControlNet):
            def copy(self):
                c = Recording(None, global_average_pooling=self.global_average_pooling,
                              load_device=self.load_device, manual_cast_dtype=self.manual_cast_dtype)
                c.control_model, c.control_model_wrapped = self.control_model, self.control_model_wrapped
                self.copy_to(c)
                return c

            def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
                log.append(self.cond_hint_original.detach().clone())
                return super().get_control(x_noisy, t, cond, batched_number, transformer_options)

        cfg = {k: v for k, v in unet_config.items() if k != "out_channels"}
        cfg.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32,
                   device=torch.device("cpu"))
        control_model = fill_random(comfy.cldm.cldm.ControlNet(**cfg), seed)
        return Recording(control_model, load_device=torch.device("cpu"), manual_cast_dtype=None)
