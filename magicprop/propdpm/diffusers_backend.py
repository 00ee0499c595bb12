"""The host-free backend: PropDPM with diffusers' UNet and schedulers (CLI, trainer, benchmarks, tests).

Sampling uses DDIM with trailing timesteps on the zero-terminal-SNR schedule (Lin et al. 2023, section 3.3), from
pure noise, with v-prediction; guidance on the appearance tokens as in ``magicprop.propdpm.schedule.guide``. The frozen
encoders (VAE and CLIP vision) are one class, ``FrozenEncoders``, for inference, training and validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..io.fileio import model_folder
from ..seeding import frame_noise
from .adapter import AppearanceAdapter, null_tokens
from .checkpoint import load_checkpoint
from .clip import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ClipSpec,
    check_clip_compatible,
    clip_norm_stats,
    clip_spec_of,
    clip_tokens,
    load_clip_vision,
    projection_fingerprint,
)
from .conditioning import condition_for
from .config import PropDPMConfig
from .loop import FrameRequest, Job, denoise_frame
from .schedule import guide, sample_scheduler


class DiffusersDenoiser:
    """FrameDenoiser on a diffusers UNet2DConditionModel: deterministic DDIM (trailing) from pure noise."""

    def __init__(
        self,
        unet,
        config: PropDPMConfig,
        positive: torch.Tensor,
        steps: int = 20,
        cfg: float = 1.0,
        guidance_rescale: float = 0.0,
    ) -> None:
        if steps < 1:
            raise MagicPropError(f"steps={steps}: expected at least 1 sampling step.")
        self.unet, self.config = unet, config
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.positive = positive.to(self.device, self.dtype)
        self.negative = null_tokens(positive).to(self.device, self.dtype)
        self.steps, self.cfg, self.rescale = steps, float(cfg), float(guidance_rescale)
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

    def _shares_sampler(self, other: DiffusersDenoiser) -> bool:
        """Whether `other` samples as this one does (same UNet, steps, guidance): one call can serve both."""
        return (other.unet is self.unet and other.steps == self.steps and other.cfg == self.cfg
                and other.rescale == self.rescale and other.positive.shape[1:] == self.positive.shape[1:])

    def denoise(self, jobs: Sequence[Job]) -> torch.Tensor:
        """FrameDenoiser: one DDIM run for the frames of `jobs`, each with its own denoiser's appearance (one frame:
        this denoiser's own); denoisers that sample differently run one call each."""
        if len(jobs) == 1:
            return self.batch([jobs[0][1]])
        if not all(self._shares_sampler(d) for d, _ in jobs) or (
                self.cfg != 1.0 and any(not torch.equal(d.negative, self.negative) for d, _ in jobs)):
            return torch.cat([denoise_frame(d, r) for d, r in jobs])
        return self.batch([r for _, r in jobs], torch.cat([d.positive for d, _ in jobs]))

    @torch.no_grad()
    def batch(self, requests: list[FrameRequest], positive: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise several frames at once, each with its own request (and appearance row of `positive`; the
        unconditional appearance is the null tokens, zeros)."""
        cond = torch.cat([condition_for(r, self.config) for r in requests]).to(self.device)
        x = torch.cat([frame_noise(r.prev_latent.shape, r.seed) for r in requests]).to(self.device)
        x = x * self.scheduler.init_noise_sigma
        if positive is not None:
            positive = positive.to(self.device, self.dtype)
        for t in self.scheduler.timesteps:
            v = self.predict(self.scheduler.scale_model_input(x, t), t, cond, positive)
            x = self.scheduler.step(v, t, x, eta=0.0).prev_sample
        return (x / self.config.latent_scale).to(requests[0].prev_latent.dtype)


def check_clip_model(model, spec: ClipSpec) -> None:
    """check_clip_compatible for a transformers CLIPVisionModelWithProjection."""
    cfg = model.config
    grid = cfg.image_size // cfg.patch_size
    fingerprint = projection_fingerprint(model.visual_projection.weight)
    check_clip_compatible(spec, cfg.projection_dim, 1 + grid * grid, fingerprint)


def vae_folder(path: str | Path, what: str = "vae") -> Path:
    """A local diffusers AutoencoderKL folder, or one MagicPropError line naming `what` (checked before loading)."""
    return model_folder(path, what, "a diffusers AutoencoderKL, e.g. the vae/ folder of Stable Diffusion 1.5",
                        kinds=("AutoencoderKL",))


class FrozenEncoders:
    """The frozen models around PropDPM: the VAE (latents <-> images) and CLIP vision (reference tokens).

    Each is given as a local folder (a diffusers AutoencoderKL, a transformers CLIPVisionModelWithProjection) or as
    a loaded module; `clip_vision` may be None where no tokens are needed (the VAE trainer).
    """

    def __init__(
        self, vae: str | Path | torch.nn.Module, clip_vision: str | Path | torch.nn.Module | None = None,
        device: torch.device | str = "cpu", clip_name: str | None = None, dtype: torch.dtype = torch.float32,
        vae_input: str = "vae",
    ) -> None:
        """`vae_input` names the input the VAE folder came from, for error messages (e.g. "model.vae")."""
        if isinstance(vae, torch.nn.Module):
            self.vae = vae
        else:
            from diffusers import AutoencoderKL

            folder = vae_folder(vae, vae_input)
            self.vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, dtype=dtype)
        self.vae = self.vae.to(device).eval().requires_grad_(False)
        self.clip, self.mean, self.std = None, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        if isinstance(clip_vision, torch.nn.Module):
            self.clip = clip_vision.to(device).eval().requires_grad_(False)
        elif clip_vision is not None:
            self.clip = load_clip_vision(clip_vision, device, dtype)
            self.mean, self.std = clip_norm_stats(clip_vision)
        self.clip_name = clip_name
        self.latent_scale = float(self.vae.config.scaling_factor)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def clip_spec(self) -> ClipSpec:
        """What a checkpoint records about this CLIP vision model."""
        return clip_spec_of(self.clip, self.clip_name) if self.clip_name else clip_spec_of(self.clip)

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
    def clip_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) in [0, 1] -> (B, 1+N, C) projected CLIP tokens (``magicprop.propdpm.clip.clip_tokens``)."""
        if self.clip is None:
            raise MagicPropError("these encoders have no CLIP vision model: pass clip_vision to make tokens.")
        return clip_tokens(self.clip, images, self.mean, self.std)

    @torch.no_grad()
    def appearance_tokens(self, adapter: AppearanceAdapter, reference: torch.Tensor, reference_latent: torch.Tensor,
                          latent_scale: float) -> torch.Tensor:
        """(1, H, W, 3) edited reference + its unscaled latent -> (1, 1 + hw/4, C) appearance tokens."""
        tokens = self.clip_tokens(reference)
        param = next(adapter.parameters())
        scaled = reference_latent.to(param.device, param.dtype) * latent_scale
        return adapter(tokens.to(param.dtype), scaled).float()


@dataclass
class StandaloneModels:
    """A PropDPM (UNet, adapter, its checkpoint config) with its frozen encoders: everything a host-free run needs."""

    config: PropDPMConfig
    unet: torch.nn.Module
    adapter: AppearanceAdapter
    encoders: FrozenEncoders

    @classmethod
    def load(
        cls, checkpoint: str | Path, vae: str | Path, clip_vision: str | Path,
        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> StandaloneModels:
        ckpt = load_checkpoint(checkpoint)
        encoders = FrozenEncoders(vae, clip_vision, device, dtype=dtype)
        check_clip_model(encoders.clip, ckpt.config.clip)
        return cls(
            config=ckpt.config,
            unet=ckpt.build_unet(dtype).to(device).eval().requires_grad_(False),
            adapter=ckpt.build_adapter(dtype).to(device).eval().requires_grad_(False),
            encoders=encoders,
        )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def encode(self, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        return self.encoders.encode(images, chunk)

    def decode(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        return self.encoders.decode(latents, chunk)

    def appearance_tokens(self, reference: torch.Tensor, reference_latent: torch.Tensor) -> torch.Tensor:
        """(1, H, W, 3) edited reference + its unscaled latent -> (1, 1 + hw/4, C) appearance tokens."""
        return self.encoders.appearance_tokens(self.adapter, reference, reference_latent, self.config.latent_scale)

    def denoiser(self, reference: torch.Tensor, reference_latent: torch.Tensor, steps: int = 20, cfg: float = 1.0,
                 guidance_rescale: float = 0.0) -> DiffusersDenoiser:
        """The FrameDenoiser carrying one edited reference's appearance."""
        tokens = self.appearance_tokens(reference, reference_latent)
        return DiffusersDenoiser(self.unet, self.config, tokens, steps, cfg, guidance_rescale)
