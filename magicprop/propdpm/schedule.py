"""Noise schedule, parameterisation and guidance.

PropDPM is trained with v-prediction on a zero-terminal-SNR schedule (MagicProp section 3.3.2, after Lin et al. 2023,
"Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891): the last timestep is pure noise,
so sampling starts from pure noise with trailing timestep spacing. The schedule itself is diffusers' (SD1.5's
scaled-linear betas rescaled by Algorithm 1 of Lin et al.); this module adds the conversions and guidance that both
backends share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import MagicPropError


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule (saved in the checkpoint)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    """SD1.5's schedule before the zero-terminal-SNR rescale."""
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleConfig:
        return cls(**data)

    def diffusers_kwargs(self) -> dict[str, Any]:
        return dict(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            rescale_betas_zero_snr=self.zero_terminal_snr,
        )


def train_scheduler(cfg: ScheduleConfig):
    """diffusers DDPMScheduler that adds training noise on this schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**cfg.diffusers_kwargs(), clip_sample=False)


def sample_scheduler(cfg: ScheduleConfig):
    """diffusers DDIMScheduler, trailing spacing (first step at t = T-1, pure noise), eta 0 by default."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        **cfg.diffusers_kwargs(),
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="trailing",
    )


def alphas_cumprod(cfg: ScheduleConfig) -> torch.Tensor:
    """alpha_bar_t for t = 0 .. T-1 (float32); alpha_bar_{T-1} == 0 exactly with zero terminal SNR."""
    return train_scheduler(cfg).alphas_cumprod.clone()


def _ab(alpha_bar: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(alpha_bar, dtype=like.dtype, device=like.device)
    while a.ndim < like.ndim:
        a = a.unsqueeze(-1)
    return a.sqrt(), (1 - a).sqrt()


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """v = sqrt(a) eps - sqrt(1-a) x0 (Salimans & Ho 2022; MagicProp eq. in section 3.3.2)."""
    a, s = _ab(alpha_bar, x0)
    return a * eps - s * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """x0 = sqrt(a) x_t - sqrt(1-a) v."""
    a, s = _ab(alpha_bar, x_t)
    return a * x_t - s * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """eps = sqrt(1-a) x_t + sqrt(a) v."""
    a, s = _ab(alpha_bar, x_t)
    return s * x_t + a * v


def guide(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float = 0.0
) -> torch.Tensor:
    """Classifier-free guidance on the appearance tokens, with optional guidance rescale.

    cfg = uncond + scale (cond - uncond). With rescale phi > 0, Lin et al. 2023 section 3.4 (eq. 15-16):
    the guided prediction is rescaled to the per-sample standard deviation of the conditional one and mixed,
    out = phi * cfg * std(cond) / std(cfg) + (1 - phi) * cfg. Applied to v, the model's own output.
    """
    if not 0.0 <= rescale <= 1.0:
        raise MagicPropError(f"guidance_rescale={rescale}: expected a value in [0, 1] (0 = off, 0.7 = Lin et al.).")
    guided = uncond + scale * (cond - uncond)
    if rescale == 0.0:
        return guided
    dims = tuple(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return rescale * guided * (std_cond / std_guided) + (1 - rescale) * guided
