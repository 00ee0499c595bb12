"""FlowRefine on the diffusers backend (the `refine` command's): a Stable Diffusion model's parts loaded from a local
diffusers folder or a single-file checkpoint (``SDModels``), and the ``FrameRefiner`` that samples with them
(``DiffusersRefiner``: DDIM with eta 0, ComfyUI's meaning of steps and denoise, an optional ControlNet hint per
frame). The host's refiner is nodes/refine/refine.py; tests/test_host_refine_parity.py holds them to each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..seeding import frame_noise
from .core import RefineRequest, active, denoise_levels, latent_region, start_level


@dataclass
class SDModels:
    """A Stable Diffusion model's parts on the diffusers backend (the VAE through FrozenEncoders)."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    encoders: object  # magicprop.propdpm.diffusers_backend.FrozenEncoders
    controlnet: torch.nn.Module | None = None

    @classmethod
    def load(cls, model: Path, single_file_config: Path | None = None, controlnet: Path | None = None,
             device: str = "cpu", dtype: torch.dtype = torch.float32) -> SDModels:
        from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from ..propdpm.diffusers_backend import FrozenEncoders

        model = Path(model)
        if model.is_dir():
            kw = {"local_files_only": True}
            unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", dtype=dtype, **kw)
            text = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=dtype, **kw)
            tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
            scheduler = DDIMScheduler.from_pretrained(model, subfolder="scheduler", **kw)
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(model, subfolder="vae", dtype=dtype, **kw)
        else:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_single_file(str(model), config=str(single_file_config),
                                                            local_files_only=True, dtype=dtype,
                                                            safety_checker=None, requires_safety_checker=False)
            unet, text, tokenizer, vae = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae
            scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        cnet = None
        if controlnet is not None:
            cnet = ControlNetModel.from_pretrained(controlnet, local_files_only=True, dtype=dtype)
            cnet = cnet.to(device).eval().requires_grad_(False)
        return cls(unet.to(device).eval().requires_grad_(False), text.to(device).eval().requires_grad_(False),
                   tokenizer, dict(scheduler.config), FrozenEncoders(vae, device=device, dtype=dtype), cnet)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """(1, 77, C) text embeddings (the text encoder's last hidden state, as SD1.x uses it)."""
        ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]


class DiffusersRefiner:
    """FrameRefiner on the diffusers backend: encode, noise to the start timestep, DDIM with cfg (and the frame's
    ControlNet hint), decode."""

    def __init__(self, models: SDModels, prompt: str, negative_prompt: str, steps: int, cfg: float, denoise: float,
                 filled_denoise: float, hints: torch.Tensor | None = None, controlnet_scale: float = 1.0,
                 on_step=None) -> None:
        from diffusers import DDIMScheduler

        if steps < 1:
            raise MagicPropError(f"--steps {steps}: expected at least 1 sampling step.")
        self.models, self.steps, self.cfg = models, steps, float(cfg)
        self.denoise, self.filled_denoise = denoise, filled_denoise
        self.hints, self.scale, self.on_step = hints, controlnet_scale, on_step  # hints: (K, H, W, 3) or None
        self.scheduler = DDIMScheduler.from_config(models.scheduler_config)
        self.context = torch.cat([models.encode_prompt(negative_prompt), models.encode_prompt(prompt)])
        self.latent_scale = models.encoders.latent_scale

    def timesteps(self, denoise: float) -> torch.Tensor:
        """The last `steps` timesteps of a schedule of int(steps / denoise) steps (ComfyUI's denoise)."""
        self.scheduler.set_timesteps(max(self.steps, int(self.steps / denoise)), device=self.models.device)
        return self.scheduler.timesteps[-self.steps:]

    def predict(self, x: torch.Tensor, t: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """Guided noise prediction for the (B, 4, h, w) latents of frames `indices` (each its own hint)."""
        unet, dtype = self.models.unet, next(self.models.unet.parameters()).dtype
        b = x.shape[0]
        inp = self.scheduler.scale_model_input(torch.cat([x, x]), t).to(dtype)
        negative, positive = self.context.to(dtype).chunk(2)
        context = torch.cat([negative.expand(b, -1, -1), positive.expand(b, -1, -1)])  # uncond rows, then cond rows
        extra = {}
        if self.models.controlnet is not None and self.hints is not None:
            rows = [min(k, self.hints.shape[0] - 1) for k in indices]
            hint = self.hints[rows].permute(0, 3, 1, 2).to(inp.device, dtype)
            down, mid = self.models.controlnet(inp, t, encoder_hidden_states=context,
                                               controlnet_cond=torch.cat([hint, hint]),
                                               conditioning_scale=self.scale, return_dict=False)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        uncond, cond = unet(inp, t, encoder_hidden_states=context, **extra).sample.float().chunk(2)
        return uncond + self.cfg * (cond - uncond)

    @torch.no_grad()
    def refine(self, requests: list[RefineRequest]) -> list[torch.Tensor]:
        """Frames that share their denoise (all with a filled region or all without) in one DDIM run, each with its
        own init, noise, levels and hint."""
        enc = self.models.encoders
        images = torch.stack([r.image for r in requests])
        init = enc.encode(images).to(self.models.device) * self.latent_scale  # (B, 4, h, w)
        noise = torch.cat([frame_noise(init.shape[1:], r.seed)[None] for r in requests]).to(init)
        levels = None
        if requests[0].region is None:
            ts = self.timesteps(self.denoise)
        else:
            t_start = self.timesteps(self.denoise)[0] if self.denoise > 0 else None
            ts = self.timesteps(self.filled_denoise)
            level = 0.0 if t_start is None else start_level(float(t_start), float(ts[0]), 0.0)
            levels = torch.cat([denoise_levels(latent_region(r.region, tuple(init.shape[-2:])), level)
                                for r in requests]).to(init)
        x = self.scheduler.add_noise(init, noise, ts[:1])
        keep = None
        indices = [r.index for r in requests]
        for i, t in enumerate(ts):
            if levels is not None:  # pixels below their level stay the input noised to this step (Differential
                keep = active(levels, float(t), float(ts[0]), 0.0)  # Diffusion's hold)
                x = keep * x + (1 - keep) * self.scheduler.add_noise(init, noise, t[None])
            x = self.scheduler.step(self.predict(x, t, indices), t, x, eta=0.0).prev_sample
            if self.on_step is not None:
                self.on_step(i + 1, len(ts))
        if keep is not None:
            x = keep * x + (1 - keep) * init  # never sampled: the input itself
        return list(enc.decode(x / self.latent_scale))
