"""Guided patch synthesis: the edit's texture made where the reference never looked.

Flow carries what the reference frame shows; pixels it cannot see (revealed, occluded, out of frame) need new
content in the edit's style. The reference pair teaches how the edit renders content (image analogies: Hertzmann,
Jacobs, Oliver, Curless, Salesin, "Image Analogies", SIGGRAPH 2001): source reference frame S -> edited reference E.
For a target frame T, each pixel p to be made gets the patch of E at q where S around q looks like T around p (the
guide) and E around q agrees with what is already around p (the style: carried pixels and the current estimate),
as in guided example-based video stylization (Jamriska et al., "Stylizing Video by Example", SIGGRAPH 2019).

The nearest-neighbour field q(p) is searched with PatchMatch (Barnes, Shechtman, Finkelstein, Goldman, SIGGRAPH
2009): propagation from neighbours (jump-flooding steps, all pixels at once) and random search, coarse to fine, in
torch (on the inputs' device); the output is the average of the overlapping patches' votes, and a few rounds of
search and vote refine it (expectation-maximisation, Wexler, Shechtman, Irani, CVPR 2004). Random draws come from a
CPU generator seeded with `seed`: the same inputs and seed give the same result on a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import MagicPropError


@dataclass(frozen=True)
class SynthesisSettings:
    patch: int = 5  # side of a patch (odd)
    coarsest: int = 24  # the pyramid stops above this short side
    rounds: int = 2  # search + vote rounds per level (the first without the style term)
    searches: int = 3  # PatchMatch iterations per round
    style: float = 1.0  # weight of E-around-q against the current output, relative to the guide (S vs T)
    components: int = 24  # patches are compared in their leading principal components (of the reference's patches)


def _pad(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.pad(x[None], (r, r, r, r), mode="replicate")[0]


def _patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(C, H, W) -> (H*W, C*patch*patch): each pixel's patch (edges replicated)."""
    cols = F.unfold(_pad(x, patch // 2)[None], patch)[0]  # (C*p*p, H*W)
    return cols.t().contiguous()


def _basis(patches: torch.Tensor, k: int) -> torch.Tensor:
    """(D, k): the leading principal directions of (N, D) patches (distances in them approximate full ones; an
    exact match stays exact)."""
    centred = patches - patches.mean(0)
    cov = centred.t() @ centred / max(1, len(patches) - 1)
    _, vectors = torch.linalg.eigh(cov.double())
    return vectors[:, -k:].flip(1).to(patches.dtype).contiguous()


class _Level:
    """One pyramid level: descriptors of the target's guide and current output, and of the source pair."""

    def __init__(self, t: torch.Tensor, s: torch.Tensor, e: torch.Tensor, out: torch.Tensor, hole: torch.Tensor,
                 cfg: SynthesisSettings) -> None:
        self.cfg, self.h, self.w = cfg, *t.shape[1:]
        self.sh, self.sw = s.shape[1:]
        s_guide, e_style = _patches(s, cfg.patch), _patches(e, cfg.patch)
        k = min(cfg.components, s_guide.shape[1])
        self.guide_basis, self.style_basis = _basis(s_guide, k), _basis(e_style, k)
        self.k = k
        # the source pair's descriptors side by side: one gather per candidate field
        self.pair = torch.cat([s_guide @ self.guide_basis, e_style @ self.style_basis], 1).contiguous()
        self.e = e
        self.out, self.hole = out, hole
        r = cfg.patch // 2
        near = F.max_pool2d(hole[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0  # pixels whose patch meets the hole
        self.active = near.flatten().nonzero()[:, 0]
        # only the active pixels' guide is ever compared
        self.t_guide = _patches(t, cfg.patch)[self.active] @ self.guide_basis

    def refresh(self) -> None:
        self.o_style = _patches(self.out, self.cfg.patch)[self.active] @ self.style_basis

    def cost(self, q: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """(N,) patch distance of the active pixels to source positions q (N, 2) (y, x)."""
        picked = self.pair.index_select(0, q[:, 0] * self.sw + q[:, 1])
        guide = (self.t_guide - picked[:, :self.k]).square().sum(1)
        return guide + style * (self.o_style - picked[:, self.k:]).square().sum(1)

    def vote(self, nnf: torch.Tensor) -> torch.Tensor:
        """(3, H, W): every pixel as the mean of E over the patches of its neighbours' matches that cover it."""
        r = self.cfg.patch // 2
        padded = _pad(nnf.float(), r).long()  # (2, H+2r, W+2r)
        acc = torch.zeros_like(self.out)
        e_flat = self.e.flatten(1)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):  # neighbour p - d matched q; its patch puts E(q + d) on p
                q = padded[:, r - dy:r - dy + self.h, r - dx:r - dx + self.w]
                qy = (q[0] + dy).clamp(0, self.sh - 1)
                qx = (q[1] + dx).clamp(0, self.sw - 1)
                acc += e_flat.index_select(1, (qy * self.sw + qx).flatten()).view_as(acc)
        return acc / (2 * r + 1) ** 2


def _search(level: _Level, nnf: torch.Tensor, style: torch.Tensor, generator: torch.Generator, jumps: list[int],
            radius: int) -> torch.Tensor:
    """PatchMatch on the active pixels of `level`: jump-flooding propagation and random search, all pixels at once."""
    cfg, h, w, sh, sw = level.cfg, level.h, level.w, level.sh, level.sw
    act = level.active
    ay, ax = act // w, act % w
    limit = torch.tensor([sh - 1, sw - 1], device=nnf.device)
    cur = nnf.flatten(1)[:, act].t().contiguous()  # (N, 2)
    best = level.cost(cur, style)

    def consider(cand: torch.Tensor) -> None:
        nonlocal cur, best
        cand = torch.minimum(cand.clamp_min(0), limit)
        c = level.cost(cand, style)
        better = c < best
        cur = torch.where(better[:, None], cand, cur)
        best = torch.where(better, c, best)

    for _ in range(cfg.searches):
        for step in jumps:
            full = nnf.clone()
            full.flatten(1)[:, act] = cur.t()  # the field as it stands before this step (all pixels at once)
            for oy, ox in ((0, step), (0, -step), (step, 0), (-step, 0)):
                ny, nx = (ay + oy).clamp(0, h - 1), (ax + ox).clamp(0, w - 1)
                consider(full[:, ny, nx].t() - torch.stack([ny - ay, nx - ax], 1))
        rad = radius
        while rad >= 1:
            jitter = torch.randint(-rad, rad + 1, (len(act), 2), generator=generator).to(nnf.device)
            consider(cur + jitter)
            rad //= 2
        nnf = nnf.clone()
        nnf.flatten(1)[:, act] = cur.t()
    return nnf


def _pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    out = [x]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1][None], 2, ceil_mode=True)[0])
    return out[::-1]


def synthesize(target: torch.Tensor, hole: torch.Tensor, source: torch.Tensor, edited: torch.Tensor,
               init: torch.Tensor, seed: int = 0, settings: SynthesisSettings | None = None) -> torch.Tensor:
    """The pixels of `hole` made from the edited reference, guided by the frames (module docstring).

    target: (H, W, 3) frame to make, in [0, 1]; hole: (H, W) bool, the pixels to make; source, edited: (h, w, 3) the
    reference frame before and after the edit; init: (H, W, 3) the current output (carried pixels, and a first
    guess in the hole, e.g. the colour fill). Returns (H, W, 3): `init` outside the hole.
    """
    cfg = settings or SynthesisSettings()
    if cfg.patch < 3 or cfg.patch % 2 == 0:
        raise MagicPropError(f"synthesis patch={cfg.patch}: expected an odd side of 3 or more pixels.")
    if source.shape != edited.shape or target.shape != init.shape or tuple(hole.shape) != tuple(target.shape[:2]):
        raise MagicPropError(f"synthesis inputs: source {tuple(source.shape)} and edited {tuple(edited.shape)} must "
                             f"match, and target {tuple(target.shape)}, init and hole {tuple(hole.shape)} too.")
    hole = hole.bool().to(target.device)
    if not hole.any():
        return init
    device = target.device
    chw = [x.float().permute(2, 0, 1).to(device) for x in (target, source, edited, init)]
    levels = 1
    while min(min(target.shape[:2]), min(source.shape[:2])) / 2 ** levels >= cfg.coarsest:
        levels += 1
    tp, sp, ep, op = (_pyramid(x, levels) for x in chw)
    hp = [F.max_pool2d(hole[None, None].float(), 2 ** (levels - 1 - i), ceil_mode=True)[0, 0] > 0
          if i < levels - 1 else hole for i in range(levels)]
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    nnf, out = None, None
    for i in range(levels):
        t, s, e, hl = tp[i], sp[i], ep[i], hp[i]
        h, w = t.shape[1:]
        out = op[i].clone() if out is None else torch.where(hl[None], F.interpolate(
            out[None], size=(h, w), mode="bilinear", align_corners=False)[0], op[i])
        if nnf is None:
            ys = torch.randint(0, s.shape[1], (h, w), generator=generator)
            xs = torch.randint(0, s.shape[2], (h, w), generator=generator)
            nnf = torch.stack([ys, xs]).to(device)
            jumps = [2 ** j for j in range(max(h, w).bit_length() - 1, -1, -1)]
            radius = max(s.shape[1:])
        else:
            nnf = (F.interpolate(nnf[None].float(), size=(h, w), mode="nearest")[0] * 2).long()
            nnf += torch.stack(torch.meshgrid(torch.arange(h, device=device) % 2, torch.arange(w, device=device) % 2,
                                              indexing="ij"))
            jumps, radius = [4, 2, 1], 4
        nnf[0].clamp_(0, s.shape[1] - 1)
        nnf[1].clamp_(0, s.shape[2] - 1)
        level = _Level(t, s, e, out, hl, cfg)
        if len(level.active) == 0:
            continue
        for n in range(cfg.rounds):
            level.refresh()
            style_w = torch.full((len(level.active),), cfg.style, device=device)
            if n == 0:  # first round: the hole's current content is only a guess, match by the guide alone there
                style_w[hl.flatten()[level.active]] = 0.0
            nnf = _search(level, nnf, style_w, generator, jumps, radius)
            voted = level.vote(nnf)
            out = torch.where(hl[None], voted, out)
            level.out = out
    return torch.where(hole[:, :, None], out.permute(1, 2, 0), init.to(device).float())
