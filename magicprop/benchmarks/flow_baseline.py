"""Classical optical flow (coarse-to-fine Horn & Schunck 1981) for the flow-warp propagation baseline.

What EbSynth-style tools do instead of a diffusion model: carry the edited reference along the source clip's motion.
The benchmark runs it with the synthetic domain's exact flow and with this estimate from the source frames alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..motion.colour import luma


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) image sampled at p + flow(p); flow (B, 2, H, W) in pixels (x, y); borders replicated."""
    b, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=image.dtype), torch.arange(w, dtype=image.dtype), indexing="ij")
    gx = (xs + flow[:, 0] + 0.5) / w * 2 - 1
    gy = (ys + flow[:, 1] + 0.5) / h * 2 - 1
    return F.grid_sample(image, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=False)


def _gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[[[-0.5, 0.0, 0.5]]]], dtype=img.dtype)
    ix = F.conv2d(F.pad(img, (1, 1, 0, 0), mode="replicate"), kx)
    iy = F.conv2d(F.pad(img, (0, 0, 1, 1), mode="replicate"), kx.transpose(2, 3))
    return ix, iy


_AVG = torch.tensor([[[[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]]]])


def horn_schunck(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.02, iterations: int = 60,
                 levels: int = 4) -> torch.Tensor:
    """Backward flow (B, 2, H, W) of frames b: for each pixel of b, where it is in a; a, b: (B, H, W, 3) in [0, 1].

    Coarse-to-fine: at each level a is warped by the current flow and Horn & Schunck's iteration solves for the
    increment (smoothness weight alpha on intensities in [0, 1]). Pairs are solved as one batch.
    """
    ga, gb = luma(a), luma(b)
    pyramid = [(ga[:, None], gb[:, None])]
    for _ in range(levels - 1):
        pa, pb = pyramid[-1]
        if min(pa.shape[-2:]) < 16:
            break
        pyramid.append((F.avg_pool2d(pa, 2), F.avg_pool2d(pb, 2)))
    flow = torch.zeros(ga.shape[0], 2, *pyramid[-1][0].shape[-2:])
    for pa, pb in reversed(pyramid):
        if flow.shape[-2:] != pa.shape[-2:]:
            flow = F.interpolate(flow, size=pa.shape[-2:], mode="bilinear", align_corners=False) * 2
        warped = warp(pa, flow)
        ix, iy = _gradients(warped)
        it = warped - pb
        du = torch.zeros_like(flow)
        denom = alpha**2 + ix**2 + iy**2
        for _ in range(iterations):
            avg = F.conv2d(F.pad(du, (1, 1, 1, 1), mode="replicate"), _AVG.expand(2, 1, 3, 3), groups=2)
            common = (ix * avg[:, :1] + iy * avg[:, 1:] + it) / denom
            du = torch.cat([avg[:, :1] - ix * common, avg[:, 1:] - iy * common], 1)
        flow = flow + du
    return flow


def propagate_by_flow(reference: torch.Tensor, flows_back: list[torch.Tensor]) -> torch.Tensor:
    """Carry the (H, W, 3) reference frame by frame along backward flows (each (2, H, W)): (K, H, W, 3)."""
    frames = [reference]
    x = reference.movedim(-1, 0)[None]
    for flow in flows_back:
        x = warp(x, flow[None])
        frames.append(x[0].movedim(0, -1))
    return torch.stack(frames)
