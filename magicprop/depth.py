"""Clip-consistent depth: the motion signal of PropDPM (MagicProp section 3.2).

Monocular depth models (and ComfyUI's depth preprocessors) give each frame its own unknown scale and shift, so raw
per-frame maps flicker. The paper used TCMonoDepth for temporally consistent depth; any estimator can be used here
because the clip is aligned afterwards:

1. each frame's scale and shift are fitted by robust least squares (Tukey-biweight IRLS, started from a median/IQR
   match) to its already aligned predecessor; pixels whose content changed (an object entering or leaving, motion
   edges) get zero weight;
2. ONE affine normalisation for the whole clip maps it to [0, 1], near = 1;
3. the maps are resized to the latent grid with antialiasing (kornia).

Convention: relative inverse depth (disparity), larger = nearer, as ComfyUI depth preprocessors and DPT / Depth
Anything produce. Non-finite pixels are ignored by the fit and filled afterwards; constant input stays finite.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from .errors import MagicPropError
from .fileio import model_folder

log = logging.getLogger(__name__)

TUKEY_C = 4.685  # 95% efficiency under Gaussian noise
_EPS = 1e-8


def _spread(x: torch.Tensor) -> torch.Tensor:
    q = torch.quantile(x, torch.tensor([0.25, 0.75], dtype=x.dtype, device=x.device))
    return q[1] - q[0]


def fit_scale_shift(
    x: torch.Tensor, y: torch.Tensor, iterations: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust (s, t) minimising rho(s*x + t - y) over paired samples x, y (1-D, finite).

    Started from the median / inter-quartile match, refined by iteratively reweighted least squares with Tukey's
    biweight on residuals scaled by their median absolute deviation. A degenerate x (no spread) gives s = 0 and
    t = median(y): a constant frame is placed at its neighbour's typical depth.
    """
    sx, sy = _spread(x), _spread(y)
    if sx <= _EPS * (1 + sy):
        return x.new_zeros(()), y.median()
    s = sy / sx
    t = y.median() - s * x.median()
    for _ in range(iterations):
        r = s * x + t - y
        sigma = 1.4826 * (r - r.median()).abs().median()
        sigma = torch.clamp(sigma, min=_EPS * (1 + sy))
        u = r / (TUKEY_C * sigma)
        w = torch.where(u.abs() < 1, (1 - u * u) ** 2, torch.zeros_like(u))
        sw = w.sum()
        if sw <= 0:
            break
        mx, my = (w * x).sum() / sw, (w * y).sum() / sw
        var = (w * (x - mx) ** 2).sum()
        if var <= _EPS:
            break
        s = (w * (x - mx) * (y - my)).sum() / var
        t = my - s * mx
    return s, t


def align_clip_depth(
    depth: torch.Tensor, max_samples: int = 65536, iterations: int = 10
) -> torch.Tensor:
    """(K, H, W) or (K, 1, H, W) relative inverse depth -> (K, 1, H, W) clip-consistent depth in [0, 1], near = 1.

    The first frame with depth variation anchors the chain; every other frame is fitted to its aligned neighbour
    towards the anchor, on a fixed grid of at most `max_samples` pixels where both are finite.
    """
    if depth.ndim == 4:
        if depth.shape[1] != 1:
            raise MagicPropError(f"depth has shape {tuple(depth.shape)}: expected (K, H, W) or (K, 1, H, W).")
        depth = depth[:, 0]
    if depth.ndim != 3 or depth.shape[0] == 0:
        raise MagicPropError(
            f"depth has shape {tuple(depth.shape)}: expected a non-empty clip of depth maps (K, H, W)."
        )
    d = depth.detach().to(torch.float32)
    k_frames, h, w = d.shape
    finite = torch.isfinite(d)
    d = torch.where(finite, d, torch.zeros_like(d))
    # work in units of the clip's own magnitude, so the degeneracy thresholds mean the same for any model's range
    magnitude = d[finite].abs().max() if finite.any() else d.new_zeros(())
    if magnitude > 0:
        d = d / magnitude
    stride = max(1, int((h * w / max_samples) ** 0.5))
    grid_d, grid_ok = d[:, ::stride, ::stride], finite[:, ::stride, ::stride]
    informative = [bool(grid_ok[k].sum() >= 16) and bool(_spread(grid_d[k][grid_ok[k]]) > _EPS) for k in range(k_frames)]
    anchor = informative.index(True) if any(informative) else 0
    aligned = d.clone()
    # chain outwards from the anchor; a frame is fitted to the latest informative aligned frame before it, so a
    # constant or empty frame (a fade, a dropped frame) never becomes the reference of the frames after it
    for order in (range(anchor + 1, k_frames), range(anchor - 1, -1, -1)):
        ref = anchor
        for k in order:
            ok = grid_ok[k] & grid_ok[ref]
            if ok.sum() >= 16:
                s, t = fit_scale_shift(grid_d[k][ok], aligned[ref, ::stride, ::stride][ok], iterations)
                aligned[k] = s * d[k] + t
            if informative[k]:
                ref = k
    if not finite.any():
        return torch.full((k_frames, 1, h, w), 0.5)
    lo, hi = aligned[finite].min(), aligned[finite].max()
    out = (aligned - lo) / (hi - lo) if hi - lo > _EPS else torch.full_like(aligned, 0.5)
    out = out.clamp(0, 1)
    # pixels that were not finite take their frame's median aligned depth
    for k in torch.nonzero(~finite.flatten(1).all(1)).flatten().tolist():
        fill = out[k][finite[k]].median() if finite[k].any() else out.new_tensor(0.5)
        out[k] = torch.where(finite[k], out[k], fill)
    return out.unsqueeze(1)


def align_to(depth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(H, W) relative inverse depth placed on the scale of an aligned (H, W) map in [0, 1] (robust fit)."""
    ok = torch.isfinite(depth) & torch.isfinite(target)
    if ok.sum() < 16:
        raise MagicPropError("depth map to align has fewer than 16 finite pixels in common with its target.")
    s, t = fit_scale_shift(depth[ok].float(), target[ok].float())
    out = torch.where(torch.isfinite(depth), s * depth + t, target)
    return out.clamp(0, 1)


def depth_to_latent_grid(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, 1, H, W) depth -> (K, 1, h, w) at the latent grid, antialiased (kornia)."""
    import kornia

    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return kornia.geometry.transform.resize(depth, size, interpolation="bilinear", antialias=True).clamp(0, 1)


def depth_from_image(images: torch.Tensor) -> torch.Tensor:
    """(K, H, W, 3) depth images (e.g. from a ComfyUI preprocessor, near = bright) -> (K, H, W) values."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise MagicPropError(
            f"depth images have shape {tuple(images.shape)}: expected (K, H, W, 3) IMAGE depth maps, near = bright."
        )
    return images[..., :3].to(torch.float32).mean(-1)


# -- monocular depth estimation with transformers ----------------------------------------------------------------

DEPTH_OUTPUT_KIND = {
    # model_type -> what predicted_depth holds
    "dpt": "inverse",
    "depth_anything": "inverse",
    "glpn": "metric",
    "zoedepth": "metric",
    "depth_pro": "metric",
}


class DepthEstimator:
    """A local transformers depth-estimation model (AutoModelForDepthEstimation) giving relative inverse depth."""

    def __init__(self, model, processor, output_kind: str) -> None:
        self.model = model
        self.processor = processor
        self.output_kind = output_kind

    @classmethod
    def from_folder(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        output_kind: str | None = None,
    ) -> "DepthEstimator":
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        folder = model_folder(path, "depth model", "a transformers depth-estimation model with its "
                              "preprocessor_config.json, e.g. a saved depth-anything/Depth-Anything-V2-Small-hf")
        model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True, dtype=dtype)
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        kind = output_kind or DEPTH_OUTPUT_KIND.get(model.config.model_type)
        if kind not in ("inverse", "metric"):
            raise MagicPropError(
                f"depth model type {model.config.model_type!r} is not known: known types are "
                f"{sorted(DEPTH_OUTPUT_KIND)}; pass output_kind='inverse' (disparity, near = large) or 'metric'."
            )
        return cls(model.to(device).eval().requires_grad_(False), processor, kind)

    @torch.no_grad()
    def __call__(
        self, frames: torch.Tensor, batch_size: int = 8, on_batch: Callable[[int], None] | None = None
    ) -> torch.Tensor:
        """(K, H, W, 3) frames in [0, 1] -> (K, H, W) relative inverse depth (float32, CPU)."""
        param = next(self.model.parameters())
        k, h, w, _ = frames.shape
        out = torch.empty(k, h, w)
        for i in range(0, k, batch_size):
            chunk = frames[i : i + batch_size].to(torch.float32).cpu().numpy()
            inputs = self.processor(images=list(chunk), return_tensors="pt", do_rescale=False)
            pixels = inputs["pixel_values"].to(param.device, param.dtype)
            pred = self.model(pixel_values=pixels).predicted_depth.float()  # (b, h', w')
            pred = torch.nn.functional.interpolate(pred[:, None], size=(h, w), mode="bicubic", align_corners=False)
            pred = pred[:, 0].cpu()
            if self.output_kind == "metric":
                pred = 1.0 / pred.clamp_min(1e-6)
            out[i : i + len(chunk)] = pred
            if on_batch is not None:
                on_batch(len(chunk))
        return out
