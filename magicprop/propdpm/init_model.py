"""Make an untrained PropDPM: SD1.5 (or a UNet config with seeded random weights) widened to 10 input channels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import MagicPropError
from ..log import get_logger
from .adapter import AdapterConfig, AppearanceAdapter
from .checkpoint import save_checkpoint
from .clip import ClipSpec, clip_spec_of, load_clip_vision
from .conditioning import LATENT_CHANNELS
from .config import PropDPMConfig
from .unet import load_sd15_unet, unet_from_config, widen_to_propdpm

log = get_logger(__name__)


def initial_models(
    unet_source: str | Path | None = None,
    unet_config: dict[str, Any] | None = None,
    seed: int = 0,
    single_file_config: str | Path | None = None,
):
    """(PropDPM UNet, adapter) before training: from SD1.5 weights, or from a config with seeded random weights."""
    if (unet_source is None) == (unet_config is None):
        raise MagicPropError("pass exactly one of --unet (a local SD1.5 model) or --unet-config (a UNet config JSON).")
    if unet_source is not None:
        unet = load_sd15_unet(unet_source, single_file_config)
    else:
        unet = unet_from_config(unet_config, seed)
    if unet.config.in_channels == LATENT_CHANNELS:
        unet = widen_to_propdpm(unet)
    token_dim = unet.config.cross_attention_dim
    if not isinstance(token_dim, int):
        raise MagicPropError(f"unet cross_attention_dim={token_dim!r}: expected one integer width (SD1.5: 768).")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        adapter = AppearanceAdapter(AdapterConfig(token_dim=token_dim, latent_channels=LATENT_CHANNELS))
    return unet, adapter


def init_checkpoint(
    out: str | Path,
    unet_source: str | Path | None = None,
    unet_config: str | Path | dict[str, Any] | None = None,
    clip_vision: str | Path | None = None,
    seed: int = 0,
    latent_scale: float = 0.18215,
    resolution: int = 256,
    single_file_config: str | Path | None = None,
    **overrides: Any,
) -> Path:
    """Write an untrained PropDPM checkpoint; `overrides` set further PropDPMConfig fields."""
    if isinstance(unet_config, (str, Path)):
        path = Path(unet_config)
        if not path.is_file():
            raise MagicPropError(f"--unet-config {str(path)!r} does not exist; pass a diffusers UNet config JSON.")
        unet_config = json.loads(path.read_text())
    unet, adapter = initial_models(unet_source, unet_config, seed, single_file_config)
    token_dim = adapter.config.token_dim
    if clip_vision is not None:
        spec = clip_spec_of(load_clip_vision(clip_vision))
        if spec.token_dim != token_dim:
            raise MagicPropError(
                f"--clip-vision projects to {spec.token_dim} but the UNet's cross-attention is {token_dim} wide: "
                "use a CLIP vision model whose projection_dim equals the UNet's cross_attention_dim "
                "(ViT-L/14 and SD1.5: 768)."
            )
    else:
        spec = ClipSpec(token_dim=token_dim)
    source = str(unet_source) if unet_source is not None else f"random (seed {seed})"
    config = PropDPMConfig(
        unet_config={k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
        adapter=adapter.config,
        latent_scale=latent_scale,
        clip=spec,
        resolution=resolution,
        training={"initialised_from": source, "steps": 0},
        **overrides,
    )
    path = save_checkpoint(out, config, unet, adapter)
    log.info("wrote untrained PropDPM %s (UNet from %s)", path, source)
    return path
