"""Flow propagation without weights: edited keyframes carried along the source video's optical flow.

What EbSynth-style tools do (Jamriska et al., "Stylizing Video by Example", SIGGRAPH 2019, keyframes blended where
their sequences meet), with the flow's own forward-backward check (Sundaram, Brox & Keutzer, ECCV 2010) deciding
which pixels the flow carries: every other pixel (occluded, revealed, out of frame) is filled from the source frame
passed through the edit's colour mapping (`colour.fit_edit_mapping`), so new content gets the edit's look instead of
stretched pixels. The keyframe plan (which keyframe owns which frame, blend weights where two chains meet) is
`magicprop.keyframes.keyframe_plan`, shared with every path.

Strategies (STRATEGIES), each carrying keyframe r to frame t of its chain:
- "chain": frame to frame, each frame warped from the previous result (resampling blur and flow noise pile up);
- "accumulate": consecutive flows composed into flow_{t->r}, the clean reference sampled once;
- "direct": flow estimated straight from frame t to the keyframe (one estimate, no accumulation; fails on large
  displacements far from the keyframe, where its check then marks the pixels invalid);
- "mixed": direct where its forward-backward check passes, else accumulated where that passes, else the fill;
- "guided": flow to the keyframe refined by the estimator against the keyframe, started from the previous frame's
  result composed with one consecutive step (large motion reached like "accumulate", drift removed like "direct"),
  per pixel the direct or the refined estimate, whichever is more consistent forward-backward, then snapped to the
  frame's dominant motions (homographies fitted to its valid flow) wherever they explain the pixels better.

What is carried (CARRIES): by default the residual of the edit over its colour mapping, added to each frame's own
mapped pixels; where nothing is carried the residual is continued from around the hole (`pull_push`).
"""

from __future__ import annotations

import heapq
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import MagicPropError
from ..io.spool import FrameSpool, TensorSlots
from ..keyframes import Chain, keyframe_plan, meet, two_keyframe_plan
from ..log import get_logger
from ..seeding import frame_seed
from .colour import EditMapping, fit_edit_mapping, luma
from .engine import (
    FlowEngine,
    Motion,
    PairwiseMotion,
    as_frame,
    check_device,
    compose,
    consistency,
    import_cv2,
    resize_flow,
    warp,
)
from .synthesis import synthesize
from .translate import EditTranslation, fit_edit_translation, held_out_error, widths

log = get_logger(__name__)

CUT_RATIO = 0.5
"""A pair is a hard cut when its share of consistent pixels is below this share of its neighbours' median ..."""
CUT_MAX_VALID = 0.5
"""... and below this share of the frame (fast motion lowers validity gradually, a cut drops it to almost nothing)."""
CUT_NEIGHBOURS = 5
"""Pairs on each side whose median validity a pair is compared with."""
OCCLUSION_CHECK = {"alpha": 0.05, "beta": 2.0}
"""The forward-backward check that best matches true occlusion on composed flows (for finding occlusion; propagation
keeps the engine's stricter defaults: docs/decisions.md, "Occlusion check")."""


@dataclass
class FlowResult:
    frames: torch.Tensor | None  # (K, H, W, 3) in [0, 1]; None when the frames went to a sink (`on_frame`)
    filled: torch.Tensor | None  # (K, H, W) float: share of each pixel not carried by flow; None with a sink
    cuts: list[int]  # frame indices where a hard cut starts (a keyframe there is suggested)


SMALL_HELD = 24
"""Working-resolution frames `_Context.small` holds (a batch of flows to the keyframe ahead of the chain, the chain's
pairs, the keyframe): at 512 px 1.8 MB each."""


@dataclass
class _Context:
    frames: torch.Tensor | FrameSpool  # (K, H, W, 3), float in [0, 1] or uint8
    engine: FlowEngine
    motion: Motion | PairwiseMotion  # consecutive pairs
    device: torch.device  # where the frame-size work runs (flow estimation and working-size geometry: the CPU)
    _small: dict = field(default_factory=dict)  # k -> frame k at the working resolution, the last SMALL_HELD
    _lock: threading.Lock = field(default_factory=threading.Lock)  # `small` is called from the estimating thread too

    def frame(self, k: int) -> torch.Tensor:
        """Frame k (H, W, 3) float in [0, 1] on the CPU (a uint8 clip is converted one frame at a time)."""
        return as_frame(self.frames[k])

    def small(self, k: int) -> torch.Tensor:
        """Frame k (h, w, 3) at the engine's working resolution (what `FlowEngine.prepare` makes of it, which keeps
        it as it is), made once for the several estimates that take it (consecutive pairs, the flow to the keyframe
        and its refinement, the keyframe itself for every frame of its chains)."""
        with self._lock:
            if k not in self._small:
                if len(self._small) >= SMALL_HELD:
                    del self._small[next(iter(self._small))]
                self._small[k] = self.engine.prepare(self.frame(k))[0]
            return self._small[k]

    def full(self, k: int) -> torch.Tensor:
        """Frame k (H, W, 3) float in [0, 1] on the device (moved as stored: uint8 is a quarter of the transfer)."""
        return as_frame(torch.as_tensor(self.frames[k]).to(self.device))

    def here(self, *flows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Working-resolution flows or validity moved to the device (for the frame-size work)."""
        return tuple(f.to(self.device) for f in flows)

    def to_keyframe(self, frames: Sequence[int], r: int, batch: int = 8) -> Iterator[tuple[torch.Tensor, ...]]:
        """(flow_{k->r}, flow_{r->k} (1, 2, h, w) float, validity of the first (h, w)) for each frame k of `frames`,
        estimated `batch` frames at a time (what one `FlowEngine.to_keyframe` of them all gives, never held for the
        whole chain)."""
        for i in range(0, len(frames), batch):
            m = self.engine.to_keyframe([self.small(k) for k in frames[i : i + batch]], self.small(r))
            for j in range(len(m)):
                yield m.forward[j][None].float(), m.backward[j][None].float(), m.valid_forward[j]


def _up(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) validity -> (1, 1, H, W) soft weight at frame size."""
    v = valid.float()[None, None]
    if tuple(v.shape[-2:]) == tuple(size):
        return v
    return F.interpolate(v, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def chain_steps(motion: Motion | PairwiseMotion,
           chain: Sequence[int]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(k, flow_{k->prev}, flow_{prev->k} (1, 2, h, w) float, validity of the first (h, w)) per step of a chain
    through the consecutive `motion` (as stored: fp16 flows are converted one pair at a time), working resolution."""
    for prev, k in zip(chain[:-1], chain[1:]):
        if k == prev + 1:  # forward chain: backward flow of pair prev is flow_{k->prev}, valid on frame k
            fwd, back, _, valid = motion.pair(prev)
        else:  # backward chain: forward flow of pair k is flow_{k->k+1}
            back, fwd, valid, _ = motion.pair(k)
        yield k, back[None].float(), fwd[None].float(), valid


def _sample(reference: torch.Tensor, flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The (1, 3, H, W) reference sampled at p + flow(p); flow (1, 2, h, w) at working resolution."""
    return warp(reference, resize_flow(flow, size))


def _chain(ctx: _Context, chain: Sequence[int], reference: torch.Tensor, fill: Callable) -> Iterator:
    size = tuple(ctx.frames.shape[1:3])
    img, carried = reference, torch.ones(1, 1, *size, device=ctx.device)
    for k, flow, _, valid in chain_steps(ctx.motion, chain):
        flow, valid = ctx.here(flow, valid)
        full = resize_flow(flow, size)
        w = _up(valid, size) * (warp(carried, full) > 0.5).float()
        carried = w  # what is still reference content (fill carried on does not count as carried)
        img = warp(img, full)
        img = w * img + (1 - w) * fill(k)  # the fill travels on with the chain
        yield k, img, w


def accumulated_flow(motion: Motion | PairwiseMotion, chain: Sequence[int],
                     check: dict | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(k, flow_{k->r} (1, 2, h, w), validity (h, w)) for each frame k of a chain starting at keyframe r.

    Consecutive flows composed both ways (flow_{k->r} and flow_{r->k}); validity is their forward-backward check
    (engine.consistency with `check`'s alpha and beta, the engine's defaults when None; OCCLUSION_CHECK to find
    occlusions). Requiring every step's own check instead marks far too much invalid (precision 0.56-0.67 against
    ground-truth occlusion).
    """
    to_r = from_r = None
    for k, back, fwd, _ in chain_steps(motion, chain):
        to_r = back if to_r is None else compose(back, to_r)
        from_r = fwd if from_r is None else compose(from_r, fwd)
        yield k, to_r, consistency(to_r, from_r, **(check or {}))[0]


def _accumulated(ctx: _Context, chain: Sequence[int]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    return accumulated_flow(ctx.motion, chain)


def _direct(ctx: _Context, chain: Sequence[int]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(k, flow_{k->r}, validity) estimated straight from each frame to the keyframe."""
    rest = list(chain[1:])
    for k, (to_r, _, valid) in zip(rest, ctx.to_keyframe(rest, chain[0])):
        yield k, to_r, valid


def _residual(flow_ab: torch.Tensor, flow_ba: torch.Tensor) -> torch.Tensor:
    """(1, h, w) forward-backward residual |f_ab(p) + f_ba(p + f_ab(p))| (0 for a perfectly consistent pair)."""
    return compose(flow_ab, flow_ba).square().sum(1).sqrt()  # (norm(dim=1) is ~100x slower on a CPU)


GLOBAL_MODELS = 2
"""Homographies (dominant motions: the camera's, then the largest other surface) fitted per frame."""
GLOBAL_SAMPLES = 4000
"""Valid pixels (evenly strided) a frame's global motion is fitted to."""
GLOBAL_MIN_INLIERS = 0.15
"""The global motion is used only when this share of the sampled valid flow agrees with it (within 1 px)."""
PHOTO_PATCH = 7
"""Side (working-resolution pixels) of the patch over which a candidate flow's photometric error is averaged."""


def _gray(frame: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) frame -> (1, 1, h, w) luma at the working resolution."""
    y = luma(frame)[None, None]
    return y if tuple(y.shape[-2:]) == tuple(size) else F.interpolate(y, size=size, mode="area")


def _photo_error(a: torch.Tensor, b: torch.Tensor, flow_ab: torch.Tensor) -> torch.Tensor:
    """(1, h, w): |a(p) - b(p + flow_ab(p))| averaged over a PHOTO_PATCH square around p."""
    e = (a - warp(b, flow_ab)).abs()
    return F.avg_pool2d(e, PHOTO_PATCH, stride=1, padding=PHOTO_PATCH // 2, count_include_pad=False)[:, 0]


def _homography_flows(to_r: torch.Tensor, valid: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The frame's dominant motions: up to GLOBAL_MODELS homographies fitted (RANSAC, 1 px) in turn to the valid
    pixels of flow_{k->r} that no earlier one explains, each as the pair (flow_{k->r}, flow_{r->k}) at the working
    resolution; a model is kept when GLOBAL_MIN_INLIERS of its samples agree with it."""
    import numpy as np

    cv2 = import_cv2()
    _, _, h, w = to_r.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    grid = torch.stack([xs, ys], -1)  # (h, w, 2)
    pts = grid.reshape(-1, 1, 2).numpy().astype(np.float64)
    target = grid + to_r[0].permute(1, 2, 0).float()

    def flow(m):
        return (torch.from_numpy(cv2.perspectiveTransform(pts, m).reshape(h, w, 2)).float() - grid).permute(2, 0, 1)

    left, out = valid.clone(), []
    for _ in range(GLOBAL_MODELS):
        idx = left.reshape(-1).nonzero()[:, 0]
        if idx.numel() < 64:
            break
        idx = idx[torch.linspace(0, idx.numel() - 1, min(GLOBAL_SAMPLES, idx.numel())).long()]
        p, q = grid.reshape(-1, 2)[idx], target.reshape(-1, 2)[idx]
        hom, inliers = cv2.findHomography(p.numpy(), q.numpy(), cv2.RANSAC, 1.0)
        if hom is None or float(inliers.mean()) < GLOBAL_MIN_INLIERS or abs(np.linalg.det(hom)) < 1e-6:
            break
        h_to = flow(hom)
        out.append((h_to[None], flow(np.linalg.inv(hom))[None]))
        left &= (grid + h_to.permute(1, 2, 0) - target).square().sum(-1) > 1.0  # more than 1 px away
    return out


def _snap_to_global(to_r, from_r, frame, key) -> tuple[torch.Tensor, torch.Tensor]:
    """Where one of the frame's dominant motions explains the pixels better than the local flow, take it (both ways).

    Local estimators lose precision under large zoom and rotation (DIS: 1.5-3 px median error at 1.56x zoom and 10
    degrees on the known-motion stills) while a homography fitted to their valid pixels is within a pixel there. Per
    pixel, the candidate with the smallest photometric error between the two source frames (patch mean) is kept, on
    each side; the forward-backward check of the result then marks what none explains (occlusions) invalid, as for
    any flow. frame, key: the two source frames, full size (H, W, 3), or their luma at the flows' resolution
    (1, 1, h, w)."""
    models = _homography_flows(to_r, consistency(to_r, from_r)[0])
    if not models:
        return to_r, from_r
    size = tuple(to_r.shape[-2:])
    a, b = (x if x.ndim == 4 else _gray(x, size) for x in (frame, key))
    best_to, best_from = _photo_error(a, b, to_r), _photo_error(b, a, from_r)
    for h_to, h_from in models:
        e_to, e_from = _photo_error(a, b, h_to), _photo_error(b, a, h_from)
        to_r, from_r = torch.where(e_to < best_to, h_to, to_r), torch.where(e_from < best_from, h_from, from_r)
        best_to, best_from = torch.minimum(e_to, best_to), torch.minimum(e_from, best_from)
    return to_r, from_r


def _guided(ctx: _Context, chain: Sequence[int]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(k, flow_{k->r}, validity): flow to the keyframe estimated against the keyframe, from zero and from a guess.

    The guess for frame k is frame k-1's result composed with one consecutive step (flow_{k->k-1} then
    flow_{k-1->r}; likewise flow_{r->k}), refined by the estimator against the keyframe itself: large displacements
    and scale changes that defeat a search from zero are reached, and the refinement removes the drift that
    composing alone piles up. Per pixel the pair (direct from zero, or refined from the guess) with the smaller
    forward-backward residual is kept, so a refinement that went astray (non-rigid motion far from the keyframe)
    does not replace a good direct estimate; then `_snap_to_global` (a homography per dominant motion, chosen per
    pixel by photometric error); validity is the forward-backward check of the result.
    An estimator that cannot refine a guess (RAFT: `FlowEngine.refines` is False) would return the direct estimate
    again, so the guess is skipped: the direct estimate, snapped (`flow_propagate` logs this once).
    """
    r = chain[0]
    small_key, key = ctx.small(r), None
    to_r = from_r = None
    refines = ctx.engine.refines
    for (k, back, fwd, _), (d_to, d_from, _) in zip(chain_steps(ctx.motion, chain), ctx.to_keyframe(chain[1:], r)):
        frame = ctx.frame(k)
        if refines:
            guess_to = back if to_r is None else compose(back, to_r)
            guess_from = fwd if from_r is None else compose(from_r, fwd)
            small = ctx.small(k)
            g_to = ctx.engine.flow(small[None], small_key[None], init=guess_to)
            g_from = ctx.engine.flow(small_key[None], small[None], init=guess_from)
            to_r = torch.where(_residual(d_to, d_from) <= _residual(g_to, g_from), d_to, g_to)
            from_r = torch.where(_residual(d_from, d_to) <= _residual(g_from, g_to), d_from, g_from)
        else:
            to_r, from_r = d_to, d_from
        if key is None:  # the keyframe's luma at the flows' resolution, once per chain
            key = _gray(ctx.frame(r), tuple(to_r.shape[-2:]))
        to_r, from_r = _snap_to_global(to_r, from_r, frame, key)
        yield k, to_r, consistency(to_r, from_r)[0]


AHEAD = 2
"""Frames whose flow to the keyframe a worker thread estimates ahead of the frame-size work (`_ahead`)."""


def _ahead(items: Iterator, depth: int | None = None) -> Iterator:
    """`items`, computed in a worker thread up to `depth` items ahead of the consumer: the next frames' flow (OpenCV,
    working size, the CPU) is estimated while this frame's frame-size work runs (on the device, or on the CPU's other
    cores). The same items in the same order as iterating `items` here (one thread computes them, in order); an error
    in the worker is raised here; when the consumer stops (an error, a cancel) the worker stops after its current item.
    The worker runs under the caller's grad and inference modes (thread-local in torch). depth: AHEAD when None; 0
    computes each item when it is asked for, in this thread."""
    depth = AHEAD if depth is None else depth
    if depth < 1:
        yield from items
        return
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                for x in items:
                    if not put(("item", x)):
                        return
            put(("done", None))
        except BaseException as e:  # handed to the consumer, raised there
            put(("error", e))

    worker = threading.Thread(target=work, name="magicprop-flow-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, x = out.get()
            if kind == "done":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()
        worker.join()


def _by_flow(flows: Callable) -> Callable:
    def run(ctx: _Context, chain: Sequence[int], reference: torch.Tensor, fill: Callable) -> Iterator:
        size = tuple(ctx.frames.shape[1:3])
        for k, flow, valid in _ahead(flows(ctx, chain)):
            flow, valid = ctx.here(flow, valid)
            yield k, _sample(reference, flow, size), _up(valid, size)
    return run


def _mixed(ctx: _Context, chain: Sequence[int], reference: torch.Tensor, fill: Callable) -> Iterator:
    size = tuple(ctx.frames.shape[1:3])
    for (k, fd, vd), (_, fa, va) in zip(_direct(ctx, chain), _accumulated(ctx, chain)):
        fd, vd, fa, va = ctx.here(fd, vd, fa, va)
        wd, wa = _up(vd, size), _up(va, size)
        wa = (1 - wd) * wa
        w = wd + wa
        img = wd * _sample(reference, fd, size) + wa * _sample(reference, fa, size)
        yield k, img / w.clamp_min(1e-6), w


STRATEGIES: dict[str, Callable] = {
    "direct": _by_flow(_direct),
    "chain": _chain,
    "accumulate": _by_flow(_accumulated),
    "mixed": _mixed,
    "guided": _by_flow(_guided),
}
KEYFRAME_FLOW_STRATEGIES = frozenset({"direct", "mixed", "guided"})
"""Strategies that estimate new flow (frame -> keyframe) with the engine; the others need only the motion."""
DEFAULT_STRATEGY = "guided"
"""The only strategy that passes every acceptance margin of `bench real` (docs/decisions.md, "Default strategy")."""


CARRIES = ("edit", "residual")
"""What the flow carries. "edit": the edited keyframe's pixels; the fill is the source frame through the edit's colour
mapping. "residual": the edit less what its global colour mapping predicts from the source keyframe, added to the
mapping of each frame's own source pixels (the fill is that mapping alone): the frame's own detail stays sharp and
registered, and only what the mapping cannot explain (painted shapes, strokes, texture) is resampled along the flow."""
FILLS = ("colour", "learned", "synthesis")
"""What the pixels the flow cannot see get. "learned": the frame's own content rendered the way the edit renders it,
by a small network trained on the keyframe's pair (`translate.fit_edit_translation`), the seam to the carried pixels
continued into it; it also makes the carried pixels whose carried source disagrees with the frame's (AGREE), and what
it made for a frame is followed into the chain's next frames along the consecutive flow (FOLLOW of it: an average
along the motion, so the look does not flicker). Where the network does not explain content it did not learn from
better than the colour mapping (LEARNED_GAIN: a colour edit, a decal, a random re-texture), the colour fill.
"colour": the source frame through the edit's colour mapping (with the residual continued into it). "synthesis":
patches of the edited reference placed where the frame's own content guides them (`synthesis.synthesize`); content
made for a frame is carried along the consecutive flow to the next frames of the chain where that flow is valid (made
once, then followed), and only what is still uncovered is made."""
AGREE = 0.1
"""With the learned fill, a pixel counts as carried only where the keyframe's source, carried the same way, is within
this (largest channel, in [0, 1]) of the frame's own source; elsewhere the flow matched different content (a
soft-edged layer passes the forward-backward check as the background behind it) and the learned look makes the
pixel. Measured on bench hard: 34-53% of the never-shown pixels the flow carries differ by more, 0.04-2.8% of the
rightly carried ones (docs/decisions.md, "Learned fill: the carried source's veto")."""
FOLLOW = 0.8
"""With the learned fill, a filled pixel whose content the chain's previous frame filled too (the consecutive flow
valid there) is this share that frame's result carried by the flow and the rest the look rendered anew: an
exponential average along the motion, so the look does not flicker where it renders the same content again. 1 would
carry what was made once (the synthesis fill's way), but each warp's resampling blurs it further (measured on bench
hard, docs/decisions.md "Learned fill: following what it made")."""
DEFAULT_FILL = "learned"
"""Textured edits keep their look where the reference never looked, other edits keep the colour fill (bench hard,
docs/decisions.md "Default fill")."""
LEARNED_GAIN = 0.85
"""The learned fill is used when, on quadrants of the keyframe's pair it did not learn from, its squared error is
below this share of the colour mapping's (`translate.held_out_error`; measured 0.38-0.73 for painterly, sketch and
oil edits on bench hard's stills (the bicycle rack's oil painting 0.97), 0.95-1.0 for the decals, colour edits and
re-textures of bench hard's and bench real's, the default demo's and bench quality's pairs; docs/decisions.md)."""
NOTHING_LEFT = 1 / 255
"""Mean error of the colour mapping on the keyframe's pair below which there is nothing to learn (no training)."""
DEFAULT_CARRY = "residual"
"""Colour edits become exact and spatial edits keep each frame's own detail (docs/decisions.md, "Default carry")."""


def _mapped_frames(mapping: EditMapping, frame: Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """k -> frame k through `mapping` as (1, 3, h, w); the last frame is kept (a chain asks for each one twice)."""
    last: dict = {}

    def look(k: int) -> torch.Tensor:
        if last.get("k") != k:
            last.clear()
            last.update(k=k, img=mapping.apply(frame(k)).permute(2, 0, 1)[None])
        return last["img"]

    return look


def _translation(frame: Callable[[int], torch.Tensor], key: int, edited: torch.Tensor, mapping: EditMapping,
                 mask: torch.Tensor | None, seed: int) -> EditTranslation | None:
    """The translation learned from the pair at frame `key` over `mapping`, or None when the colour mapping explains
    the pair (NOTHING_LEFT) or the edit's look does not follow from the content (LEARNED_GAIN). seed: the
    training's, one per run (the run seed's frame_seed(seed, 0)) for every keyframe (their pairs differ), so a
    keyframe learns the same network whatever else the run holds."""
    source = frame(key)
    left = (edited - mapping.apply(source)).abs()
    if mask is not None:
        left = left[mask.reshape(left.shape[:2]) > 0.5]
    if float(left.mean()) < NOTHING_LEFT:
        log.info("learned fill, keyframe %d: the colour mapping explains the edit, so the colour fill is used", key)
        return None
    error = held_out_error(source, edited, mapping, mask, seed=seed)
    if error >= LEARNED_GAIN:
        log.info("learned fill, keyframe %d: the edit's look does not follow from the content (on content it did not "
                 "learn from, the network's error is %.2f of the colour mapping's), so the colour fill is used", key,
                 error)
        return None
    translation = fit_edit_translation(source, edited, mapping, mask, seed=seed)
    log.info("learned fill, keyframe %d: on content it did not learn from, the network's error is %.2f of the "
             "colour mapping's (weights: luma %.2f, chroma %.2f, structure %.2f)", key, error, *translation.weights)
    return translation


def _learned_look(translation: EditTranslation, frame: Callable[[int], torch.Tensor],
                  mapped: Callable[[int], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """(k, where) -> frame k (1, 3, H, W) rendered by `translation` where `where` (H, W) is true (default
    everywhere), from `mapped(k)`: frame k through its global mapping (the rest of the frame)."""
    return lambda k, where=None: translation.look(frame(k), mapped(k), where)


SEAM_BAND = 32
"""Carried pixels within this distance (pixels at a long side of 640 or less; wider above, `translate.widths`) of the
filled ones give the learned fill's seam its continuation, and only these and the filled ones are rendered by the
network (its cost follows what is filled, not the frame's size)."""
SEAM_BLOCK = 8
"""The band is measured in blocks of this many pixels (a dilation at an eighth of the frame's size)."""


def seam_band(hole: torch.Tensor) -> torch.Tensor:
    """(1, 1, H, W) bool filled pixels -> (1, 1, H, W) bool: those and every pixel within SEAM_BAND of one (scaled
    with the frame like the feature bank's widths), to the next SEAM_BLOCK pixels."""
    h, w = hole.shape[-2:]
    band = SEAM_BAND * widths(max(h, w))
    r = math.ceil(band / SEAM_BLOCK)
    low = F.max_pool2d(hole.float(), SEAM_BLOCK, ceil_mode=True)
    low = F.max_pool2d(low, (2 * r + 1, 1), stride=1, padding=(r, 0))  # (separable: a square's max)
    low = F.max_pool2d(low, (1, 2 * r + 1), stride=1, padding=(0, r))
    return F.interpolate(low, scale_factor=SEAM_BLOCK, mode="nearest")[..., :h, :w] > 0


class _Trail:
    """The previous frame's result along one chain, followed to the chain's next frame by the consecutive flow: what a
    fill made for one frame is carried on where that flow is valid (made once, then followed), so it does not
    flicker. `follow` is called once per frame of the chain, in its order, and `keep` with that frame's result."""

    def __init__(self, ctx: _Context, chain: Sequence[int]) -> None:
        self.ctx, self.steps = ctx, chain_steps(ctx.motion, chain)
        self.prev: torch.Tensor | None = None  # (1, 3, H, W) the previous frame's result
        self.prev_made: torch.Tensor | None = None  # (1, 1, H, W) where the fill made it (not carried)

    def follow(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """At the chain's next frame (H, W): the previous frame's result carried to it (1, 3, H, W) and where that
        counts (1, 1, H, W): the flow valid and the pixel made there; None at the chain's first frame."""
        _, back, _, valid = next(self.steps)  # flow_{k->prev}, valid on frame k
        if self.prev is None:
            return None
        back, valid = self.ctx.here(back, valid)
        full = resize_flow(back, size)
        return warp(self.prev, full), _up(valid, size) * (warp(self.prev_made, full) > 0.5).float()

    def keep(self, img: torch.Tensor, made: torch.Tensor) -> None:
        """This frame's result (1, 3, H, W) and where the fill made it (1, 1, H, W), for the next frame."""
        self.prev, self.prev_made = img, made


class _Made:
    """The synthesis fill along one chain: what the flow cannot see at frame k is made from the keyframe's pair
    (source frame, edited frame); what was made for the previous frame of the chain is followed along the
    consecutive flow where that flow is valid (`_Trail`), and only the rest is made anew."""

    FULL = 0.999  # pixels carried at least this much from the keyframe are left as they are

    def __init__(self, ctx: _Context, chain: Sequence[int], source: torch.Tensor, edited: torch.Tensor,
                 seed: int) -> None:
        self.ctx, self.source, self.edited, self.seed = ctx, source, edited, seed
        self.trail = _Trail(ctx, chain)

    def fill(self, k: int, img: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        need = 1 - weight  # (1, 1, H, W): how much of each pixel is not carried from the keyframe
        out = img
        followed = torch.zeros_like(need)
        trail = self.trail.follow(tuple(img.shape[-2:]))
        if trail is not None:
            prev, followed = trail
            followed = followed * (need > 0)
            out = torch.where(followed > 0, weight * img + need * prev, img)
        hole = ((weight < self.FULL) & (followed == 0))[0, 0]
        if hole.any():
            made = synthesize(self.ctx.full(k), hole, self.source, self.edited, out[0].permute(1, 2, 0),
                              seed=frame_seed(self.seed, k)).permute(2, 0, 1)[None]
            out = torch.where(hole[None, None], weight * img + need * made, out)
        self.trail.keep(out, (need > 1 - self.FULL).float())
        return out.clamp(0, 1)


def _followed(trail: _Trail, img: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The learned fill's frame (1, 3, H, W) with its filled share (1 - weight) FOLLOW the chain's previous frame's
    result carried by the consecutive flow, where that is valid and that frame filled the pixel too."""
    followed = trail.follow(tuple(img.shape[-2:]))
    if followed is not None:
        prev, where = followed
        img = img + FOLLOW * where * (1 - weight) * (prev - img)
    trail.keep(img, (weight < 0.5).float())
    return img


def _with_source(fill: Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """fill(k) (1, 3, H, W) with the carried source's fill after it: zeros (what is filled is not carried)."""
    def both(k: int) -> torch.Tensor:
        img = fill(k)
        return torch.cat([img, torch.zeros_like(img)], 1)
    return both


def _source_gap(img: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """(1, 6, H, W) the carried edit and the keyframe's source carried with it, frame (H, W, 3) the frame's own source
    -> (1, 1, H, W): how far the carried source is from the frame's (largest channel)."""
    return (img[:, 3:] - frame.permute(2, 0, 1)[None]).abs().amax(1, keepdim=True)


def _veto(img: torch.Tensor, weight: torch.Tensor, gap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 6, H, W) the carried edit and the keyframe's source carried with it, (1, 1, H, W) the carried share and
    the carried source's `_source_gap` -> the carried edit (1, 3, H, W) and its share, none where the carried source
    differs from the frame's by more than AGREE."""
    return img[:, :3], weight * (gap <= AGREE).to(weight.dtype)


def pull_push(values: torch.Tensor, weight: torch.Tensor, levels: int = 12) -> torch.Tensor:
    """(1, C, H, W) values known where weight (1, 1, H, W) is 1, extended smoothly into the rest (weight 0).

    The pull-push interpolation of scattered data (Gortler et al., "The Lumigraph", SIGGRAPH 1996): weighted means
    are pulled down a pyramid of halvings, then pushed back up, each level filling what its finer level lacks. Known
    pixels are returned unchanged."""
    if float(weight.min()) >= 1:
        return values
    if float(weight.max()) <= 0:
        return torch.zeros_like(values)
    pyramid = [(values * weight, weight)]
    for _ in range(levels):
        v, w = pyramid[-1]
        if min(v.shape[-2:]) < 2:
            break
        pyramid.append((F.avg_pool2d(v, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)))
    v, w = pyramid[-1]
    est = v / w.clamp_min(1e-8)
    for v, w in reversed(pyramid[:-1]):
        up = F.interpolate(est, size=v.shape[-2:], mode="bilinear", align_corners=False)
        known = w.clamp(0, 1)
        est = known * (v / w.clamp_min(1e-8)) + (1 - known) * up
    return weight * values + (1 - weight) * est


KEYFRAMES_PER_FRAME = (1, 2)
"""What each frame is made from with several keyframes. 1: the keyframe nearest in time (`keyframes.keyframe_plan`:
each chain runs to the midpoint, two chains blend over `window` frames there). 2: its two nearest keyframes
(`keyframes.two_keyframe_plan`): both chains carry the frame, and per pixel the nearer keyframe's carry is taken
where its flow carries, else the other's where that carries; where both carry, the one whose carried source matches
the frame better (`_two_sides`); where neither, the two keyframes' fills weighed by how near each keyframe's carried
pixels are (`_fill_between`). So a frame gets the edit of whichever keyframe saw its content; twice the flow work
between keyframes."""
DEFAULT_KEYFRAMES_PER_FRAME = 2
"""A second keyframe then adds what it saw without taking from frames the first saw better (bench hard's keyframes
mode, docs/decisions.md "Several keyframes")."""


JUDGE_PATCH = 7
"""Side (pixels at a long side of 640 or less; wider above, `translate.widths`) of the square over which a carry's
mismatch (its carried source against the frame's own) is averaged when two keyframes' carries compete for a pixel."""


def _mismatch(gap: torch.Tensor) -> torch.Tensor:
    """A chain's `_source_gap` (1, 1, H, W) -> (H, W): averaged over JUDGE_PATCH."""
    side = 2 * round(JUDGE_PATCH * widths(max(gap.shape[-2:])) / 2) + 1
    return F.avg_pool2d(gap, side, stride=1, padding=side // 2, count_include_pad=False)[0, 0]


FILL_REACH = 8
"""Pixels (at a long side of 640 or less; wider above, `translate.widths`) over which a keyframe's fill loses its
weight with the distance from that keyframe's carried pixels, where neither of a frame's two keyframes carries."""
FILL_FRAMES = 30
"""Frames over which a keyframe's fill loses as much weight with its distance in time (FILL_REACH's pixels' worth)."""


def _two_sides(first: tuple[torch.Tensor, ...], second: tuple[torch.Tensor, ...], t: float,
               apart: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame k from its two keyframes' parts, each (frame (H, W, 3), filled share (H, W), mismatch (H, W)): 1 - t of
    the result that prefers `first` and t of the one that prefers `second`; the filled share is what neither carries.
    Preferring a over b: a's carry where it carries, else b's carry where that carries; where both carry, b's where
    its carried source matches the frame better (`_mismatch`: a keyframe that saw the content from nearer registers it
    better, whichever is nearer in time). Where neither carries: `_fill_between` (`apart`: frame k's distance in frames
    from the first keyframe and the second)."""
    def prefer(a, b):
        img = a[0] + (a[1] * (1 - b[1]))[..., None] * (b[0] - a[0])
        better = (a[1] < 0.5) & (b[1] < 0.5) & (b[2].half() < a[2].half())  # (float16: held as float32 or 16 alike)
        return torch.where(better[..., None], b[0], img), a[1] * b[1]
    if t <= 0:
        img, share = prefer(first, second)
    elif t >= 1:
        img, share = prefer(second, first)
    else:
        img, share = ((1 - t) * x + t * y for x, y in zip(prefer(first, second), prefer(second, first), strict=True))
    if float(share.max()) > 0:
        img = _fill_between(img, share, first, second, apart)
    return img, share


def _fill_between(img: torch.Tensor, share: torch.Tensor, first: tuple[torch.Tensor, ...],
                  second: tuple[torch.Tensor, ...], apart: tuple[int, int]) -> torch.Tensor:
    """Where neither keyframe carries (share, (H, W)): the two keyframes' fills, each weighted by exp(-(distance from
    its own carried pixels / FILL_REACH + distance in time / FILL_FRAMES)) against the other's (a fill is surest next to
    what its keyframe carries, and from the keyframe nearer in time), then continued from every carried pixel of the
    frame (`pull_push` of the difference, as the learned fill's seam): so the fill of the keyframe that sees more of
    the frame around a hole is used, whichever is nearer in time. img (H, W, 3): the frame as `_two_sides` made it."""
    cv2 = import_cv2()
    reach = FILL_REACH * widths(max(share.shape))
    costs = []
    for part, frames in zip((first, second), apart, strict=True):
        carried = (part[1] < 0.5).cpu().numpy()
        if not carried.any():
            return img  # a keyframe carries nothing here (a cut): the preferred one's fill, as it is
        far = cv2.distanceTransform((~carried).astype("uint8"), cv2.DIST_L2, 5)
        costs.append(torch.from_numpy(far).to(img.device) / reach + frames / FILL_FRAMES)
    w = torch.softmax(-torch.stack(costs), 0)[..., None]  # (2, H, W, 1)
    fill = w[0] * first[0] + w[1] * second[0]
    known = (share < 0.5).to(img.dtype)[None, None]
    fill = fill + pull_push((img - fill).permute(2, 0, 1)[None] * known, known)[0].permute(1, 2, 0)
    return img + share[..., None] * (fill - img)


class _Held:
    """With two keyframes per frame, the part (frame, filled share, mismatch) of the chain that reaches a frame first,
    until the other chain does, in the result's `dtype` (so a sink sees what a whole-clip run gives): in the result's
    own rows (frame and filled share; the mismatch beside them) when there is one, else in a temporary file
    (`TensorSlots`: memory stays flat; 5 values a pixel; a slot is reused once read, so the file holds at most the
    frames waiting at once: one gap between two keyframes, and one frame of the chains run in lockstep)."""

    def __init__(self, frames: torch.Tensor | None, filled: torch.Tensor | None, size: tuple[int, int],
                 dtype: torch.dtype, device: torch.device) -> None:
        self.frames, self.filled, self.dtype, self.device = frames, filled, dtype, device
        self.slots = TensorSlots((*size, 5), dtype) if frames is None else None
        self.mismatch: dict[int, torch.Tensor] = {}
        self.keys: dict[int, int] = {}
        self.where: dict[int, int] = {}  # frame -> its slot in the file
        self.free: list[int] = []  # slots read back, written again before the file grows

    def put(self, k: int, key: int, part: tuple[torch.Tensor, ...]) -> None:
        img, share, mismatch = part
        if self.slots is None:
            self.frames[k], self.filled[k] = img.cpu(), share.cpu()
            self.mismatch[k] = mismatch.to("cpu", self.dtype)
        else:
            self.where[k] = self.free.pop() if self.free else len(self.where) + len(self.free)
            self.slots[self.where[k]] = torch.cat([img, share[..., None], mismatch[..., None]], -1)
        self.keys[k] = key

    def take(self, k: int) -> tuple[int, tuple[torch.Tensor, ...]] | None:
        """(keyframe position, part) held for frame k, or None (then k's first part is still to come)."""
        if k not in self.keys:
            return None
        if self.slots is None:
            part = self.frames[k], self.filled[k], self.mismatch.pop(k)
        else:
            slot = self.where.pop(k)
            held = self.slots[slot]
            self.free.append(slot)
            part = held[..., :3], held[..., 3], held[..., 4]
        return self.keys.pop(k), tuple(x.to(self.device).float() for x in part)

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc) -> None:
        if self.slots is not None:
            self.slots.close()


def detect_cuts(motion: Motion | PairwiseMotion) -> list[int]:
    """Frame indices k + 1 where pair (k, k + 1) is a hard cut: its forward-backward validity collapses.

    Validity of a pair is the share of pixels consistent both ways; a cut is far below its neighbours' median
    (CUT_RATIO) and below CUT_MAX_VALID of the frame. Fast motion lowers validity over several pairs, not one.
    """
    n = len(motion)
    if n == 0:
        return []
    v = motion.validity()
    cuts = []
    for k in range(n):
        around = torch.cat([v[max(0, k - CUT_NEIGHBOURS):k], v[k + 1:k + 1 + CUT_NEIGHBOURS]])
        reference = float(around.median()) if around.numel() else 1.0
        if float(v[k]) < CUT_MAX_VALID and float(v[k]) < CUT_RATIO * reference:
            cuts.append(k + 1)
    return cuts


def _edited_region(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Keyframe k's (H, W) mask -> (H, W) float 0/1: the pixels the fits of its edit learn from, those at least half
    the mask's largest value there (a binary mask's ones; a soft or feathered mask's core, whatever its strength).
    An empty mask there is refused in one line: the keyframe would have no edit to carry."""
    m = mask.float()
    top = float(m.max())
    if top <= 0:
        raise MagicPropError(f"mask is empty at keyframe {k} (0 everywhere in frame {k}): expected the edited region "
                             f"of every keyframe marked (above 0); paint the mask over frame {k}'s edit, or leave the "
                             "mask out to edit whole frames.")
    return (m >= 0.5 * top).float()


def check_mask(mask, clip: tuple[int, int, int], indices: Sequence[int]):
    """flow_propagate's mask, checked before any work against the clip's (K, H, W) and its keyframes: a tensor as
    (1 or K, H, W) float ((H, W) and (.., 1) accepted), or any object with that `shape` whose `mask[k]` is frame k's
    (H, W) mask; none empty at a keyframe (`_edited_region`). None stays None."""
    if mask is None:
        return None
    k, h, w = clip
    if isinstance(mask, torch.Tensor):
        mask = mask.float()
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
    if len(mask.shape) != 3:
        raise MagicPropError(f"mask of shape {tuple(mask.shape)}: expected (1, H, W) or (K, H, W) masks with "
                             f"(K, H, W) = {(k, h, w)}: one mask for every frame, or one for all.")
    if tuple(mask.shape[1:]) != (h, w):
        raise MagicPropError(f"mask is {mask.shape[2]}x{mask.shape[1]} but the frames are {w}x{h}: resize the mask to "
                             "the frames' size.")
    if mask.shape[0] not in (1, k):
        raise MagicPropError(f"mask holds {mask.shape[0]} masks for {k} frames: expected one mask for every frame, or "
                             "one for all.")
    for i in indices:
        if 0 <= i < k:  # (an index outside the clip is refused by the keyframe checks, with their message)
            _edited_region(mask[i if mask.shape[0] > 1 else 0], i)
    return mask


def _check_inputs(frames, references, indices, strategy, mask, motion,
                  engine) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(frames, torch.Tensor | FrameSpool) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor | FrameSpool) else type(frames).__name__
        raise MagicPropError(f"flow propagation frames {shape}: expected a (K, H, W, 3) RGB clip.")
    k, h, w, _ = frames.shape
    if references.ndim == 3:
        references = references[None]
    if references.ndim != 4 or references.shape[-1] != 3:
        raise MagicPropError(f"reference of shape {tuple(references.shape)}: expected (N, H, W, 3) edited frames.")
    if tuple(references.shape[1:3]) != (h, w):
        raise MagicPropError(f"reference is {references.shape[2]}x{references.shape[1]} but the video frames are "
                             f"{w}x{h}: resize the edited reference to the video's size.")
    if len(indices) != references.shape[0]:
        raise MagicPropError(f"keyframe indices {list(indices)}: got {len(indices)} indices for "
                             f"{references.shape[0]} references; expected one index per edited reference.")
    if strategy not in STRATEGIES:
        raise MagicPropError(f"flow propagation strategy {strategy!r}: expected one of {sorted(STRATEGIES)}.")
    mask = check_mask(mask, (k, h, w), indices)
    if engine is None and (motion is None or strategy in KEYFRAME_FLOW_STRATEGIES):
        need = "a motion" if motion is None else f"strategy {strategy!r} estimates flow to the keyframes"
        raise MagicPropError(f"flow propagation without a flow engine: {need}; pass a FlowEngine, or the motion with "
                             f"one of {sorted(set(STRATEGIES) - KEYFRAME_FLOW_STRATEGIES)}.")
    if motion is not None and (len(motion) != k - 1 or tuple(motion.frame_size) != (h, w)):
        raise MagicPropError(f"motion has {len(motion)} pairs of {motion.frame_size} frames but the clip has {k} "
                             f"frames of {(h, w)}: pass the motion estimated from these frames.")
    return references, mask


def flow_propagate(
    frames: torch.Tensor,
    references: torch.Tensor,
    indices: Sequence[int],
    engine: FlowEngine | None,
    motion: Motion | None = None,
    strategy: str = DEFAULT_STRATEGY,
    window: int = 8,
    mask: torch.Tensor | None = None,
    callback: Callable[[int], None] | None = None,
    carry: str = DEFAULT_CARRY,
    dtype: torch.dtype = torch.float32,
    fill: str = DEFAULT_FILL,
    seed: int = 0,
    on_frame: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    device: torch.device | str = "cpu",
    keyframes_per_frame: int = DEFAULT_KEYFRAMES_PER_FRAME,
    progress: Callable[[int, int], None] | None = None,
) -> FlowResult:
    """Carry edited keyframes `references` (N, H, W, 3), at frame `indices`, through the clip `frames` (K, H, W, 3),
    float in [0, 1] or uint8 (converted a frame at a time), a tensor or a `FrameSpool` (read a frame at a time).

    motion: consecutive flow of `frames` (FlowEngine.consecutive); when None it is estimated here pair by pair as the
    chains step through it (`PairwiseMotion`: no flow held for the whole clip). keyframes_per_frame
    (KEYFRAMES_PER_FRAME): with 2 (the default) each frame is carried from its two nearest keyframes and takes, per
    pixel, the nearer's carry where it carries, else the other's (where both carry, the better registered; where
    neither, the fill of the one that carries around the pixel); with 1 each frame comes from its nearest keyframe's
    chain. Either way the nearer keyframe changes over `window` frames around the midpoint of two keyframes, blended
    linearly (no seam). mask (1 or K, H, W), a tensor or any object with that `shape` whose `mask[k]` is frame k's (H,
    W) float mask (read when needed): the edited region; outside it the source frame is kept exactly. callback(k) once
    per finished frame k (it may raise to cancel). progress(done, total) once per keyframe and per frame each chain
    carries (total: the keyframes and every chain's frames; with two keyframes per frame a frame counts once for each
    of its two chains, so a gap's first chain, whose frames wait for the second, advances it too; it may raise to
    cancel, as callback may). carry: what the flow carries (CARRIES). dtype: of the result's frames
    and filled shares (float16 halves what a long clip holds). Hard cuts are found (and logged) once the frames are
    carried.
    fill: what the pixels the flow cannot see get (FILLS); seed: synthesis's random search (frame k uses
    seeding.frame_seed(seed, k)). The `filled` share: the pixels not carried from a keyframe; the same for the colour
    and synthesis fills, and the learned fill's adds those whose carried source disagrees with the frame's (AGREE).

    on_frame(k, frame (H, W, 3), filled (H, W)), both in `dtype` (exactly what the result would hold for frame k),
    is called once per frame as soon as it is final (every chain that reaches it has passed: the keyframes first,
    then each chain's frames in the chain's order, a blended frame when its second chain reaches it); with it the
    whole-clip output is never allocated and the result's `frames` and `filled` are None. What memory holds then is
    what the chains need, not the clip: the chain's carried state, a few cached flow pairs, and with one keyframe per
    frame the blend window's first parts (at most `window` frames); with two, the first chain's parts of the frames
    between two keyframes wait in a temporary file (`_Held`: 5 values a pixel in `dtype`, at most one gap's frames)
    and the chains before the first keyframe and after the last run in lockstep (a frame waits for the other chain's
    same frame only).

    device: where the frame-size work runs (warps, the colour mapping, the fill, blending, masks; the learned fill's
    network is trained on the CPU and applied there); flow estimation with the OpenCV estimators and the working-size
    geometry (composition, consistency, homographies) stay on the CPU. Results come back to the CPU as the same
    tensors (equal to a CPU run to float rounding).
    """
    device = check_device(device, "flow propagation device")
    if carry not in CARRIES:
        raise MagicPropError(f"flow propagation carry {carry!r}: expected one of {sorted(CARRIES)}.")
    if fill not in FILLS:
        raise MagicPropError(f"flow propagation fill {fill!r}: expected one of {list(FILLS)}.")
    indices = [int(i) for i in indices]
    references, mask = _check_inputs(frames, references, indices, strategy, mask, motion, engine)
    if keyframes_per_frame not in KEYFRAMES_PER_FRAME:
        raise MagicPropError(f"keyframes_per_frame={keyframes_per_frame!r}: expected 1 (each frame from the keyframe "
                             "nearest in time) or 2 (from its two nearest keyframes, per pixel).")
    two = keyframes_per_frame == 2 and len(indices) > 1
    if two:  # index and window checks before the work
        groups, sides = two_keyframe_plan(indices, frames.shape[0], window)
        chains = [c for group in groups for c in group]
    else:
        chains, blends = keyframe_plan(indices, frames.shape[0], window)
    steps = [0, len(indices) + sum(len(c.indices) - 1 for c in chains)]  # (done, total) for progress

    def step() -> None:
        steps[0] += 1
        if progress is not None:
            progress(*steps)
    keyframes = set(indices)
    num, h, w, _ = frames.shape
    ctx = _Context(frames, engine, motion, device)
    frame, full = ctx.frame, ctx.full
    if strategy == "guided" and not engine.refines:
        log.info("flow: %s cannot refine an initial flow; strategy 'guided' uses its direct estimate to the keyframe, "
                 "snapped to the frame's dominant motions (no second estimate from the accumulated guess)",
                 engine.settings.estimator)
    if motion is None:
        # each chain running holds the pairs its worker estimated ahead (`_ahead`), the one in hand and its trail's
        ctx.motion = motion = PairwiseMotion(engine, ctx.small, num, (h, w), cache=(AHEAD + 2) * (2 if two else 1))

    def mask_of(k: int) -> torch.Tensor | None:
        return None if mask is None else mask[k if mask.shape[0] > 1 else 0]

    def edited_region(k: int) -> torch.Tensor | None:  # keyframe k's mask as the fits take it (made when needed)
        return None if mask is None else _edited_region(mask_of(k), k)

    mappings: list[EditMapping] = [fit_edit_mapping(frame(i), references[n].float(), edited_region(i))
                                   for n, i in enumerate(indices)]
    out = filled = None
    if on_frame is None:
        out = torch.empty(num, h, w, 3, dtype=dtype)
        filled = torch.zeros(num, h, w, dtype=dtype)

    def finish(k: int, img: torch.Tensor, fill_share: torch.Tensor) -> None:
        m = mask_of(k)
        if m is not None:
            m = m.to(device)
            img = m[..., None] * img + (1 - m[..., None]) * full(k)
            fill_share = fill_share * m
        if on_frame is None:
            out[k], filled[k] = img.clamp(0, 1).cpu(), fill_share.cpu()
        else:  # the cast a store into `out` would make, so a sink sees exactly the whole-clip result
            on_frame(k, img.clamp(0, 1).to("cpu", dtype), fill_share.to("cpu", dtype))
        if callback is not None:
            callback(k)

    for n, i in enumerate(indices):
        finish(i, references[n].float().to(device), torch.zeros(h, w, device=device))
        step()
    translations: dict[int, EditTranslation | None] = {}

    def run(chain: Chain) -> Iterator[tuple[int, int, tuple[torch.Tensor, torch.Tensor]]]:
        """(k, keyframe position, (frame k (H, W, 3), its filled share (H, W))) for each frame of the chain."""
        key, mapping = chain.key, mappings[chain.key]
        reference = references[key].float().to(device).permute(2, 0, 1)[None]
        if carry == "residual":  # the edit less its colour mapping's prediction, added back to each frame's mapping
            mapping = mapping.global_only()
            reference = reference - mapping.apply(full(indices[key])).permute(2, 0, 1)[None]

        look = _mapped_frames(mapping, full)
        learned = None
        if fill == "learned":
            if key not in translations:  # a keyframe's two chains share what it learned (trained once)
                translations[key] = _translation(frame, indices[key], references[key].float(),
                                                 mappings[key].global_only(), edited_region(indices[key]),
                                                 frame_seed(seed, 0))
            if translations[key] is not None:  # the look starts from the frame's global mapping (`look` with residual)
                learned = _learned_look(translations[key].to(device), full, look if carry == "residual" else
                                        _mapped_frames(mappings[key].global_only(), full))
        colour = (learned or look) if carry == "edit" else (lambda k: torch.zeros(1, 3, h, w, device=device))
        carried = colour
        travels = learned is not None or two  # the keyframe's source travels with the edit: the veto (AGREE), the judge
        if travels:
            reference = torch.cat([reference, full(indices[key]).permute(2, 0, 1)[None]], 1)
            carried = _with_source(colour)
        made = _Made(ctx, chain.indices, full(indices[key]), references[key].float().to(device), seed) \
            if fill == "synthesis" else None
        trail = _Trail(ctx, chain.indices) if learned is not None else None
        for k, img, weight in STRATEGIES[strategy](ctx, chain.indices, reference, carried):
            gap = _source_gap(img, full(k)) if travels else None
            mismatch = _mismatch(gap) if two else None
            if learned is not None:
                img, weight = _veto(img, weight, gap)
            elif two:
                img = img[:, :3]
            if carry == "residual" and learned is not None:  # the learned look, the seam to the carry continued
                img = img + look(k)
                if float(weight.min()) < 1:  # (a frame carried whole needs no fill)
                    near = seam_band(weight < 1)  # the filled pixels and the carried ones the seam continues
                    base = learned(k, near[0, 0])
                    img = weight * img + (1 - weight) * (base + pull_push(img - base, ((weight > 0.5) & near).float()))
                img = img.clamp(0, 1)
            elif carry == "residual":
                hole = (weight > 0.5).float()  # the residual of carried pixels, continued into the filled ones
                img = (weight * img + (1 - weight) * pull_push(img, hole) + look(k)).clamp(0, 1)
            else:
                img = weight * img + (1 - weight) * colour(k)
            if trail is not None:
                img = _followed(trail, img, weight)
            if made is not None:
                img = made.fill(k, img, weight)
            part = (img[0].permute(1, 2, 0), 1 - weight[0, 0])
            yield k, key, part if mismatch is None else (*part, mismatch)

    if not two:
        pending: dict[int, dict[int, tuple]] = {}
        for chain in chains:
            for k, key, part in run(chain):
                step()
                part = meet(pending, blends, k, key, part)
                if part is not None:
                    finish(k, *part)
    else:
        with _Held(out, filled, (h, w), dtype, device) as held:
            for group in groups:  # chains over the same frames in the same direction run in lockstep
                backward = group[0].indices[-1] < group[0].indices[0]
                runs = [run(c) for c in group]
                try:
                    for k, key, part in heapq.merge(*runs, key=lambda item: item[0], reverse=backward):
                        step()
                        if k in keyframes:  # a chain passing another keyframe: the keyframe is the edit
                            continue
                        part = (part[0].clamp(0, 1), *part[1:])
                        other = held.take(k)
                        if other is None:
                            held.put(k, key, part)
                            continue
                        parts = dict([other, (key, part)])
                        first, second, t = sides[k]
                        apart = (abs(k - indices[first]), abs(k - indices[second]))
                        finish(k, *_two_sides(parts[first], parts[second], t, apart))
                finally:  # a cancel or an error: each chain's flow worker (`_ahead`) stops now
                    for r in runs:
                        r.close()
    cuts = detect_cuts(motion)
    for c in cuts:
        log.warning("hard cut at frame %d (the flow from frame %d finds almost nothing): the edit cannot be carried "
                    "across it; add an edited keyframe at frame %d.", c, c - 1, c)
    return FlowResult(out, filled, cuts)
