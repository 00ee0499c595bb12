"""Scoring against ground truth: per-frame PSNR and SSIM, means over windows of frames after the reference, and the
one accumulation of per-clip scores into the per-method figures both benchmarks report; the warp error (temporal
consistency along the source clip's flow) of refined frames."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame PSNR in dB of (K, H, W, 3) images in [0, 1], over the pixels of `mask` (K, H, W) when given.

    Frames whose mask is empty score NaN (`window_means` leaves them out).
    """
    if mask is None:
        mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    else:
        err = ((a.float() - b.float()) ** 2).mean(-1)  # (K, H, W)
        m = mask.float()
        n = m.flatten(1).sum(1)
        mse = torch.where(n > 0, (err * m).flatten(1).sum(1) / n.clamp_min(1), torch.full_like(n, float("nan")))
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Per-frame SSIM (Wang et al. 2004, via kornia; 11x11 Gaussian window) of (K, H, W, 3) images in [0, 1]."""
    import kornia

    return kornia.metrics.ssim(a.movedim(-1, 1).float(), b.movedim(-1, 1).float(), window).flatten(1).mean(1)


def windows(last: int, width: int) -> list[tuple[int, int]]:
    """Windows (first, last) of `width` frames covering frames 1 .. last after the reference (the last may be short)."""
    return [(a, min(a + width - 1, last)) for a in range(1, last + 1, width)]


def window_means(per_frame: torch.Tensor, spans: list[tuple[int, int]]) -> dict[str, float | None]:
    """{"a-b": mean of frames a..b} of a (K,) per-frame metric; NaN frames (nothing scored) are left out, and a
    window with none left is None (JSON null)."""
    out = {}
    for a, b in spans:
        x = per_frame[a : b + 1]
        x = x[torch.isfinite(x)]
        out[f"{a}-{b}"] = float(x.mean()) if x.numel() else None
    return out


def slope_per_100_frames(per_frame: torch.Tensor) -> float:
    """Least-squares slope of a (K,) per-frame metric over frames 1 .. K-1, per 100 frames (drift)."""
    idx = torch.arange(1, per_frame.shape[0], dtype=torch.float32)
    fit = torch.linalg.lstsq(torch.stack([idx, torch.ones_like(idx)], 1), per_frame[1:, None]).solution
    return 100 * float(fit[0])


class Scores:
    """Per-frame PSNR and SSIM of every clip, per method; `summary` averages over clips."""

    def __init__(self, names: Iterable[str]) -> None:
        names = list(names)
        self.psnr: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.ssim: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def add(self, name: str, result: torch.Tensor, truth: torch.Tensor) -> None:
        """Score one method's (K, H, W, 3) result on one clip against its ground truth."""
        self.psnr[name].append(psnr(result, truth))
        self.ssim[name].append(ssim(result, truth))

    def summary(self, name: str, spans: list[tuple[int, int]]) -> tuple[torch.Tensor, dict]:
        """(mean per-frame PSNR, {psnr/ssim per frame and per window}) of one method over its clips."""
        p, s = torch.stack(self.psnr[name]).mean(0), torch.stack(self.ssim[name]).mean(0)
        return p, {"psnr_per_frame": p.tolist(), "ssim_per_frame": s.tolist(),
                   "psnr_windows": window_means(p, spans), "ssim_windows": window_means(s, spans)}


def warp_error(frames: torch.Tensor, motion) -> torch.Tensor:
    """Temporal consistency: per pair (t-1, t), the mean absolute difference between frame t and frame t-1 carried
    to t by the flow, over the pixels valid in both directions (the warp error of Lai et al., "Learning Blind Video
    Temporal Consistency", ECCV 2018, as Rerender-A-Video and FRESCO report it). Lower is steadier.

    frames: (K, H, W, 3) in [0, 1]; motion: the consecutive flow of the SOURCE clip
    (``magicprop.motion.engine.Motion``, K - 1 pairs), so a result is judged against the video's own motion.
    Returns (K - 1,); a pair without valid pixels scores NaN.
    """
    from ..motion.engine import resize_flow, warp

    size = tuple(frames.shape[1:3])
    out = []
    m = motion.to_float()
    for t in range(1, frames.shape[0]):
        back = resize_flow(m.backward[t - 1][None], size)  # flow_{t -> t-1}
        moved = warp(frames[t - 1].permute(2, 0, 1)[None].float(), back)[0].permute(1, 2, 0)
        valid_t = F.interpolate(m.valid_backward[t - 1].float()[None, None], size=size, mode="bilinear",
                                align_corners=False)  # valid on frame t (its flow to t-1 checks out)
        valid_prev = F.interpolate(m.valid_forward[t - 1].float()[None, None], size=size, mode="bilinear",
                                   align_corners=False)  # valid on frame t-1 (its flow to t checks out)
        both = (valid_t >= 0.5) & (warp(valid_prev, back) >= 0.5)  # and the pixel it lands on is valid too
        both = both[0, 0]
        err = (frames[t].float() - moved).abs().mean(-1)
        out.append(err[both].mean() if bool(both.any()) else torch.tensor(float("nan")))
    return torch.stack(out) if out else torch.zeros(0)
