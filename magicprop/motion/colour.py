"""The edit as a colour mapping: fitted between the source reference frame and its edited version.

Flow propagation carries the edited reference where the flow can see it; what the flow cannot see (occluded,
revealed, outside the frame) is filled from the source frame passed through this mapping, so new content gets the
edit's look instead of stretched pixels. Applied to every source frame alone it is the `colour transfer (no flow)`
row of the benchmarks: the fill's ceiling.

Global models (chosen by held-out validation on the reference pair itself, simplest first):
- `affine`: a 3x4 matrix (channel mixing, gains, offsets; identity is its special case);
- `lattice`: a 3D look-up table on a lattice in Y'CbCr (BT.601) with a finer luma axis, trilinear, fitted by least
  squares with a second-difference smoothness penalty (the regularised lattice regression of Garcia & Gupta,
  "Lattice Regression", NIPS 2009). The penalty is zero on linear maps, so empty parts of the colour cube extend
  the fit linearly; the fine luma axis follows false-colour maps of luminance.
Local where it pays: a coarse grid of per-tile affine corrections of the global result, interpolated bilinearly
between tile centres (a bilateral-grid-like local colour transform, Chen, Paris & Durand, SIGGRAPH 2007), kept only
when it lowers the held-out error by a clear margin (edits that are not a function of colour alone: a painted region,
a vignette). Its tiles are tied to image positions, so it suits frames near the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import MagicPropError
from ..log import get_logger

log = get_logger(__name__)

BT601 = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of (R, G, B): what OpenCV's RGB2GRAY uses, and the Y' row of _YCC."""
_YCC = torch.tensor([BT601, [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) RGB -> (...) BT.601 luma, in float32 on the input's device."""
    return rgb.float() @ torch.tensor(BT601, device=rgb.device)


LATTICE = (17, 7, 7)
"""Nodes per axis of the lattice (Y', Cb, Cr): fine along luma, where false-colour maps and tone curves live."""
SMOOTHNESS = 1e-3
"""Weight of the second-difference penalty per lattice node, relative to the mean data weight of a node."""
LOCAL_TILES = 6
"""Tiles of the local correction along the long side of the frame."""
LOCAL_GAIN = 0.85
"""Local is kept only when its held-out error is below this share of the global model's."""
MAX_SAMPLES = 30_000
"""Pixels used for fitting (a regular subsample of larger frames: deterministic)."""


def _features(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> (N, 4) rgb with a constant 1 (affine)."""
    return torch.cat([rgb, torch.ones_like(rgb[:, :1])], 1)


def _lattice_weights(rgb: torch.Tensor, nodes: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear (N, 8) node indices and weights of colours (N, 3) on the Y'CbCr lattice."""
    ycc = rgb @ _YCC.T + torch.tensor([0.0, 0.5, 0.5])
    n = torch.tensor(nodes, dtype=rgb.dtype)
    x = ycc.clamp(0, 1) * (n - 1)
    base = x.floor().clamp(max=n - 2)
    frac = x - base
    base = base.long()
    idx, wts = [], []
    for corner in range(8):
        bits = [(corner >> k) & 1 for k in range(3)]
        i = [base[:, k] + bits[k] for k in range(3)]
        idx.append((i[0] * nodes[1] + i[1]) * nodes[2] + i[2])
        w = torch.ones_like(frac[:, 0])
        for k in range(3):
            w = w * (frac[:, k] if bits[k] else 1 - frac[:, k])
        wts.append(w)
    return torch.stack(idx, 1), torch.stack(wts, 1)


def _second_differences(nodes: tuple[int, int, int]) -> torch.Tensor:
    """D^T D (M, M) of the second differences between neighbouring nodes along each lattice axis."""
    m = nodes[0] * nodes[1] * nodes[2]
    grid = torch.arange(m).reshape(nodes)
    dtd = torch.zeros(m, m, dtype=torch.float64)
    for axis in range(3):
        if nodes[axis] < 3:
            continue
        a = grid.narrow(axis, 0, nodes[axis] - 2).reshape(-1)
        b = grid.narrow(axis, 1, nodes[axis] - 2).reshape(-1)
        c = grid.narrow(axis, 2, nodes[axis] - 2).reshape(-1)
        rows = torch.stack([a, b, c], 1)
        coef = torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64)
        for i in range(3):
            for j in range(3):
                dtd.index_put_((rows[:, i], rows[:, j]), (coef[i] * coef[j]).expand(rows.shape[0]), accumulate=True)
    return dtd


def _fit_affine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(4, 3) least-squares matrix with a whisper of ridge (flat references)."""
    f = _features(x).double()
    a = f.T @ f + 1e-6 * x.shape[0] * torch.eye(4, dtype=torch.float64)
    return torch.linalg.solve(a, f.T @ y.double()).float()


def _fit_lattice(x: torch.Tensor, y: torch.Tensor, nodes: tuple[int, int, int], dtd: torch.Tensor) -> torch.Tensor:
    """(M, 3) lattice values: argmin sum |lattice(x) - y|^2 + lambda |D lattice|^2."""
    m = dtd.shape[0]
    idx, w = _lattice_weights(x, nodes)
    w64 = w.double()
    ata = torch.zeros(m * m, dtype=torch.float64)
    for i in range(8):
        for j in range(8):
            ata.index_add_(0, idx[:, i] * m + idx[:, j], w64[:, i] * w64[:, j])
    ata = ata.reshape(m, m)
    atb = torch.zeros(m, 3, dtype=torch.float64)
    for i in range(8):
        atb.index_add_(0, idx[:, i], w64[:, i, None] * y.double())
    lam = SMOOTHNESS * x.shape[0] / m
    a = ata + lam * dtd + 1e-9 * x.shape[0] / m * torch.eye(m, dtype=torch.float64)
    return torch.linalg.solve(a, atb).float()


def _apply_lattice(x: torch.Tensor, values: torch.Tensor, nodes: tuple[int, int, int]) -> torch.Tensor:
    """Colours (N, 3) through the lattice: the trilinear interpolation `_lattice_weights` describes, done by
    `grid_sample` on the lattice as a 3D volume (one op instead of eight gathers: 20x faster on a 720p frame)."""
    ycc = (x.float() @ _YCC.T.to(x.device) + torch.tensor([0.0, 0.5, 0.5], device=x.device)).clamp(0, 1)
    volume = values.to(x.device).T.reshape(1, 3, *nodes)  # (1, 3, Y', Cb, Cr)
    grid = (ycc.flip(-1) * 2 - 1).reshape(1, 1, 1, -1, 3)  # grid_sample's (x, y, z) index (Cr, Cb, Y')
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(3, -1).T


def _tile_weights(h: int, w: int, tiles: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (H*W, 4) tile indices and weights of every pixel between tile centres."""
    def axis(n, t):
        c = ((torch.arange(n, dtype=torch.float32) + 0.5) / n * t - 0.5).clamp(0, t - 1)
        lo = c.floor().clamp(max=max(t - 2, 0)).long()
        return lo, c - lo, min(1, t - 1)

    (ly, fy, sy), (lx, fx, sx) = axis(h, tiles[0]), axis(w, tiles[1])
    ly, fy = ly[:, None].expand(h, w), fy[:, None].expand(h, w)
    lx, fx = lx[None, :].expand(h, w), fx[None, :].expand(h, w)
    idx = [(ly + dy * sy) * tiles[1] + lx + dx * sx for dy in (0, 1) for dx in (0, 1)]
    wts = [(fy if dy else 1 - fy) * (fx if dx else 1 - fx) for dy in (0, 1) for dx in (0, 1)]
    return torch.stack(idx, -1).reshape(-1, 4), torch.stack(wts, -1).reshape(-1, 4)


def _fit_local(x: torch.Tensor, residual: torch.Tensor, tidx: torch.Tensor, tw: torch.Tensor, n_tiles: int,
               ridge: float) -> torch.Tensor:
    """(T, 4, 3) per-tile affine corrections: argmin sum |sum_k w_k A_k [x 1] - r|^2 + ridge |A|^2 (k: 4 tiles)."""
    f = _features(x).double()  # (N, 4)
    # unknowns: T*4*3; the normal equations couple neighbouring tiles through the bilinear weights
    z = (tw.double()[:, :, None] * f[:, None, :]).reshape(-1, 16)  # (N, 4 tiles * 4 features)
    cols = (tidx[:, :, None] * 4 + torch.arange(4)).reshape(-1, 16)  # unknown-row index per entry
    m = n_tiles * 4
    ata = torch.zeros(m * m, dtype=torch.float64)
    for i in range(16):
        ata.index_add_(0, (cols[:, i, None] * m + cols).reshape(-1), (z[:, i, None] * z).reshape(-1))
    ata = ata.reshape(m, m)
    atb = torch.zeros(m, 3, dtype=torch.float64)
    for i in range(16):
        atb.index_add_(0, cols[:, i], z[:, i, None] * residual.double())
    a = ata + ridge * x.shape[0] / n_tiles * torch.eye(m, dtype=torch.float64)
    return torch.linalg.solve(a, atb).float().reshape(n_tiles, 4, 3)


@dataclass
class EditMapping:
    """A fitted colour mapping source -> edit; `apply` maps frames (K, H, W, 3) in [0, 1]."""

    kind: str  # "affine" | "lattice"
    params: torch.Tensor  # (4, 3) affine matrix or (M, 3) lattice values
    local: torch.Tensor | None = None  # (ty, tx, 4, 3) per-tile affine corrections, or None
    scores: dict = field(default_factory=dict)  # held-out mean squared error of each candidate
    _local_maps: dict = field(default_factory=dict, repr=False, compare=False)  # frame size -> per-pixel local

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "affine":
            return _features(x) @ self.params.to(x.device)
        return _apply_lattice(x, self.params, LATTICE)

    def global_only(self) -> EditMapping:
        """The same mapping without its local (position-tied) corrections."""
        return EditMapping(self.kind, self.params, scores=self.scores)

    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        """(K, H, W, 3) or (H, W, 3) source frames -> the edit's look, same shape, clamped to [0, 1], float32 on the
        frames' device."""
        if frames.shape[-1] != 3 or frames.ndim not in (3, 4):
            raise MagicPropError(f"colour mapping frames of shape {tuple(frames.shape)}: expected (K, H, W, 3) RGB.")
        single = frames.ndim == 3
        frames = frames[None] if single else frames
        k, h, w, _ = frames.shape
        out = torch.empty(k, h, w, 3, dtype=torch.float32, device=frames.device)
        a = None
        if self.local is not None:  # per-pixel affine corrections (H*W, 4, 3), one per frame size and device
            a = self._local_maps.get((h, w, frames.device))
            if a is None:
                tidx, tw = _tile_weights(h, w, tuple(self.local.shape[:2]))
                a = (self.local.reshape(-1, 4, 3)[tidx] * tw[..., None, None]).sum(1).to(frames.device)
                self._local_maps[(h, w, frames.device)] = a
        for i in range(k):  # frame by frame: memory flat in the clip's length
            x = frames[i].reshape(-1, 3).float()
            y = self._global(x)
            if a is not None:
                y = y + (_features(x)[:, None, :] @ a)[:, 0]
            out[i] = y.reshape(h, w, 3).clamp(0, 1)
        return out[0] if single else out


def _check(name: str, x: torch.Tensor, shape=None) -> None:
    if x.ndim != 3 or x.shape[-1] != 3:
        raise MagicPropError(f"{name} of shape {tuple(x.shape)}: expected one (H, W, 3) RGB frame.")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise MagicPropError(f"{name} is {x.shape[1]}x{x.shape[0]} but the source frame is {shape[1]}x{shape[0]}: "
                             "the edited reference must have the source frame's size.")


def _blocks(h: int, w: int) -> torch.Tensor:
    """(H, W) bool checkerboard of square blocks: True = fitting half, False = held-out half."""
    b = max(4, min(h, w) // 12)
    ys = torch.arange(h)[:, None] // b
    xs = torch.arange(w)[None, :] // b
    return (ys + xs) % 2 == 0


def _subsample(sel: torch.Tensor) -> torch.Tensor:
    """Flat indices of at most MAX_SAMPLES selected pixels, evenly strided (deterministic)."""
    idx = sel.reshape(-1).nonzero()[:, 0]
    if idx.numel() > MAX_SAMPLES:
        idx = idx[torch.linspace(0, idx.numel() - 1, MAX_SAMPLES).long()]
    return idx


def fit_edit_mapping(source: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor | None = None) -> EditMapping:
    """Fit the mapping source reference -> edited reference, (H, W, 3) each in [0, 1]; mask (H, W): where to fit.

    Candidates are scored on held-out blocks (a checkerboard: fit on one half, score on the other); the winner is
    refitted on every pixel. A more complex candidate must beat a simpler one by 2% (global) or by LOCAL_GAIN
    (local) to be chosen.
    """
    _check("source reference", source)
    _check("edited reference", edited, source.shape)
    h, w, _ = source.shape
    sel = torch.ones(h, w, dtype=torch.bool)
    if mask is not None:
        m = mask.float()
        if m.ndim == 3:
            m = m[0]
        if tuple(m.shape) != (h, w):
            raise MagicPropError(f"colour mapping mask of shape {tuple(mask.shape)}: expected (H, W) = {(h, w)}.")
        sel = m > 0.5
    if int(sel.sum()) < 16:
        raise MagicPropError(f"colour mapping: the mask selects {int(sel.sum())} pixels; expected at least 16 "
                             "edited pixels to fit the edit's colours from.")
    x_all, y_all = source.reshape(-1, 3).float(), edited.reshape(-1, 3).float()
    fit_half = _blocks(h, w)
    train, test = _subsample(sel & fit_half), _subsample(sel & ~fit_half)
    if train.numel() < 64 or test.numel() < 64:  # too few pixels to validate: the simplest model
        return EditMapping("affine", _fit_affine(x_all[_subsample(sel)], y_all[_subsample(sel)]))
    dtd = _second_differences(LATTICE)

    def mse(pred, idx):
        return float((pred.clamp(0, 1) - y_all[idx]).square().mean())

    xt, yt, xv = x_all[train], y_all[train], x_all[test]
    affine = _fit_affine(xt, yt)
    lattice = _fit_lattice(xt, yt, LATTICE, dtd)
    scores = {"affine": mse(_features(xv) @ affine, test), "lattice": mse(_apply_lattice(xv, lattice, LATTICE), test)}
    kind = "lattice" if scores["lattice"] < 0.98 * scores["affine"] - 1e-7 else "affine"
    # local: per-tile corrections of the global held-out winner, fitted on the same half
    tiles = (max(1, round(LOCAL_TILES * h / max(h, w))), max(1, round(LOCAL_TILES * w / max(h, w))))
    tidx, tw = _tile_weights(h, w, tiles)
    glob_t = (_features(xt) @ affine) if kind == "affine" else _apply_lattice(xt, lattice, LATTICE)
    glob_v = (_features(xv) @ affine) if kind == "affine" else _apply_lattice(xv, lattice, LATTICE)
    local = _fit_local(xt, yt - glob_t, tidx[train], tw[train], tiles[0] * tiles[1], ridge=1e-3)
    corr = ((local[tidx[test]] * tw[test][..., None, None]).sum(1) * _features(xv)[..., None]).sum(1)
    scores["local"] = mse(glob_v + corr, test)
    use_local = scores["local"] < LOCAL_GAIN * scores[kind] - 1e-7
    # refit the winner on every selected pixel
    idx = _subsample(sel)
    x, y = x_all[idx], y_all[idx]
    params = _fit_affine(x, y) if kind == "affine" else _fit_lattice(x, y, LATTICE, dtd)
    mapping = EditMapping(kind, params, scores=scores)
    if use_local:
        glob = mapping._global(x)
        mapping.local = _fit_local(x, y - glob, tidx[idx], tw[idx], tiles[0] * tiles[1], ridge=1e-3).reshape(
            *tiles, 4, 3)
    log.debug("edit mapping: %s%s (held-out MSE %s)", kind, " + local" if use_local else "",
              {k: round(v, 6) for k, v in scores.items()})
    return mapping
