"""A synthetic video domain with ground truth: textured layered shapes moving in depth.

Each clip is one random motion (a background plane seen by a panning camera, and 2-4 shapes that translate, turn
and move towards or away from the camera) rendered with two random appearances: the "source" and the "edit".
Because the motion is shared, the edited rendering is the ground truth of propagating an edited reference frame.
Every clip also has its exact depth (inverse depth, near = 1 after one normalisation per clip, the checkpoints'
convention, README "Checkpoint format"), exact forward and backward optical flow (for flow-warp baselines) and the
id of the surface each pixel shows, so occlusion has ground truth: `occlusion` marks the pixels of frame t whose
surface point is hidden (or out of the frame) in frame s, from the exact flow between any two frames (`exact_flow`),
anti-aliased rims excluded.

Textures live in each surface's own coordinates, so they move, turn and scale with it: what a propagation method
must carry from frame to frame is exactly what a real video has (appearance attached to moving geometry).
Rendering is vectorised torch on CPU; a 30-frame 128x128 clip takes a few milliseconds per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import MagicPropError

SHAPES = ("ellipse", "box", "diamond")
PATTERNS = ("stripes", "checker", "rings", "gradient")


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of the synthetic domain (recorded with models trained on it)."""

    size: int = 128
    frames: int = 30
    min_shapes: int = 2
    max_shapes: int = 4
    speed: float = 0.02
    """Typical on-screen speed, in frame widths per frame."""
    depth_speed: float = 0.015
    """Typical relative change of a shape's distance per frame."""
    camera_speed: float = 0.02
    """Background pan speed, in frame widths per frame (at unit distance)."""
    bounce: bool = False
    """Shapes bounce off the frame's edges and reverse their depth motion every BOUNCE_FRAMES frames, so a long clip
    keeps moving to its end (benchmarks). Off for training clips, where shapes may also enter and leave the frame."""


BOUNCE_FRAMES = 30


@dataclass
class Motion:
    """The geometry of one clip, shared by all its appearances. Tensors are indexed by shape."""

    shape_kind: torch.Tensor  # (n,) index into SHAPES
    center0: torch.Tensor  # (n, 2) screen position at t=0, in [-1, 1]
    velocity: torch.Tensor  # (n, 2) per frame
    radius: torch.Tensor  # (n, 2) half extents at distance 1
    angle0: torch.Tensor  # (n,)
    spin: torch.Tensor  # (n,) radians per frame
    z0: torch.Tensor  # (n,) distance at t=0
    z_rate: torch.Tensor  # (n,) relative distance change per frame
    bulge: torch.Tensor  # (n,) how much the centre is nearer than the rim
    bg_z: float
    bg_tilt: torch.Tensor  # (2,) depth gradient of the background plane
    camera: torch.Tensor  # (2,) pan per frame
    bounce: bool = False


@dataclass
class Appearance:
    """One look for every surface of a clip: index 0 is the background, 1.. the shapes."""

    pattern: torch.Tensor  # (n+1,) index into PATTERNS
    color_a: torch.Tensor  # (n+1, 3)
    color_b: torch.Tensor  # (n+1, 3)
    frequency: torch.Tensor  # (n+1,) pattern cycles per unit of surface coordinates
    angle: torch.Tensor  # (n+1,)
    phase: torch.Tensor  # (n+1,)


@dataclass
class Clip:
    frames: torch.Tensor  # (T, H, W, 3) in [0, 1]
    depth: torch.Tensor  # (T, H, W) in [0, 1], near = 1, one normalisation per clip
    flow: torch.Tensor  # (T-1, H, W, 2) forward flow in pixels (x, y): where each pixel of frame k is in k+1
    flow_back: torch.Tensor  # (T-1, H, W, 2) backward flow: where each pixel of frame k+1 was in frame k
    surface: torch.Tensor  # (T, H, W) int64 id of the surface each pixel shows: 0 background, 1.. the shapes
    rim: torch.Tensor  # (T, H, W) bool: anti-aliased shape edges (a blend of two surfaces)


def _uniform(g: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def sample_motion(g: torch.Generator, cfg: SceneConfig) -> Motion:
    n = int(torch.randint(cfg.min_shapes, cfg.max_shapes + 1, (1,), generator=g))
    direction = _uniform(g, (n,), 0, 2 * math.pi)
    speed = _uniform(g, (n,), 0.3, 1.0) * cfg.speed * 2  # screen spans [-1, 1]: width 2
    return Motion(
        shape_kind=torch.randint(0, len(SHAPES), (n,), generator=g),
        center0=_uniform(g, (n, 2), -0.6, 0.6),
        velocity=torch.stack([direction.cos(), direction.sin()], -1) * speed[:, None],
        radius=_uniform(g, (n, 2), 0.35, 0.8),
        angle0=_uniform(g, (n,), 0, math.pi),
        spin=_uniform(g, (n,), -0.03, 0.03),
        z0=_uniform(g, (n,), 1.2, 2.6),
        z_rate=_uniform(g, (n,), -1.0, 1.0) * cfg.depth_speed,
        bulge=_uniform(g, (n,), 0.0, 0.25),
        bg_z=float(_uniform(g, (), 3.0, 4.5)),
        bg_tilt=_uniform(g, (2,), -0.8, 0.8),
        camera=(lambda a: torch.stack([a.cos(), a.sin()]) * cfg.camera_speed * 2)(_uniform(g, (), 0, 2 * math.pi)),
        bounce=cfg.bounce,
    )


def sample_appearance(g: torch.Generator, surfaces: int) -> Appearance:
    return Appearance(
        pattern=torch.randint(0, len(PATTERNS), (surfaces,), generator=g),
        color_a=torch.rand((surfaces, 3), generator=g),
        color_b=torch.rand((surfaces, 3), generator=g),
        frequency=_uniform(g, (surfaces,), 0.4, 1.2),
        angle=_uniform(g, (surfaces,), 0, math.pi),
        phase=_uniform(g, (surfaces,), 0, 1),
    )


def _pattern(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor, freq, angle, phase) -> torch.Tensor:
    """Blend weight in [0, 1] of the two colours at surface coordinates (u, v); smooth enough for a VAE."""
    a = u * angle.cos() + v * angle.sin()
    b = -u * angle.sin() + v * angle.cos()
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * (freq * a + phase))
    checker = 0.5 + 0.5 * torch.tanh(1.5 * torch.sin(2 * math.pi * freq * a) * torch.sin(2 * math.pi * freq * b))
    rings = 0.5 + 0.5 * torch.sin(2 * math.pi * (freq * (a * a + b * b).sqrt() + phase))
    gradient = (0.5 + 0.35 * a + 0.15 * torch.sin(2 * math.pi * (0.5 * freq * b + phase))).clamp(0, 1)
    options = torch.stack([stripes, checker, rings, gradient])
    return options[kind]


def _shape_sdf(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance-like value in unit shape coordinates (< 0 inside)."""
    if SHAPES[kind] == "ellipse":
        return (u * u + v * v).sqrt() - 1
    if SHAPES[kind] == "box":
        return torch.maximum(u.abs(), v.abs()) - 1
    return u.abs() + v.abs() - 1  # diamond


def _reflect(x, lo: float, hi: float):
    """x folded into [lo, hi] as by a point bouncing between them (a triangle wave); a tensor or a float."""
    width = hi - lo
    return hi - abs((x - lo) % (2 * width) - width)


def _shape_frame(m: Motion, i: int, t: float):
    """Centre, angle, distance and screen half-extents of shape i at time t."""
    tz = _reflect(t, 0.0, BOUNCE_FRAMES) if m.bounce else t
    z = m.z0[i] * max(0.35, 1 + float(m.z_rate[i]) * tz)
    center = m.center0[i] + m.velocity[i] * t
    if m.bounce:
        center = _reflect(center, -0.85, 0.85)
    angle = m.angle0[i] + m.spin[i] * t
    return center, angle, z, m.radius[i] / z


def _local(px, py, center, angle, half):
    dx, dy = px - center[0], py - center[1]
    c, s = angle.cos(), angle.sin()
    return (c * dx + s * dy) / half[0], (-s * dx + c * dy) / half[1]


def _grid(size: int):
    """Pixel centres in screen units ([-1, 1]) and the size of one pixel."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    return px, py, 2.0 / size


def _layers(motion: Motion, t: float, px, py, pixel: float):
    """The shapes at time t, far to near: (i, u, v, alpha (H, W, 1), surface depth (H, W)) for each."""
    order = sorted(range(motion.shape_kind.shape[0]), key=lambda i: -float(_shape_frame(motion, i, t)[2]))
    for i in order:
        center, angle, z, half = _shape_frame(motion, i, t)
        u, v = _local(px, py, center, angle, half)
        sdf = _shape_sdf(int(motion.shape_kind[i]), u, v)
        alpha = ((-sdf * min(float(half[0]), float(half[1]))) / pixel + 0.5).clamp(0, 1)[..., None]
        surf_z = z * (1 - motion.bulge[i] * (1 - (u * u + v * v).clamp(max=1)))
        yield i, u, v, alpha, surf_z


def _shape_moved(motion: Motion, i: int, u, v, px, py, t: float) -> torch.Tensor:
    """(H, W, 2) screen displacement to where the points (u, v) of shape i are at time t."""
    c1, a1, _, h1 = _shape_frame(motion, i, t)
    ca, sa = a1.cos(), a1.sin()
    lx, ly = u * h1[0], v * h1[1]
    return torch.stack([c1[0] + ca * lx - sa * ly - px, c1[1] + sa * lx + ca * ly - py], -1)


def render(motion: Motion, appearance: Appearance, cfg: SceneConfig, frames: int | None = None) -> Clip:
    """Render a clip: frames, exact normalised depth, exact forward and backward flow, surface ids and rims."""
    n_frames = cfg.frames if frames is None else frames
    if n_frames < 1:
        raise MagicPropError(f"frames={n_frames}: expected at least 1 frame.")
    size = cfg.size
    px, py, pixel = _grid(size)
    rgb = torch.zeros(n_frames, size, size, 3)
    inv_depth = torch.zeros(n_frames, size, size)
    surface = torch.zeros(n_frames, size, size, dtype=torch.long)
    rim = torch.zeros(n_frames, size, size, dtype=torch.bool)
    flows = {d: torch.zeros(max(n_frames - 1, 0), size, size, 2) for d in (1, -1)}

    def surface_color(idx, u, v):
        w = _pattern(appearance.pattern[idx], u, v, appearance.frequency[idx], appearance.angle[idx],
                     appearance.phase[idx])[..., None]
        return appearance.color_a[idx] * (1 - w) + appearance.color_b[idx] * w

    for t in range(n_frames):
        steps = [d for d in (1, -1) if 0 <= t + d < n_frames]
        # background: a tilted plane, textured in world coordinates, panned by the camera with parallax 1/z
        pan = motion.camera * t / motion.bg_z
        bu, bv = px + pan[0], py + pan[1]
        bg_z = motion.bg_z * (1 + 0.15 * (motion.bg_tilt[0] * px + motion.bg_tilt[1] * py))
        color = surface_color(0, bu, bv)
        z_buf = bg_z.clone()
        moved = {d: (-d * motion.camera / motion.bg_z).expand(size, size, 2).clone() for d in steps}
        for i, u, v, alpha, surf_z in _layers(motion, t, px, py, pixel):
            color = color * (1 - alpha) + surface_color(i + 1, u, v) * alpha
            inside = alpha[..., 0] > 0.5
            z_buf = torch.where(inside, surf_z, z_buf)
            surface[t] = torch.where(inside, i + 1, surface[t])
            rim[t] |= (alpha[..., 0] > 0) & (alpha[..., 0] < 1)
            for d in steps:  # where this surface point is in the neighbouring frame
                moved[d] = torch.where(inside[..., None], _shape_moved(motion, i, u, v, px, py, t + d), moved[d])
        rgb[t] = color.clamp(0, 1)
        inv_depth[t] = 1.0 / z_buf
        if 1 in moved:
            flows[1][t] = moved[1] / pixel  # screen units -> pixels
        if -1 in moved:
            flows[-1][t - 1] = moved[-1] / pixel
    lo, hi = inv_depth.min(), inv_depth.max()
    depth = (inv_depth - lo) / (hi - lo).clamp_min(1e-8)
    return Clip(frames=rgb, depth=depth, flow=flows[1], flow_back=flows[-1], surface=surface, rim=rim)


def exact_flow(motion: Motion, cfg: SceneConfig, t: int, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact flow from frame t to frame s, any distance apart: ((H, W, 2) pixels, surface ids, rims) of frame t.

    flow(p) is where the surface point seen at pixel p of frame t is in frame s (whether or not it is visible there).
    """
    px, py, pixel = _grid(cfg.size)
    surface = torch.zeros(cfg.size, cfg.size, dtype=torch.long)
    rim = torch.zeros(cfg.size, cfg.size, dtype=torch.bool)
    moved = (-(s - t) * motion.camera / motion.bg_z).expand(cfg.size, cfg.size, 2).clone()
    for i, u, v, alpha, _ in _layers(motion, t, px, py, pixel):
        inside = alpha[..., 0] > 0.5
        surface = torch.where(inside, i + 1, surface)
        rim |= (alpha[..., 0] > 0) & (alpha[..., 0] < 1)
        moved = torch.where(inside[..., None], _shape_moved(motion, i, u, v, px, py, s), moved)
    return moved / pixel, surface, rim


def occlusion(motion: Motion, cfg: SceneConfig, t: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth occlusion of frame t with respect to frame s: (occluded, known), each (H, W) bool.

    A pixel of frame t is occluded when the surface point it shows is not visible in frame s: the backward flow
    t -> s lands on another surface there, or outside the frame. `known` is False at anti-aliased rims (of frame t,
    or where the flow lands in frame s), where the surface id is a matter of threshold.
    """
    flow, surface_t, rim_t = exact_flow(motion, cfg, t, s)
    _, surface_s, rim_s = exact_flow(motion, cfg, s, t)
    size = cfg.size
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    qx = (xs + flow[..., 0]).round().long()
    qy = (ys + flow[..., 1]).round().long()
    inside = (qx >= 0) & (qx < size) & (qy >= 0) & (qy < size)
    qx, qy = qx.clamp(0, size - 1), qy.clamp(0, size - 1)
    occluded = ~inside | (surface_s[qy, qx] != surface_t)
    known = ~rim_t & ~(inside & rim_s[qy, qx])
    return occluded, known


@dataclass
class ClipPair:
    """One motion with its source and edited renderings."""

    source: Clip
    edit: Clip


def make_looks(seed: int, cfg: SceneConfig = SceneConfig(), looks: int = 2, frames: int | None = None) -> list[Clip]:
    """One motion rendered with `looks` appearances: [source, edit, other edit, ...]. Same seed, same clips."""
    g = torch.Generator().manual_seed(int(seed))
    motion = sample_motion(g, cfg)  # first draw of the seed's generator: scene_motion(seed, cfg) is this motion
    surfaces = motion.shape_kind.shape[0] + 1
    appearances = [sample_appearance(g, surfaces) for _ in range(looks)]
    return [render(motion, a, cfg, frames) for a in appearances]


def scene_motion(seed: int, cfg: SceneConfig = SceneConfig()) -> Motion:
    """The motion of a seed's clips (for exact_flow and occlusion)."""
    return sample_motion(torch.Generator().manual_seed(int(seed)), cfg)


def make_clip(seed: int, cfg: SceneConfig = SceneConfig(), frames: int | None = None, edit: bool = True):
    """The clip of a seed: a ClipPair (edit=True) or only the source Clip. Same seed, same clip, anywhere."""
    clips = make_looks(seed, cfg, 2 if edit else 1, frames)
    return ClipPair(source=clips[0], edit=clips[1]) if edit else clips[0]
