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

import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..io.fileio import model_folder
from ..log import get_logger

log = get_logger(__name__)

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
    t = median(y): a constant frame is placed at its neighbour's typical depth. The fit runs in units of each
    side's own magnitude, so it behaves the same for any model's output range.
    """
    ax, ay = x.abs().max(), y.abs().max()
    if ay == 0:
        return x.new_zeros(()), y.new_zeros(())
    if ax == 0 or not informative(x):
        return x.new_zeros(()), y.median()
    x, y = x / ax, y / ay
    sx, sy = _spread(x), _spread(y)
    s = sy / sx
    t = y.median() - s * x.median()
    for _ in range(iterations):
        r = s * x + t - y
        sigma = torch.clamp(1.4826 * (r - r.median()).abs().median(), min=_EPS)
        u = r / (TUKEY_C * sigma)
        w = torch.where(u.abs() < 1, (1 - u * u) ** 2, torch.zeros_like(u))
        sw = w.sum()
        if sw <= 0:
            break
        mx, my = (w * x).sum() / sw, (w * y).sum() / sw
        var = (w * (x - mx) ** 2).sum() / sw
        if var <= _EPS * _EPS:
            break
        s = (w * (x - mx) * (y - my)).sum() / sw / var
        t = my - s * mx
    return s * ay / ax, t * ay


def informative(x: torch.Tensor) -> bool:
    """Whether finite samples x vary enough (relative to their magnitude) to be fitted."""
    if x.numel() < 16:
        return False
    scale = x.abs().max()
    return bool(scale > 0 and _spread(x) > 1e-6 * scale)


class ClipDepthAligner:
    """Streaming clip depth alignment: push frames in clip order, then finish().

    Each frame is fitted (robust scale and shift) to the latest informative aligned frame before it; frames before
    the first informative one wait and are fitted backward to it. Only the previous aligned frame is kept at full
    resolution; each aligned frame is passed to `reduce` (e.g. a resize to the latent grid) and stored reduced.
    The one normalisation of the clip (its min and max over all aligned pixels) is affine, so it is applied to the
    reduced maps at the end with the same result as before reducing (for any linear `reduce`).
    """

    def __init__(self, max_samples: int = 65536, iterations: int = 10, reduce=None) -> None:
        self.max_samples, self.iterations = max_samples, iterations
        self.reduce = reduce or (lambda m: m)
        self.ref: tuple[torch.Tensor, torch.Tensor] | None = None  # (aligned map, finite mask)
        self.waiting: list[tuple[int, torch.Tensor]] = []  # frames seen before the first informative one
        self.out: dict[int, torch.Tensor] = {}
        self.lo, self.hi = math.inf, -math.inf
        self.count = 0

    def _grid(self, d: torch.Tensor, ok: torch.Tensor):
        h, w = d.shape
        stride = max(1, int((h * w / self.max_samples) ** 0.5))
        return d[::stride, ::stride], ok[::stride, ::stride]

    def _place(self, index: int, d: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """Fit frame `index` to the reference frame, record it, and return its aligned map."""
        if self.ref is not None:
            rd, rok = self._grid(*self.ref)
            x, xok = self._grid(d, ok)
            both = xok & rok
            if both.sum() >= 16:
                s, t = fit_scale_shift(x[both], rd[both], self.iterations)
                d = s * d + t
        if ok.any():
            values = d[ok]
            self.lo, self.hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))
            d = torch.where(ok, d, values.median())  # non-finite pixels take the frame's median
        self.out[index] = self.reduce(d[None, None])[0, 0]
        return d

    @staticmethod
    def _finite(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(map with non-finite pixels zeroed, finite mask)."""
        d = depth.detach().to(torch.float32)
        ok = torch.isfinite(d)
        return torch.where(ok, d, torch.zeros_like(d)), ok

    def push(self, depth: torch.Tensor) -> None:
        """Add the next frame's relative inverse depth (H, W)."""
        d, ok = self._finite(depth)
        index, self.count = self.count, self.count + 1
        if self.ref is None:
            x, xok = self._grid(d, ok)
            if not informative(x[xok]):
                self.waiting.append((index, depth))
                return
            self.ref = (self._place(index, d, ok), ok)  # the anchor keeps its own scale
            first = self.ref
            for j, waiting in reversed(self.waiting):  # backward from the anchor
                self._place(j, *self._finite(waiting))
            self.ref, self.waiting = first, []
            return
        aligned = self._place(index, d, ok)
        x, xok = self._grid(d, ok)
        if informative(x[xok]):
            self.ref = (aligned, ok)

    def finish(self) -> torch.Tensor:
        """(K, 1, h, w) aligned depth in [0, 1], near = 1 (0.5 everywhere for a clip without depth variation)."""
        if self.count == 0:
            raise MagicPropError("depth: no frames were given; expected a non-empty clip of depth maps.")
        for j, waiting in self.waiting:  # no informative frame at all: keep each frame as it is
            self._place(j, *self._finite(waiting))
        self.waiting = []
        maps = torch.stack([self.out[i] for i in range(self.count)])[:, None]
        if not math.isfinite(self.lo) or self.hi - self.lo <= _EPS * max(abs(self.hi), abs(self.lo), 1e-30):
            return torch.full_like(maps, 0.5)
        return ((maps - self.lo) / (self.hi - self.lo)).clamp(0, 1)


def align_clip_depth(
    depth: torch.Tensor, max_samples: int = 65536, iterations: int = 10
) -> torch.Tensor:
    """(K, H, W) or (K, 1, H, W) relative inverse depth -> (K, 1, H, W) clip-consistent depth in [0, 1], near = 1.

    The first frame with depth variation anchors the chain; every other frame is fitted to its aligned neighbour
    towards the anchor, on a fixed grid of at most `max_samples` pixels where both are finite (ClipDepthAligner).
    """
    if depth.ndim == 4:
        if depth.shape[1] != 1:
            raise MagicPropError(f"depth has shape {tuple(depth.shape)}: expected (K, H, W) or (K, 1, H, W).")
        depth = depth[:, 0]
    if depth.ndim != 3 or depth.shape[0] == 0:
        raise MagicPropError(
            f"depth has shape {tuple(depth.shape)}: expected a non-empty clip of depth maps (K, H, W)."
        )
    aligner = ClipDepthAligner(max_samples, iterations)
    for frame in depth:
        aligner.push(frame)
    return aligner.finish()


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
    ) -> DepthEstimator:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        folder = model_folder(path, "depth model", "a transformers depth-estimation model with its "
                              "preprocessor_config.json, e.g. a saved depth-anything/Depth-Anything-V2-Small-hf")
        try:
            model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True, dtype=dtype)
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (ValueError, OSError) as e:
            raise MagicPropError(f"depth model {str(folder)!r} is not a transformers depth-estimation model "
                                 f"({str(e).splitlines()[0][:160]}); pass a saved one, e.g. "
                                 "depth-anything/Depth-Anything-V2-Small-hf.") from None
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
