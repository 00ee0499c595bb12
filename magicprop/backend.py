"""The host-free backend: PropDPM with diffusers' UNet and schedulers (CLI, trainer validation, tests).

Sampling uses DDIM with trailing timesteps on the zero-terminal-SNR schedule (Lin et al. 2023, section 3.3), from
pure noise, with v-prediction; guidance on the appearance tokens as in ``magicprop.schedule.guide``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .adapter import AppearanceAdapter, null_tokens
from .checkpoint import load_checkpoint
from .clip import (
    ClipSpec, check_clip_compatible, clip_norm_stats, clip_tokens, load_clip_vision, projection_fingerprint,
)
from .conditioning import noise_augment, spatial_condition
from .config import PropDPMConfig
from .errors import MagicPropError
from .fileio import model_folder
from .propagate import FrameRequest, frame_noise
from .schedule import guide, sample_scheduler

log = logging.getLogger(__name__)

AUGMENT_SEED_SALT = 0x5EED_A06
"""Offsets a frame's seed for the previous-latent noise augmentation draw (independent of its initial noise)."""


def augment_generator(frame_seed: int) -> torch.Generator:
    """The generator of a frame's previous-latent noise augmentation (same draw in both backends)."""
    return torch.Generator(device="cpu").manual_seed(frame_seed ^ AUGMENT_SEED_SALT)


def condition_for(request: FrameRequest, config: PropDPMConfig, level: float | None = None) -> torch.Tensor:
    """The 6 spatial-condition channels of a request in the UNet input space (both backends use this)."""
    prev = request.prev_latent.to(torch.float32) * config.latent_scale
    if not config.previous_frame:
        prev = torch.zeros_like(prev)
    level = config.prev_noise_augmentation if level is None else level
    prev = noise_augment(prev, level, augment_generator(request.seed))
    return spatial_condition(prev, request.depth.to(prev), request.prev_depth.to(prev))


class DiffusersDenoiser:
    """FrameDenoiser on a diffusers UNet2DConditionModel: DDIM (trailing, eta 0 by default) from pure noise."""

    def __init__(
        self,
        unet,
        config: PropDPMConfig,
        positive: torch.Tensor,
        steps: int = 20,
        cfg: float = 1.0,
        guidance_rescale: float = 0.0,
        negative: torch.Tensor | None = None,
        eta: float = 0.0,
        prev_noise_level: float | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        if steps < 1:
            raise MagicPropError(f"steps={steps}: expected at least 1 sampling step.")
        self.unet, self.config = unet, config
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.positive = positive.to(self.device, self.dtype)
        self.negative = (null_tokens(positive) if negative is None else negative).to(self.device, self.dtype)
        self.steps, self.cfg, self.rescale, self.eta = steps, float(cfg), float(guidance_rescale), float(eta)
        self.level = prev_noise_level
        self.on_step = on_step
        self.scheduler = sample_scheduler(config.schedule)
        self.scheduler.set_timesteps(steps, device=self.device)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                positive: torch.Tensor | None = None) -> torch.Tensor:
        """Guided v-prediction for noisy latents x (B, 4, h, w) at timestep t (appearance: positive, (B or 1, T, C))."""
        pos = self.positive if positive is None else positive
        b = x.shape[0]
        pos = pos.expand(b, -1, -1) if pos.shape[0] == 1 else pos
        inp = torch.cat([x, cond], dim=1).to(self.dtype)
        if self.cfg == 1.0:
            return self.unet(inp, t, encoder_hidden_states=pos).sample.float()
        ctx = torch.cat([torch.zeros_like(pos) if positive is not None else self.negative.expand(b, -1, -1), pos])
        v_uncond, v_cond = self.unet(torch.cat([inp, inp]), t, encoder_hidden_states=ctx).sample.float().chunk(2)
        return guide(v_cond, v_uncond, self.cfg, self.rescale)

    @torch.no_grad()
    def __call__(self, request: FrameRequest) -> torch.Tensor:
        return self.batch([request])

    @torch.no_grad()
    def batch(self, requests: list[FrameRequest], positive: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise several frames at once, each with its own request (and appearance row of `positive`)."""
        cond = torch.cat([condition_for(r, self.config, self.level) for r in requests]).to(self.device)
        x = torch.cat([frame_noise(r.prev_latent.shape, r.seed) for r in requests]).to(self.device)
        x = x * self.scheduler.init_noise_sigma
        if positive is not None:
            positive = positive.to(self.device, self.dtype)
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests]
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(timesteps):
            v = self.predict(self.scheduler.scale_model_input(x, t), t, cond, positive)
            if self.eta > 0:  # DDIM's stochastic part draws each frame's noise from that frame's generator
                variance_noise = torch.cat([torch.randn(x[:1].shape, generator=g) for g in generators]).to(x)
                x = self.scheduler.step(v, t, x, eta=self.eta, variance_noise=variance_noise).prev_sample
            else:
                x = self.scheduler.step(v, t, x, eta=0.0).prev_sample
            if self.on_step is not None:
                self.on_step(i + 1, len(timesteps))
        return (x / self.config.latent_scale).to(requests[0].prev_latent.dtype)


def check_clip_model(model, spec: ClipSpec) -> None:
    """check_clip_compatible for a transformers CLIPVisionModelWithProjection."""
    cfg = model.config
    grid = cfg.image_size // cfg.patch_size
    check_clip_compatible(spec, cfg.projection_dim, 1 + grid * grid, projection_fingerprint(model.visual_projection.weight))


@dataclass
class StandaloneModels:
    """Everything the host-free pipeline needs, loaded from local files."""

    config: PropDPMConfig
    unet: torch.nn.Module
    adapter: AppearanceAdapter
    vae: torch.nn.Module
    clip: torch.nn.Module
    clip_mean: tuple[float, ...]
    clip_std: tuple[float, ...]

    @classmethod
    def load(
        cls, checkpoint: str | Path, vae: str | Path, clip_vision: str | Path,
        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> "StandaloneModels":
        from diffusers import AutoencoderKL

        ckpt = load_checkpoint(checkpoint)
        clip = load_clip_vision(clip_vision, device, dtype)
        check_clip_model(clip, ckpt.config.clip)
        vae_dir = model_folder(vae, "vae", "a diffusers AutoencoderKL, e.g. the vae/ folder of Stable Diffusion 1.5")
        vae_model = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True, dtype=dtype)
        mean, std = clip_norm_stats(clip_vision)
        return cls(
            config=ckpt.config,
            unet=ckpt.build_unet(dtype).to(device).eval().requires_grad_(False),
            adapter=ckpt.build_adapter(dtype).to(device).eval().requires_grad_(False),
            vae=vae_model.to(device).eval().requires_grad_(False),
            clip=clip, clip_mean=mean, clip_std=std,
        )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """(B, H, W, 3) in [0, 1] -> (B, 4, H/8, W/8) unscaled latents (posterior mean, as ComfyUI's VAE)."""
        dtype = next(self.vae.parameters()).dtype
        out = []
        for i in range(0, images.shape[0], chunk):
            x = images[i : i + chunk].movedim(-1, 1).to(self.device, dtype) * 2 - 1
            out.append(self.vae.encode(x).latent_dist.mode().float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """(B, 4, h, w) unscaled latents -> (B, 8h, 8w, 3) images in [0, 1]."""
        dtype = next(self.vae.parameters()).dtype
        out = []
        for i in range(0, latents.shape[0], chunk):
            x = self.vae.decode(latents[i : i + chunk].to(self.device, dtype)).sample.float()
            out.append(((x + 1) / 2).clamp(0, 1).movedim(1, -1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def appearance_tokens(self, reference: torch.Tensor, reference_latent: torch.Tensor) -> torch.Tensor:
        """(1, H, W, 3) edited reference + its unscaled latent -> (1, 1 + hw/4, C) appearance tokens."""
        tokens = clip_tokens(self.clip, reference, self.clip_mean, self.clip_std)
        dtype = next(self.adapter.parameters()).dtype
        scaled = reference_latent.to(self.device, dtype) * self.config.latent_scale
        return self.adapter(tokens.to(dtype), scaled).float()
