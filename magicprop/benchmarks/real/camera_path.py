"""Known motion: a still seen by a camera moving along a known smooth path, with a second layer moving over it;
the ground truth of a spatial edit is the same rendering of the edited textures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import MagicPropError
from ...motion.engine import import_cv2
from .clips import still
from .edits import SPATIAL_EDITS, soft


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
    return soft((r - 1) * min(a, b))  # distance to the edge, approximately, in pixels


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


def known_clip(name: str) -> KnownClip:
    for k in KNOWN:
        if k.name == name:
            return k
    raise MagicPropError(f"bench real known-motion clip {name!r}: expected one of {[k.name for k in KNOWN]}.")
