"""The edit as a learned translation of each pixel's neighbourhood, trained on the reference pair alone.

A colour mapping explains an edit that is a function of each pixel's colour; a painterly filter, a pencil sketch or
an oil painting is a function of the pixel's neighbourhood. Like few-shot patch-based training (Texler et al.,
"Interactive Video Stylization Using Few-Shot Patch-Based Training", SIGGRAPH 2020) the edit is learned at run time
from the one pair (source keyframe, edited keyframe) and then applied to any frame's own content, so content the
reference never showed gets the edit's look instead of a colour-graded photo. To train in seconds on a CPU, the
neighbourhood is described by a fixed bank of multi-scale filters (Gaussian octaves and their differences, luma
gradients and second derivatives, local contrast and its normalisation: the classical texture features; and the
colour edge strength where an edge-aware filter, a painterly or pencil look, stops) and only a
small per-pixel network on top of them is learned; it predicts the residual of the edit over the global colour mapping
(`colour.EditMapping`), so it starts from the colour fill and adds what the neighbourhood explains, scaled by how well
that holds on content it did not learn from (`fit_edit_translation`). A second network, the structure model, predicts
the look's luma from the features a change of brightness leaves as they are (and the source's chroma): a line-art
look (a pencil sketch, ink) draws strokes where the content has structure whatever its brightness, and the first
network, which sees the colours, learns the reference's brightness as a cue and fails on content whose brightness the
reference never paired with that look (white fur crossing a dark photograph). The two are mixed by least-squares
weights measured on held-out content (`_stack`). A position-tied edit (a painted decal) is not a function of content:
that stays with the flow.

Deterministic for a seed on one device (seeded initialisation and pixel sampling).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MagicPropError
from ..log import get_logger
from .colour import BT601, EditMapping, luma
from .engine import import_cv2

log = get_logger(__name__)

SCALES = (1, 2, 4, 8)
"""Gaussian octaves (pixels, at a frame's long side of SCALE_SIDE or less) of the feature bank."""
RATIOS = (2, 8, 32)
"""Surround widths (pixels, as SCALES) of the luma ratios."""
CONTRASTS = (1, 2, 4, 8, 16)
"""Widths (pixels, as SCALES) of the local contrast."""
WIDE = 8.0
"""On a frame more than twice SCALE_SIDE's size, a blur whose sigma (frame pixels) stays at least this on the frame
shrunk by a power of two (up to the frame's scale over SCALE_SIDE) runs there: the bank's wide filters cost what they
cost at SCALE_SIDE, and a Gaussian that wide has nothing at the frequencies the shrinking loses."""
SCALE_SIDE = 640
"""Frames with a longer side than this get proportionally wider filters (the edit's texture scales with the frame)."""
HIDDEN = 64
"""Units of each of the network's two hidden layers."""
STEPS = 200
"""Training steps on the reference pair."""
BATCH = 4096
"""Pixels per training step (with STEPS: bench hard's never-shown PSNR within its seed-to-seed spread of 400 steps of
8192 pixels, in a quarter of the time: docs/decisions.md, "Learned fill: features and budget")."""
TRAIN_SCALES = (1.0, 0.8)
"""The network learns from the pair at these scales (content a camera moving away or zooming out shows smaller than the
reference did: docs/decisions.md, "Learned fill: features and budget"); the check (`held_out_error`) from the pair
as it is."""
LUMA_FREE = slice(9, 44)
"""`features`' channels that adding a constant to the frame's luma leaves as they are (its band-passes, derivatives,
local contrasts and colour edges; not its colours, coarsest octave or luma ratios): with the source's chroma, the
structure model's inputs (tests/test_translate.py checks the property)."""
CHUNK = 1 << 16
"""Pixels per inference step (memory flat in frame size)."""
WEIGHT_BLOCKS = 4
"""Blocks per side of the checkerboard whose two colours train and judge each other for the look's weights (content
near what the network learned from: what a pan or a moving layer reveals next to the reference's content)."""
GATE_BLOCKS = 2
"""The same with quadrants, for `held_out_error`: content far from what the network learned from (measured 0.95-1.0
for the benchmarks' decals, colour edits and the default demo's and bench quality's random re-textures, 0.38-0.73 for
painterly, sketch and oil edits)."""
GATE_STEPS = 200
"""`held_out_error`'s training steps (see GATE_BATCH)."""
GATE_BATCH = 2048
"""`held_out_error`'s budget (each of its two networks trains FOLD_SHARE of GATE_STEPS, on GATE_BATCH pixels a step):
its decisions on every measured pair were those of 400 steps of 8192 pixels, in an eighth of the time (about 0.5 s a
keyframe on one core). Fewer steps raise its error towards LEARNED_GAIN on sketch edits (0.74 -> 0.81), so the gate
keeps this budget when the fit's is smaller."""
LR = 3e-3
"""The training's learning rate at its first step (cosine decay to 0 over the steps)."""
FOLD_SHARE = 0.5
"""Training steps of each held-out network, as a share of STEPS."""
FOLD_MIN = 256
"""Pixels each checkerboard colour needs for the held-out weight to be measured (else the weight is 0)."""


def _gauss(x: torch.Tensor, sigma: float, shrink: int = 1) -> torch.Tensor:
    """Separable Gaussian blur of (1, C, H, W) float32, reflected at the borders (the edge pixel not repeated), the
    kernel cut at 3 sigma. On the CPU by OpenCV (`cv2.GaussianBlur`: the same blur within 1e-6, 3-10x faster than
    a grouped convolution for the bank's widths, tests/test_translate.py), elsewhere by torch (`_gauss_torch`).
    shrink: run it on the frame shrunk by this factor (area), enlarged back (bilinear; see `_shrink`)."""
    if shrink > 1:
        h, w = x.shape[-2:]
        small = _gauss(F.avg_pool2d(x, shrink, ceil_mode=True), sigma / shrink)
        return F.interpolate(small, scale_factor=shrink, mode="bilinear", align_corners=False)[..., :h, :w]
    if x.device.type != "cpu":
        return _gauss_torch(x, sigma)
    cv2, r = import_cv2(), _radius(x, sigma)
    img = x[0].detach().permute(1, 2, 0).contiguous().numpy()
    out = cv2.GaussianBlur(img, (2 * r + 1, 2 * r + 1), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(out.reshape(img.shape)).permute(2, 0, 1)[None]


def widths(side: int) -> float:
    """How much wider than at SCALE_SIDE the bank's filters (and what follows them) are on a frame whose long side is
    `side` (1 up to SCALE_SIDE, proportional above)."""
    return max(1.0, side / SCALE_SIDE)


def _grid(side: int) -> int:
    """The largest factor `_shrink` uses on a frame whose long side is `side` (a power of two, 1 up to 2 SCALE_SIDE)."""
    g = 1
    while 2 * g <= side / SCALE_SIDE:
        g *= 2
    return g


def _shrink(sigma: float, side: int) -> int:
    """The factor a blur of `sigma` (frame pixels) runs shrunk by (WIDE), on a frame whose long side is `side`."""
    f = 1
    while 2 * f <= _grid(side) and sigma / (2 * f) >= WIDE:
        f *= 2
    return f


def _radius(x: torch.Tensor, sigma: float) -> int:
    """The blur's kernel radius: 3 sigma, at least 1, less than the frame's sides (one reflection at the borders)."""
    return max(1, min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1))


def _gauss_torch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """`_gauss` as two grouped convolutions (any device)."""
    r = _radius(x, sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def features(source: torch.Tensor, mapped: torch.Tensor, side: int | None = None) -> torch.Tensor:
    """(1, 3, H, W) source frame and its colour mapping -> (1, C, H, W) the neighbourhood's features; side: the long
    side the filters' widths follow (SCALE_SIDE; default the frame's own)."""
    side = side or max(source.shape[-2:])
    s = widths(side)

    def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:  # sigma at SCALE_SIDE
        return _gauss(x, sigma * s, _shrink(sigma * s, side))

    y = (source * torch.tensor(BT601, device=source.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    out = [source, mapped]
    blurred: dict[float, torch.Tensor] = {}

    def luma(sigma: float) -> torch.Tensor:  # the luma blurred at sigma, each scale once (several features share it)
        if sigma not in blurred:
            blurred[sigma] = blur(y, sigma)
        return blurred[sigma]

    prev = source
    for n, sigma in enumerate(SCALES):  # a Laplacian-like stack: the coarsest level's colour, band-passes below
        g = blur(source, sigma)
        out.append(g if n == 0 else g - prev)
        prev = g
    for sigma in (1, 2, 4):  # luma gradients
        gy = luma(sigma)
        dx = F.pad(gy[..., :, 2:] - gy[..., :, :-2], (1, 1, 0, 0), mode="replicate")
        dy = F.pad(gy[..., 2:, :] - gy[..., :-2, :], (0, 0, 1, 1), mode="replicate")
        out += [dx, dy, (dx * dx + dy * dy).sqrt()]
    for sigma in (1, 2, 4):  # second derivatives (lines, ridges: a pencil's strokes), scale-normalised
        g = F.pad(luma(sigma), (1, 1, 1, 1), mode="replicate")
        mid = g[..., 1:-1, 1:-1]
        out += [(g[..., 1:-1, 2:] + g[..., 1:-1, :-2] - 2 * mid) * sigma,
                (g[..., 2:, 1:-1] + g[..., :-2, 1:-1] - 2 * mid) * sigma,
                (g[..., 2:, 2:] - g[..., 2:, :-2] - g[..., :-2, 2:] + g[..., :-2, :-2]) * sigma / 4]
    for sigma in CONTRASTS:  # local contrast
        m = luma(sigma)
        out.append((blur(y * y, sigma) - m * m).clamp_min(0).sqrt())
    for sigma in (0.7, 1.5, 3):  # colour edge strength: the L1 colour difference edge-aware filters stop at
        g = blur(source, sigma)
        dx = F.pad(g[..., :, 2:] - g[..., :, :-2], (1, 1, 0, 0), mode="replicate").abs().sum(1, keepdim=True)
        dy = F.pad(g[..., 2:, :] - g[..., :-2, :], (0, 0, 1, 1), mode="replicate").abs().sum(1, keepdim=True)
        out.append(dx + dy)
    for sigma in RATIOS:  # luma against its surround (a dodge, a local tone curve)
        out.append(y / (luma(sigma) + 0.05))
    return torch.cat(out, 1)


@dataclass
class EditTranslation:
    """A per-pixel network on the feature bank, trained on one reference pair over its global colour mapping, its
    residual scaled by `weight`; `apply` has `EditMapping.apply`'s contract."""

    mapping: EditMapping
    net: nn.Module
    mean: torch.Tensor  # (C,) feature normalisation, from the reference
    std: torch.Tensor
    structure: nn.Module  # the structure model: the look's luma from `_structure`'s inputs
    structure_mean: torch.Tensor  # its inputs' normalisation, from the reference
    structure_std: torch.Tensor
    device: torch.device
    gain: float  # its L1 error on the reference pair as a share of the colour mapping's (below 1: it explains more)
    weights: tuple[float, float, float]  # the scales of the residual's luma and chroma and of the structure model's
    # luma over the mapping's, measured on held-out blocks of the pair (all 0: the colour mapping alone)

    def to(self, device: torch.device | str) -> EditTranslation:
        """The same translation applied on `device` (the network copied there; this one is left as it is)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return replace(self, net=copy.deepcopy(self.net).to(device), mean=self.mean.to(device),
                       std=self.std.to(device), structure=copy.deepcopy(self.structure).to(device),
                       structure_mean=self.structure_mean.to(device), structure_std=self.structure_std.to(device),
                       device=device)

    @torch.no_grad()
    def look(self, frame: torch.Tensor, mapped: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """(H, W, 3) source frame in [0, 1] and its colour mapping (1, 3, H, W) -> the edit's look (1, 3, H, W),
        float32, on the mapped frame's device. where (H, W) bool: the pixels to render (the network runs on those
        only; the others keep the colour mapping); default all."""
        m = mapped.float().to(self.device)
        src = frame.float().permute(2, 0, 1)[None].to(self.device)
        out = m.clone()
        h, w = src.shape[-2:]
        (y0, y1), (x0, x1), sel = (0, h), (0, w), slice(None)
        if where is not None:
            where = where.to(self.device)
            if not bool(where.any()):
                return out.to(mapped.device)
            # the features of the pixels asked for read the frame within `reach` of them: a crop that holds that
            # context gives them the whole frame's values (the filters keep the frame's widths) at a fraction of the
            # cost
            r = reach(max(h, w))
            if min(h, w) > r:
                g = _grid(max(h, w))  # (the crop starts on the shrunk frames' grid)
                (y0, y1), (x0, x1) = _span(where, 0, r), _span(where, 1, r)
                y0, x0 = y0 // g * g, x0 // g * g
            sel = where[y0:y1, x0:x1].reshape(-1)
        f = features(src[..., y0:y1, x0:x1], m[..., y0:y1, x0:x1], max(h, w))
        part = out[..., y0:y1, x0:x1].reshape(3, -1)
        part[:, sel] = (part[:, sel] + self._residual(f[0].reshape(f.shape[1], -1)[:, sel])).clamp(0, 1)
        out[..., y0:y1, x0:x1] = part.view(1, 3, y1 - y0, x1 - x0)
        return out.to(mapped.device)

    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        """(K, H, W, 3) or (H, W, 3) source frames in [0, 1] -> the edit's look, same shape, float32, on the CPU."""
        single = frames.ndim == 3
        frames = frames[None] if single else frames
        mapped = self.mapping.apply(frames)
        out = torch.stack([self.look(frames[i], mapped[i].permute(2, 0, 1)[None])[0].permute(1, 2, 0).cpu()
                           for i in range(frames.shape[0])])
        return out[0] if single else out

    @torch.no_grad()
    def _residual(self, f: torch.Tensor) -> torch.Tensor:
        """(C, N) features of N pixels -> (3, N) what the look adds to their colour mapping: the network's residual
        and the structure model's luma over the mapping's, with their weights."""
        f = f.T
        wl, wc, ws = self.weights
        out = torch.zeros(f.shape[0], 3, device=f.device)
        if wl or wc:
            r = _predict(self.net, (f - self.mean) / self.std)
            y = luma(r)[:, None]
            out += wl * y + wc * (r - y)
        if ws:
            out += ws * (_predict(self.structure, (_structure(f) - self.structure_mean) / self.structure_std)
                         - luma(f[:, 3:6])[:, None])
        return out.T


def reach(side: int) -> int:
    """Pixels around a pixel that its features read, in a frame whose long side is `side` (the widest blur's kernel,
    the shrunk frame's pooling and enlarging, and a one-pixel difference)."""
    g = _grid(side)
    widest = int(math.ceil(3 * max(*SCALES, *RATIOS, *CONTRASTS) * widths(side)))
    return widest + 2 + (3 * g if g > 1 else 0)


def _span(where: torch.Tensor, dim: int, margin: int) -> tuple[int, int]:
    """[start, stop) along `dim` of the true pixels of `where` (H, W), widened by `margin`, within the frame."""
    hit = where.any(1 - dim).nonzero()[:, 0]
    return max(0, int(hit[0]) - margin), min(where.shape[dim], int(hit[-1]) + 1 + margin)


def _structure(f: torch.Tensor) -> torch.Tensor:
    """(N, C) `features` of N pixels, not normalised -> (N, 3 + LUMA_FREE's channels) the structure model's inputs:
    the source's chroma (its colour less its luma) and the channels a luma offset leaves as they are."""
    source = f[:, :3]
    return torch.cat([source - luma(source)[:, None], f[:, LUMA_FREE]], 1)


def _predict(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(x[i:i + CHUNK]) for i in range(0, x.shape[0], CHUNK)])


def fit_edit_translation(source: torch.Tensor, edited: torch.Tensor, mapping: EditMapping,
                         mask: torch.Tensor | None = None, seed: int = 0, steps: int = STEPS,
                         device: torch.device | str = "cpu") -> EditTranslation:
    """Train the per-pixel network on the pair source (H, W, 3) -> edited (H, W, 3) in [0, 1] (and on the pair resized
    by each of TRAIN_SCALES), over `mapping`, and the structure model on the same pixels; mask (H, W): where the
    edit applies (only those pixels are learned from). Their weights are measured the way the networks will be used,
    on content they never saw (`_stack`), so an edit whose look does not follow from the content falls back towards
    the colour mapping instead of painting a confident wrong texture."""
    x, y, at, mean, std = _pixels(source, edited, mapping, mask, torch.device(device), TRAIN_SCALES)
    sx, sy, s_mean, s_std = _structure_pixels(x * std + mean, y)
    h, w, _ = source.shape
    # a host may run nodes under inference mode or no_grad: training needs autograd, on tensors made here
    with torch.inference_mode(False), torch.enable_grad():
        net, structure = _train(x, y, seed, steps), _train(sx, sy, seed, steps)
        weights = _stack(x, y, sx, sy, _board(at, h, w, WEIGHT_BLOCKS), seed, steps)
    with torch.no_grad():
        learned = float((_predict(net, x) - y).abs().sum())  # what it explains beyond the mapping, on the pair
        gain = learned / max(float(y.abs().sum()), 1e-12)
    net, structure = net.eval().requires_grad_(False), structure.eval().requires_grad_(False)
    log.debug("learned fill: %d steps on the %dx%d reference pair, L1 %.3f of the colour mapping's; weights on "
              "held-out blocks %.2f (luma), %.2f (chroma), %.2f (structure)", steps, w, h, gain, *weights)
    return EditTranslation(mapping, net, mean, std, structure, s_mean, s_std, torch.device(device), gain, weights)


def held_out_error(source: torch.Tensor, edited: torch.Tensor, mapping: EditMapping,
                   mask: torch.Tensor | None = None, seed: int = 0, steps: int = GATE_STEPS,
                   device: torch.device | str = "cpu") -> float:
    """Whether the edit's look follows from content far from what the network learned from: two networks, each
    trained on two diagonal quadrants of the pair (GATE_BLOCKS), predict the other two; the squared error left (with
    the least-squares weight of their predictions) as a share of the colour mapping's. Near 1 for a random
    re-texture, a decal or a colour edit; well below for a painterly, sketched or oil-painted look."""
    x, y, at, _, _ = _pixels(source, edited, mapping, mask, torch.device(device))
    with torch.inference_mode(False), torch.enable_grad():
        return _held_out(x, y, _board(at, *source.shape[:2], GATE_BLOCKS), seed, steps, GATE_BATCH)


def _resized(img: torch.Tensor, scale: float) -> torch.Tensor:
    """(H, W, C) image resized by `scale` (antialiased bilinear)."""
    return F.interpolate(img.float().permute(2, 0, 1)[None], scale_factor=scale, mode="bilinear", antialias=True,
                         align_corners=False)[0].permute(1, 2, 0)


def _pixels(source: torch.Tensor, edited: torch.Tensor, mapping: EditMapping, mask: torch.Tensor | None,
            device: torch.device, scales: tuple[float, ...] = (1.0,)) -> tuple[torch.Tensor, ...]:
    """The pair as training pixels: normalised features x (N, C), targets y (N, 3) (the edit less the mapping),
    each one's flat index in the frame (N,), and the features' normalisation (mean, std). scales: the pair resized by
    each (the filters keep the frame's widths) adds its pixels, at the index of their place in the frame."""
    h, w, _ = source.shape
    if min(h, w) < 8:
        raise MagicPropError(f"learned fill: the reference is {w}x{h}; expected at least 8x8 pixels to learn the "
                             "edit's look from.")
    xs, ys, ats = [], [], []
    for scale in scales:
        if scale == 1:  # tensors made here (a host's inference mode: see _train)
            src, edit, keep = source.clone(), edited.clone(), None if mask is None else mask.clone()
        else:
            src, edit = _resized(source, scale).clamp(0, 1), _resized(edited, scale).clamp(0, 1)
            keep = None if mask is None else _resized(mask.reshape(h, w, 1), scale)[..., 0]
        hs, ws = src.shape[:2]
        if min(hs, ws) < 8:
            continue
        mapped = mapping.apply(src.float()).permute(2, 0, 1)[None].to(device)
        f = features(src.float().permute(2, 0, 1)[None].to(device), mapped, max(h, w))
        x = f[0].reshape(f.shape[1], -1).T
        y = (edit.float().permute(2, 0, 1)[None].to(device) - mapped)[0].reshape(3, -1).T
        at = torch.arange(hs * ws, device=device)
        at = (at // ws) * h // hs * w + (at % ws) * w // ws  # its place in the frame (the checkerboards)
        if keep is not None:
            keep = (keep.float().reshape(-1) > 0.5).to(device)
            x, y, at = x[keep], y[keep], at[keep]
        xs.append(x), ys.append(y), ats.append(at)
    x = torch.cat(xs)
    mean, std = x.mean(0), x.std(0) + 1e-4
    return (x - mean) / std, torch.cat(ys), torch.cat(ats), mean, std


def _structure_pixels(f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The structure model's training pixels from `_pixels`' features f (N, C, not normalised) and targets y (N, 3):
    its normalised inputs (N, D), its targets (N, 1): the edited pixels' luma itself (not over the mapping's, which
    follows the brightness), and the inputs' normalisation (mean, std)."""
    x = _structure(f)
    mean, std = x.mean(0), x.std(0) + 1e-4
    return (x - mean) / std, luma(y + f[:, 3:6])[:, None], mean, std


def _board(at: torch.Tensor, h: int, w: int, blocks: int) -> torch.Tensor:
    """(N,) bool: the colour, in a checkerboard of blocks x blocks, of the pixels at flat indices `at`."""
    return ((at // w) * blocks // h + (at % w) * blocks // w) % 2 == 0


def _held_out(x: torch.Tensor, y: torch.Tensor, board: torch.Tensor, seed: int, steps: int,
              batch: int = BATCH) -> float:
    """Two networks, each trained on one colour of `board` (FOLD_SHARE of `steps`), predict the other colour's targets:
    the squared error left with the least-squares weight of their predictions (`_weights`), as a share of the colour
    mapping's (1.0 when a colour has too few pixels to learn from)."""
    folds = _folds(board)
    if folds is None:
        return 1.0
    gram, cross, tt = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 0.0
    for part in folds:
        net = _train(x[part], y[part], seed, max(1, int(steps * FOLD_SHARE)), batch)
        with torch.no_grad():
            r, t = _predict(net, x[~part]).double(), y[~part].double()
            gram += float((r * r).sum())
            cross += float((r * t).sum())
            tt += float((t * t).sum())
    if tt <= 0:
        return 1.0
    (weight,), rt, rr = _weights(gram, cross), float(cross[0]), float(gram[0, 0])
    return (tt - 2 * weight * rt + weight * weight * rr) / tt


def _folds(board: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two colours of `board` (N,) bool, each trained on in turn and judged by the other; None when one has fewer
    than FOLD_MIN pixels."""
    if not FOLD_MIN <= int(board.sum()) <= board.shape[0] - FOLD_MIN:
        return None
    return board, ~board


def _weights(gram: torch.Tensor, cross: torch.Tensor) -> tuple[float, ...]:
    """The non-negative least-squares weights, each at most 1, of K predictions whose (K, K) Gram matrix is `gram` and
    whose products with the targets are `cross` (K,): the best of the predictions' subsets' unconstrained solutions
    that are non-negative (by the squared error's change from the mapping's alone: all weights 0, change 0)."""
    k = gram.shape[0]
    best, least = (0.0,) * k, 0.0
    for used in (list(c) for n in range(1, k + 1) for c in itertools.combinations(range(k), n)):
        try:
            w = torch.linalg.solve(gram[used][:, used], cross[used])
        except torch.linalg.LinAlgError:
            continue
        if bool((w < 0).any()):
            continue
        full = torch.zeros(k, dtype=torch.float64)
        full[used] = w.clamp(max=1.0)
        change = float(full @ gram @ full - 2 * full @ cross)
        if change < least:
            best, least = tuple(float(v) for v in full), change
    return best


def _stack(x: torch.Tensor, y: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, board: torch.Tensor, seed: int,
           steps: int) -> tuple[float, float, float]:
    """The weights of the look's three parts, measured on content the networks never saw: each colour of `board`
    trains the network (x, y) and the structure model (sx, sy; what it adds is its luma less the mapping's) for
    FOLD_SHARE of `steps`, and they predict the other colour's pixels; the weights are the
    non-negative least-squares fit of the targets y by the network residual's luma and chroma and the structure
    model's luma over the mapping's (`_weights`; all 0 when a colour has too few pixels to learn from)."""
    folds = _folds(board)
    if folds is None:
        return 0.0, 0.0, 0.0
    gram, cross = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    base = sy - luma(y)[:, None]  # the mapping's luma (the targets are the edit less the mapping)
    for part in folds:
        n = max(1, int(steps * FOLD_SHARE))
        net, structure = _train(x[part], y[part], seed, n), _train(sx[part], sy[part], seed, n)
        with torch.no_grad():
            r = _predict(net, x[~part]).double()
            yr = luma(r.float()).double()[:, None]
            parts = (yr.expand_as(r), r - yr, (_predict(structure, sx[~part]) - base[~part]).double().expand_as(r))
            cols = torch.stack([c.reshape(-1) for c in parts], 1)
            gram += (cols.T @ cols).cpu()
            cross += (cols.T @ y[~part].double().reshape(-1)).cpu()
    return _weights(gram, cross)


def _train(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int, batch: int = BATCH) -> nn.Module:
    """The network trained on the pixels (x, y), `batch` of them a step: seeded initialisation and sampling."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                            nn.Linear(HIDDEN, y.shape[1])).to(x.device)
    opt = Adam(list(net.parameters()))
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen).to(x.device)
        loss = (net(x[idx]) - y[idx]).abs().mean()
        net.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(LR * (0.5 * (1 + math.cos(math.pi * step / steps))))  # cosine decay
    return net


class Adam:
    """Adam (Kingma and Ba) as torch.optim.Adam computes it on a CPU with its defaults (its single-tensor update:
    equal to it bit for bit, tests/test_translate.py), without torch.optim: torch.optim's first use in a process
    imports torch._dynamo, 1.4-1.8 s measured here, more than the check and the training of a 320x180 pair together."""

    def __init__(self, params: list[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps, self.steps = params, betas, eps, 0
        self.avg = [torch.zeros_like(p) for p in params]
        self.avg_sq = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.steps += 1
        b1, b2 = self.betas
        step = float(self.steps)
        size, root = lr / (1 - b1 ** step), (1 - b2 ** step) ** 0.5  # the bias corrections
        for p, avg, avg_sq in zip(self.params, self.avg, self.avg_sq, strict=True):
            avg.lerp_(p.grad, 1 - b1)
            avg_sq.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(avg, (avg_sq.sqrt() / root).add_(self.eps), value=-size)
