"""diffusers UNet2DConditionModel config -> ComfyUI's UNet config dict (openaimodel.UNetModel keyword arguments).

ComfyUI's own diffusers detection only knows a fixed list of full-size models, so a PropDPM UNet (10 input
channels, any size) is described here from its diffusers config; the key layout is then mapped by ComfyUI's own
``comfy.utils.unet_to_diffusers``. Pure Python in the core (no ComfyUI import): the node pack's loader
(``nodes/propdpm/model.py``), the host tests and the core's single-file tests use this one translation.
"""

from __future__ import annotations

from typing import Any

CROSS_ATTN_DOWN = "CrossAttnDownBlock2D"
CROSS_ATTN_UP = "CrossAttnUpBlock2D"
PLAIN_DOWN = "DownBlock2D"
PLAIN_UP = "UpBlock2D"


class UnsupportedUNet(ValueError):
    """A diffusers UNet config this translation does not cover (not an SD1.x-style UNet)."""


def _depths(value: Any, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * n


def comfy_unet_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI UNet config for an SD1.x-style diffusers UNet config (any width, depth and input channels)."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    channels = list(cfg["block_out_channels"])
    n = len(channels)
    if any(b not in (CROSS_ATTN_DOWN, PLAIN_DOWN) for b in down) or any(b not in (CROSS_ATTN_UP, PLAIN_UP) for b in up):
        raise UnsupportedUNet(
            f"block types {down} / {up}: expected SD1.x blocks ({CROSS_ATTN_DOWN}, {PLAIN_DOWN} ...)."
        )
    if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise UnsupportedUNet(f"mid_block_type {cfg.get('mid_block_type')!r}: expected UNetMidBlock2DCrossAttn.")
    heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
    if isinstance(heads, (list, tuple)):
        if len(set(heads)) != 1:
            raise UnsupportedUNet(f"per-block head counts {heads}: expected one head count (SD1.x).")
        heads = heads[0]
    layers = cfg["layers_per_block"]
    if isinstance(layers, (list, tuple)):
        raise UnsupportedUNet(f"layers_per_block={layers}: expected one number (SD1.x).")
    tdepth = _depths(cfg.get("transformer_layers_per_block", 1), n)
    model_channels = channels[0]
    transformer_depth = [tdepth[i] if b == CROSS_ATTN_DOWN else 0 for i, b in enumerate(down) for _ in range(layers)]
    up_depth = list(reversed(tdepth))
    transformer_depth_output = [
        up_depth[i] if b == CROSS_ATTN_UP else 0 for i, b in enumerate(up) for _ in range(layers + 1)
    ][::-1]
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": cfg["in_channels"],
        "out_channels": cfg["out_channels"],
        "model_channels": model_channels,
        "num_res_blocks": [layers] * n,
        "channel_mult": [c // model_channels for c in channels],
        "transformer_depth": transformer_depth,
        "transformer_depth_output": transformer_depth_output,
        "transformer_depth_middle": tdepth[-1],
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "context_dim": cfg["cross_attention_dim"],
        "num_heads": int(heads),
        "num_head_channels": -1,
        "use_linear_in_transformer": bool(cfg.get("use_linear_projection", False)),
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
