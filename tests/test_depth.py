"""Clip depth alignment: temporally consistent, one scale per clip, robust to content entering, safe on bad input."""

from __future__ import annotations

import math

import pytest
import torch

from magicprop.errors import MagicPropError
from magicprop.io.images import resize_width
from magicprop.io.video import read_frames
from magicprop.propdpm.depth import align_clip_depth, align_to, depth_to_latent_grid, fit_scale_shift


def pseudo_depth_clip(bikes, frames: int = 24):
    """Luminance of bikes.mp4 as pseudo-depth, with a near disc entering from the left over frames 8-15."""
    rgb = resize_width(read_frames(bikes, max_frames=frames), 160)  # (K, 68, 160, 3)
    truth = (rgb * torch.tensor([0.299, 0.587, 0.114])).sum(-1)  # (K, H, W) in [0, 1]
    k, h, w = truth.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    covered = torch.zeros(k, h, w, dtype=torch.bool)
    for i in range(8, 16):
        cx = -20 + (i - 8) * 12
        disc = (xx - cx) ** 2 + (yy - h // 2) ** 2 < 26**2
        covered[i] = disc
        truth[i][disc] = 1.6 - 0.002 * (xx[disc] - cx).abs()  # nearer than anything else
    g = torch.Generator().manual_seed(0)
    scale = torch.empty(k).uniform_(0.5, 2.0, generator=g)
    shift = torch.empty(k).uniform_(-1.0, 1.0, generator=g)
    jittered = scale[:, None, None] * truth + shift[:, None, None]
    return truth, jittered, covered


def _normalise(x):
    return (x - x.min()) / (x.max() - x.min())


def test_alignment_removes_per_frame_jitter(bikes):
    truth, jittered, covered = pseudo_depth_clip(bikes)
    out = align_clip_depth(jittered)[:, 0]
    assert out.shape == truth.shape and out.min() >= 0 and out.max() <= 1
    never = ~covered.any(0)  # pixels the object never covers
    change_in = (_normalise(jittered)[1:] - _normalise(jittered)[:-1]).abs()[:, never].mean()
    change_out = (out[1:] - out[:-1]).abs()[:, never].mean()
    change_true = (_normalise(truth)[1:] - _normalise(truth)[:-1]).abs()[:, never].mean()
    assert change_in >= 5 * change_out, (change_in, change_out)
    assert change_out <= 2 * change_true  # what remains is the clip's own motion
    # one global affine maps the whole output onto the un-jittered depth
    a = torch.stack([out.flatten(), torch.ones(out.numel())], 1)
    coef = torch.linalg.lstsq(a, truth.flatten()[:, None]).solution
    mapped = (a @ coef).reshape(truth.shape)
    for k in range(truth.shape[0]):
        corr = torch.corrcoef(torch.stack([mapped[k].flatten(), truth[k].flatten()]))[0, 1]
        r2 = 1 - ((mapped[k] - truth[k]) ** 2).sum() / ((truth[k] - truth[k].mean()) ** 2).sum()
        assert corr >= 0.99 and r2 >= 0.98, (k, corr.item(), r2.item())
    assert out[covered].mean() > 0.9, "the entering object is the nearest thing (near = 1)"


def test_constant_and_non_finite_input_give_finite_output():
    const = align_clip_depth(torch.full((5, 16, 16), 3.0))
    assert torch.isfinite(const).all() and torch.allclose(const, torch.full_like(const, 0.5))
    g = torch.Generator().manual_seed(0)
    base = torch.rand(20, 20, generator=g)
    clip = base * torch.linspace(1, 3, 7)[:, None, None] + torch.linspace(0, 1, 7)[:, None, None]
    clip[2, :5] = float("nan")
    clip[3, 0, 0] = float("inf")
    clip[4] = float("-inf")  # a whole frame lost
    clip[5] = 7.0  # a constant frame must not poison the frames after it
    out = align_clip_depth(clip)[:, 0]
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    for k in (1, 3, 6):  # same content at another scale and shift: aligned onto frame 0
        torch.testing.assert_close(out[k][torch.isfinite(clip[k])], out[0][torch.isfinite(clip[k])], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[2, 5:], out[0, 5:], atol=1e-4, rtol=0)
    first_constant = torch.cat([torch.zeros(1, 8, 8), torch.rand(3, 8, 8, generator=g)])
    assert torch.isfinite(align_clip_depth(first_constant)).all()
    with pytest.raises(MagicPropError, match="non-empty"):
        align_clip_depth(torch.zeros(0, 8, 8))


def test_robust_fit_ignores_outliers():
    x = torch.rand(5000, generator=torch.Generator().manual_seed(0))
    y = 2.5 * x - 0.7
    y[:1200] = 5.0  # 24% of the pixels changed content
    s, t = fit_scale_shift(x, y)
    assert math.isclose(s.item(), 2.5, abs_tol=1e-3) and math.isclose(t.item(), -0.7, abs_tol=1e-3)


def test_align_to_places_a_new_map_on_the_clip_scale():
    target = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(align_to(target * 4 + 1, target), target, atol=1e-5, rtol=0)


def test_latent_grid_resize_is_antialiased():
    stripes = torch.zeros(1, 1, 64, 64)
    stripes[..., ::2] = 1.0
    small = depth_to_latent_grid(stripes, (8, 8))
    assert small.shape == (1, 1, 8, 8)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05), "aliasing would keep the stripes"
