"""The edit as a learned translation of each pixel's neighbourhood, trained on the reference pair alone.

A colour mapping explains an edit that is a function of each pixel's colour; a painterly filter, a pencil sketch or
an oil painting is a function of the pixel's neighbourhood. Like few-shot patch-based training (Texler et al.,
"Interactive Video Stylization Using Few-Shot Patch-Based Training", SIGGRAPH 2020) the edit is learned at run time
from the one pair (source keyframe, edited keyframe) and then applied to any frame's own content, so content the
reference never showed gets the edit's look instead of a colour-graded photo. To train in seconds on a CPU, the
neighbourhood is described by a fixed bank of multi-scale filters (Gaussian octaves and their differences, luma
gradients, local contrast and its normalisation: the classical texture features) and only a small per-pixel network
on top of them is learned; it predicts the residual of the edit over the global colour mapping (`colour.EditMapping`),
so it starts from the colour fill and adds what the neighbourhood explains. A position-tied edit (a painted decal) is
not a function of content: that stays with the flow.

Deterministic for a seed on one device (seeded initialisation and pixel sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MagicPropError
from ..log import get_logger
from .colour import BT601, EditMapping

log = get_logger(__name__)

SCALES = (1, 2, 4, 8)
"""Gaussian octaves (pixels, at a frame's long side of SCALE_SIDE or less) of the feature bank."""
RATIOS = (2, 8, 32)
SCALE_SIDE = 640
"""Frames with a longer side than this get proportionally wider filters (the edit's texture scales with the frame)."""
HIDDEN = 64
"""Units of each of the network's two hidden layers."""
STEPS = 400
"""Training steps on the reference pair."""
BATCH = 8192
"""Pixels per training step."""
CHUNK = 1 << 16
"""Pixels per inference step (memory flat in frame size)."""


def _gauss(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (1, C, H, W), reflected at the borders."""
    r = max(1, min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def features(source: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) source frame and its colour mapping -> (1, C, H, W) the neighbourhood's features."""
    s = max(1.0, max(source.shape[-2:]) / SCALE_SIDE)
    y = (source * torch.tensor(BT601, device=source.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    out = [source, mapped]
    prev = source
    for n, sigma in enumerate(SCALES):  # a Laplacian-like stack: the coarsest level's colour, band-passes below
        g = _gauss(source, sigma * s)
        out.append(g if n == 0 else g - prev)
        prev = g
    for sigma in (1, 2, 4):  # luma gradients
        gy = _gauss(y, sigma * s)
        dx = F.pad(gy[..., :, 2:] - gy[..., :, :-2], (1, 1, 0, 0), mode="replicate")
        dy = F.pad(gy[..., 2:, :] - gy[..., :-2, :], (0, 0, 1, 1), mode="replicate")
        out += [dx, dy, (dx * dx + dy * dy).sqrt()]
    for sigma in (2, 8):  # local contrast
        m = _gauss(y, sigma * s)
        out.append((_gauss(y * y, sigma * s) - m * m).clamp_min(0).sqrt())
    for sigma in RATIOS:  # luma against its surround (a dodge, a local tone curve)
        out.append(y / (_gauss(y, sigma * s) + 0.05))
    return torch.cat(out, 1)


@dataclass
class EditTranslation:
    """A per-pixel network on the feature bank, trained on one reference pair over its global colour mapping;
    `apply` has `EditMapping.apply`'s contract."""

    mapping: EditMapping
    net: nn.Module
    mean: torch.Tensor  # (C,) feature normalisation, from the reference
    std: torch.Tensor
    device: torch.device
    gain: float  # its L1 error on the reference pair as a share of the colour mapping's (below 1: it explains more)

    @torch.no_grad()
    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        """(K, H, W, 3) or (H, W, 3) source frames in [0, 1] -> the edit's look, same shape, float32, on the CPU."""
        single = frames.ndim == 3
        frames = frames[None] if single else frames
        mapped = self.mapping.apply(frames)
        out = torch.empty(mapped.shape, dtype=torch.float32)
        for i in range(frames.shape[0]):
            m = mapped[i].permute(2, 0, 1)[None].to(self.device)
            f = features(frames[i].float().permute(2, 0, 1)[None].to(self.device), m)
            out[i] = (m + self._residual(f)).clamp(0, 1)[0].permute(1, 2, 0).cpu()
        return out[0] if single else out

    def _residual(self, f: torch.Tensor) -> torch.Tensor:
        c, h, w = f.shape[1:]
        x = f[0].reshape(c, -1).T
        r = torch.cat([self.net((x[i:i + CHUNK] - self.mean) / self.std) for i in range(0, x.shape[0], CHUNK)])
        return r.T.reshape(1, 3, h, w)


def fit_edit_translation(source: torch.Tensor, edited: torch.Tensor, mapping: EditMapping,
                         mask: torch.Tensor | None = None, seed: int = 0, steps: int = STEPS,
                         device: torch.device | str = "cpu") -> EditTranslation:
    """Train the per-pixel network on the pair source (H, W, 3) -> edited (H, W, 3) in [0, 1], over `mapping`;
    mask (H, W): where the edit applies (only those pixels are learned from)."""
    h, w, _ = source.shape
    if min(h, w) < 8:
        raise MagicPropError(f"learned fill: the reference is {w}x{h}; expected at least 8x8 pixels to learn the "
                             "edit's look from.")
    device = torch.device(device)
    # a host may run nodes under inference mode or no_grad: training needs autograd, on tensors made here
    with torch.inference_mode(False), torch.enable_grad():
        net, x, y, mean, std = _train(source.clone(), edited.clone(), mapping, None if mask is None else mask.clone(),
                                      seed, steps, device)
    net = net.eval().requires_grad_(False)
    with torch.no_grad():  # what the network explains beyond the colour mapping, on the pair itself
        learned = sum(float((net(x[i:i + CHUNK]) - y[i:i + CHUNK]).abs().sum()) for i in range(0, x.shape[0], CHUNK))
    gain = learned / max(float(y.abs().sum()), 1e-12)
    log.debug("learned fill: %d steps on the %dx%d reference pair, L1 %.3f of the colour mapping's", steps, w, h, gain)
    return EditTranslation(mapping, net, mean, std, device, gain)


def _train(source: torch.Tensor, edited: torch.Tensor, mapping: EditMapping, mask: torch.Tensor | None, seed: int,
           steps: int, device: torch.device) -> tuple[nn.Module, torch.Tensor, ...]:
    """The network trained on the pair; with the normalised training pixels (x, y) and the normalisation."""
    gen = torch.Generator().manual_seed(seed)
    mapped = mapping.apply(source.float()).permute(2, 0, 1)[None].to(device)
    f = features(source.float().permute(2, 0, 1)[None].to(device), mapped)
    c = f.shape[1]
    x = f[0].reshape(c, -1).T
    y = (edited.float().permute(2, 0, 1)[None].to(device) - mapped)[0].reshape(3, -1).T
    if mask is not None:
        keep = (mask.float().reshape(-1) > 0.5).to(device)
        x, y = x[keep], y[keep]
    mean, std = x.mean(0), x.std(0) + 1e-4
    x = (x - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(c, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                            nn.Linear(HIDDEN, 3)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(BATCH, x.shape[0]),), generator=gen).to(device)
        loss = (net(x[idx]) - y[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net, x, y, mean, std
