"""Zero-terminal-SNR schedule, v-parameterisation, trailing timesteps and guidance (Lin et al. 2023)."""

from __future__ import annotations

import pytest
import torch

from magicprop.errors import MagicPropError
from magicprop.propdpm.schedule import (
    ScheduleConfig,
    alphas_cumprod,
    eps_from_v,
    guide,
    sample_scheduler,
    train_scheduler,
    v_target,
    x0_from_v,
)


def test_terminal_alpha_bar_is_exactly_zero():
    cfg = ScheduleConfig()
    ab = alphas_cumprod(cfg)
    assert ab[-1].item() == 0.0
    assert sample_scheduler(cfg).alphas_cumprod[-1].item() == 0.0
    assert train_scheduler(cfg).alphas_cumprod[-1].item() == 0.0
    assert torch.all(ab[1:] < ab[:-1]), "alpha_bar must decrease"
    # the rescale keeps the first step of SD1.5's schedule
    plain = train_scheduler(ScheduleConfig(zero_terminal_snr=False)).alphas_cumprod
    assert abs(ab[0].item() - plain[0].item()) < 1e-6 and plain[-1] > 0


def test_trailing_timesteps_start_at_pure_noise():
    s = sample_scheduler(ScheduleConfig())
    s.set_timesteps(10)
    assert s.timesteps[0].item() == 999
    assert s.timesteps.tolist() == sorted(s.timesteps.tolist(), reverse=True)
    assert s.timesteps[-1].item() == 99


@pytest.mark.parametrize("alpha_bar", [0.0, 1e-4, 0.3, 0.9, 0.9999])
def test_v_x0_eps_conversions_are_consistent(alpha_bar):
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    a = torch.tensor(alpha_bar)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = v_target(x0, eps, a)
    torch.testing.assert_close(x0_from_v(x_t, v, a), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_from_v(x_t, v, a), eps, atol=1e-5, rtol=1e-5)
    # diffusers' own v target agrees
    sched = train_scheduler(ScheduleConfig())
    t = torch.tensor([999, 500])
    v_d = sched.get_velocity(x0, eps, t)
    torch.testing.assert_close(v_d, v_target(x0, eps, sched.alphas_cumprod[t]), atol=1e-6, rtol=1e-6)


def test_pure_noise_step_predicts_minus_v():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 4, 4, 4, generator=g)
    torch.testing.assert_close(x0_from_v(torch.randn(1, 4, 4, 4, generator=g), v, 0.0), -v)


def test_guidance_and_rescale_match_their_formulas():
    torch.manual_seed(0)
    cond, uncond = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(guide(cond, uncond, 1.0), cond)
    cfg = uncond + 5.0 * (cond - uncond)
    torch.testing.assert_close(guide(cond, uncond, 5.0), cfg)
    phi = 0.7
    rescaled = cfg * cond.std(dim=(1, 2, 3), keepdim=True) / cfg.std(dim=(1, 2, 3), keepdim=True)
    expected = phi * rescaled + (1 - phi) * cfg
    out = guide(cond, uncond, 5.0, phi)
    torch.testing.assert_close(out, expected)
    # full rescale gives each sample exactly the conditional prediction's standard deviation
    full = guide(cond, uncond, 5.0, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    with pytest.raises(MagicPropError, match="guidance_rescale"):
        guide(cond, uncond, 5.0, 1.5)
