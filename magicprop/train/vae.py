"""A small AutoencoderKL for a video domain (the synthetic demo's VAE): 4 levels like SD1.5's, so it downsamples
by 8 and loads in ComfyUI, trained as an autoencoder on the posterior mean (what ComfyUI's and the core's encode
use) with an MSE reconstruction loss and a small KL term that keeps the latents bounded (no adversarial loss: the
synthetic domain is smooth). The latent scale is measured on the data, as SD's 0.18215 was.

Measured while choosing this recipe (2 CPU cores, 60 clips): L1 + MSE with gradient clipping at 1.0 plateaued at
~17 dB reconstruction PSNR after 2500 steps; plain MSE without clipping reached 24 dB in 1400 steps."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..benchmarks.seeds import VAE_RUN_STRIDE, VAE_SEED
from ..io.fileio import atomic_path
from ..log import get_logger
from ..propdpm.diffusers_backend import FrozenEncoders

log = get_logger(__name__)


@dataclass
class VAETrainConfig:
    output: str = "runs/vae"
    block_out_channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64])
    layers_per_block: int = 1
    size: int = 128
    crop: int = 64
    """Training crops (the network is convolutional: crops train it for any frame size, 4x faster)."""
    steps: int = 4000
    batch_size: int = 16
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    clips: int = 400
    """Distinct synthetic clips the frames are drawn from (seeds from benchmarks.seeds.VAE_SEED: disjoint from
    PropDPM's)."""
    seed: int = 0


def vae_config(cfg: VAETrainConfig) -> dict:
    n = len(cfg.block_out_channels)
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n, "block_out_channels": list(cfg.block_out_channels),
            "layers_per_block": cfg.layers_per_block, "latent_channels": 4, "norm_num_groups": 32,
            "sample_size": cfg.size, "scaling_factor": 1.0}


def frame_pool(cfg: VAETrainConfig) -> torch.Tensor:
    """(N, 3, H, W) frames in [-1, 1] from `clips` synthetic clips, both appearances (every 3rd frame)."""
    from ..synthetic import SceneConfig, make_clip

    scene = SceneConfig(size=cfg.size)
    frames = []
    for i in range(cfg.clips):
        pair = make_clip(VAE_SEED + cfg.seed * VAE_RUN_STRIDE + i, scene)
        frames += [pair.source.frames[::3], pair.edit.frames[::3]]
    return torch.cat(frames).movedim(-1, 1) * 2 - 1


def train_vae(cfg: VAETrainConfig, progress: bool = True) -> Path:
    """Train and save a diffusers AutoencoderKL folder at cfg.output; returns it."""
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae = AutoencoderKL(**vae_config(cfg)).train()
        pool = frame_pool(cfg)
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.learning_rate, total_steps=cfg.steps, pct_start=0.05)
        g = torch.Generator().manual_seed(cfg.seed)
        bar = tqdm(range(cfg.steps), desc="train vae", unit="step", disable=not progress)
        for _ in bar:
            x = pool[torch.randint(len(pool), (cfg.batch_size,), generator=g)]
            if cfg.crop < cfg.size:
                top, left = (int(v) for v in torch.randint(cfg.size - cfg.crop + 1, (2,), generator=g))
                x = x[..., top : top + cfg.crop, left : left + cfg.crop]
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.mode()).sample
            loss = F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
    encoders = FrozenEncoders(vae)  # encode and decode as inference does (posterior mean)
    images = (pool.movedim(1, -1) + 1) / 2
    latents = encoders.encode(images[:512], chunk=64)
    recon = encoders.decode(encoders.encode(images[:256], chunk=64), chunk=64)
    scale = float(1.0 / latents.std())
    mse = F.mse_loss(recon, images[: len(recon)]).item()
    vae.register_to_config(scaling_factor=round(scale, 5))
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out)
    with atomic_path(out / "training.json") as p:
        p.write_text(json.dumps({**asdict(cfg), "scaling_factor": scale,
                                 "reconstruction_psnr_db": -10 * torch.log10(torch.tensor(mse)).item()}, indent=1))
    log.info("VAE saved to %s (scaling factor %.4f, reconstruction PSNR %.2f dB)", out, scale,
             -10 * torch.log10(torch.tensor(mse)).item())
    return out
