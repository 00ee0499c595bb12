"""Optical flow engine: one place that estimates, checks, resizes, warps and composes dense motion.

Estimators come from well-kept libraries, picked by name from `ESTIMATORS`:
- "dis": OpenCV's Dense Inverse Search (Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016),
  presets ultrafast / fast / medium;
- "farneback": OpenCV's polynomial-expansion flow (Farneback, "Two-Frame Motion Estimation Based on Polynomial
  Expansion", SCIA 2003);
- "dualtvl1": OpenCV contrib's TV-L1 (Zach, Pock, Bischof 2007; Wedel et al. 2009), only where `cv2.optflow` exists;
- "raft": torchvision's RAFT (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms", ECCV 2020), small or large
  (told apart by the weights file), from a local weights file; nothing is downloaded.

Conventions: images (N, H, W, 3) floats in [0, 1]; flows (N, 2, h, w) float32 in pixels of the
resolution they are stored at, channel 0 = x; flow_{a->b}(p) = where the content at p in a is found in b.
Flow is estimated at a working resolution whose long side is `FlowSettings.work_size` (never upscaled).
Forward-backward consistency (Sundaram, Brox, Keutzer, "Dense Point Trajectories by GPU-Accelerated Large
Displacement Optical Flow", ECCV 2010) gives per-pixel validity.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MagicPropError
from ..log import get_logger
from .colour import luma
from .raft import RAFTEstimator

logger = get_logger(__name__)

CV2_INSTALL = "pip install opencv-contrib-python-headless"
DIS_PRESETS = ("ultrafast", "fast", "medium")


def import_cv2():
    """OpenCV, imported when first needed; one line naming the install command when it does not import."""
    try:
        import cv2
    except ImportError as e:
        raise MagicPropError(
            f"optical flow needs OpenCV, but `import cv2` failed ({e}): install it with `{CV2_INSTALL}` "
            "(the contrib wheel, a superset of the other cv2 flavours; install only one of them)."
        ) from None
    return cv2


def check_device(device, what: str = "device") -> torch.device:
    """`device` (a name or a torch.device) as a torch.device that this torch can use; one line naming the fix when not
    (checked before any work)."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MagicPropError(f"{what} {str(device)!r} cannot be used here ({reason}): expected 'cpu' or an accelerator "
                             "this torch was built for and can see (e.g. 'cuda', 'cuda:1', 'mps').") from None
    return dev


# -- settings --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowSettings:
    """How flow is estimated; recorded with every flow field so it can be reproduced and extended to keyframes."""

    estimator: str = "dis"  # a name in ESTIMATORS
    preset: str = "medium"  # DIS speed/quality preset (ultrafast|fast|medium); ignored by the other estimators
    weights: str | None = None  # RAFT weights file (.safetensors or torchvision's .pth); the others need none
    work_size: int = 512  # long side of the working resolution: larger frames are downscaled, smaller kept as they are
    device: str = "cpu"  # where RAFT runs; the OpenCV estimators always run on the CPU
    raft_iterations: int = 12  # RAFT's recurrent refinement steps (torchvision's default)

    def record(self) -> dict:
        """Estimator name and settings, with the weights file's name and sha256 prefix (never its folder)."""
        out = {"estimator": self.estimator, "work_size": self.work_size}
        if self.estimator == "dis":
            out["preset"] = self.preset
        if self.estimator == "raft":
            out["raft_iterations"] = self.raft_iterations
        if self.weights is not None:
            path = Path(self.weights)
            out["weights"] = path.name
            if path.is_file():
                out["weights_sha256"] = _sha256(path)[:16]
        return out

    @classmethod
    def from_record(cls, record: dict, weights: str | None = None, device: str = "cpu") -> FlowSettings:
        """Settings back from `record()`; `weights` is the resolved path of the recorded weights file name."""
        name = record.get("estimator")
        if name not in ESTIMATORS:
            raise MagicPropError(
                f"flow estimator {name!r} recorded with the flow cannot estimate new flow: expected one of "
                f"{sorted(ESTIMATORS)}; compute the flow with one of them (or pass flow to the keyframes too)."
            )
        if record.get("weights") and weights is None:
            raise MagicPropError(
                f"flow weights {record['weights']!r} recorded with the flow: pass the path of that file to re-estimate "
                "flow with the same RAFT model."
            )
        sha = record.get("weights_sha256")
        if weights is not None and sha and Path(weights).is_file() and not _sha256(Path(weights)).startswith(sha):
            logger.warning("flow weights %s differ from the file the flow was estimated with (sha256 %s...): new flow "
                           "to keyframes may not match it", Path(weights).name, sha)
        known = {f for f in asdict(cls()) if f not in ("weights", "device")}
        kwargs = {k: v for k, v in record.items() if k in known}
        return cls(**kwargs, weights=weights, device=device)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- estimators ------------------------------------------------------------------------------------------------


def _gray_u8(frames: torch.Tensor) -> list:
    """(N, h, w, 3) floats in [0, 1] -> N contiguous uint8 grey images (what the OpenCV estimators take)."""
    gray = luma(frames).clamp(0, 1).mul(255).round().to(torch.uint8)
    return [g.contiguous().numpy() for g in gray.cpu()]


class _OpenCVEstimator:
    """One OpenCV solver called pair by pair (each call is internally parallel)."""

    refines_init = True  # OpenCV's initial-flow mode: a guess is refined against the second frame

    def __init__(self, settings: FlowSettings):
        self.cv2 = import_cv2()
        self.settings = settings
        self.solver = self._make(settings)

    @staticmethod
    def check(settings: FlowSettings) -> None:
        import_cv2()

    @staticmethod
    def check_size(h: int, w: int) -> None:
        """One line before any estimate when frames of (h, w) at the working resolution are too small to estimate."""

    def _make(self, settings: FlowSettings):
        return None

    def _one(self, a, b, init=None):
        """flow a->b (h, w, 2) for uint8 grey a, b; init: a float32 (h, w, 2) guess the solver refines, or None."""
        raise NotImplementedError

    def __call__(self, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        guesses = [None] * a.shape[0] if init is None else \
            [g.contiguous().numpy() for g in init.float().permute(0, 2, 3, 1).cpu()]
        flows = [torch.from_numpy(self._one(x, y, g)) for x, y, g in zip(_gray_u8(a), _gray_u8(b), guesses)]
        return torch.stack(flows).permute(0, 3, 1, 2).float()  # (N, h, w, 2) -> (N, 2, h, w)


class _DIS(_OpenCVEstimator):
    @staticmethod
    def check(settings: FlowSettings) -> None:
        if settings.preset not in DIS_PRESETS:
            raise MagicPropError(
                f"DIS preset {settings.preset!r}: expected one of {list(DIS_PRESETS)} (faster to better)."
            )
        import_cv2()

    @staticmethod
    def check_size(h: int, w: int) -> None:
        if min(h, w) < 8 or max(h, w) < 12:  # OpenCV's DIS refuses these (measured on every size up to 39x39)
            raise MagicPropError(f"flow frames of {w}x{h} at the working resolution: DIS needs at least 8 pixels on "
                                 "the short side and 12 on the long one; use larger frames or a larger flow work size "
                                 "(--flow-size, OpticalFlowSequence's work_size), or the farneback estimator.")

    def _make(self, settings):
        preset = getattr(self.cv2, f"DISOPTICAL_FLOW_PRESET_{settings.preset.upper()}")
        return self.cv2.DISOpticalFlow_create(preset)

    def _one(self, a, b, init=None):
        if init is None:
            return self.solver.calc(a, b, None)
        # DIS takes a float32 (h, w, 2) flow argument as its initial flow (downscaled to its coarsest level). A solver
        # that was given one keeps using its last flow when later called without (measured, OpenCV 4.x/5.x), so
        # guided calls get a solver of their own.
        if getattr(self, "guided", None) is None:
            self.guided = self._make(self.settings)
        return self.guided.calc(a, b, init.copy())


class _Farneback(_OpenCVEstimator):
    # 5 pyramid levels (down to 1/16) reach large motions at 512 px; a 31 px window averages the polynomial fits over
    # more texture: on a known camera similarity at 512 px (bench/flow.py) the end-point error falls from 1.09 px
    # (15 px window) to 0.68, at the price of softer motion boundaries
    PARAMS = dict(pyr_scale=0.5, levels=5, winsize=31, iterations=3, poly_n=7, poly_sigma=1.5, flags=0)

    def _one(self, a, b, init=None):
        p = self.PARAMS
        flags = p["flags"] | (0 if init is None else self.cv2.OPTFLOW_USE_INITIAL_FLOW)
        return self.cv2.calcOpticalFlowFarneback(a, b, None if init is None else init.copy(), p["pyr_scale"],
                                                 p["levels"], p["winsize"], p["iterations"], p["poly_n"],
                                                 p["poly_sigma"], flags)


class _DualTVL1(_OpenCVEstimator):
    @staticmethod
    def check(settings: FlowSettings) -> None:
        cv2 = import_cv2()
        if not hasattr(cv2, "optflow"):
            raise MagicPropError(
                f"flow estimator 'dualtvl1' needs OpenCV's contrib module cv2.optflow, which this cv2 "
                f"({getattr(cv2, '__version__', '?')}) lacks: replace it with `{CV2_INSTALL}` (uninstall the other "
                "opencv-python flavours first), or pick estimator 'dis'."
            )

    def _make(self, settings):
        # OpenCV's default scale step 0.8 over 5 scales only reaches 0.41x: motions beyond ~5 px are lost (2.5 px mean
        # error at 512 px in bench/flow.py). Halving per scale reaches 1/16 and is faster: 0.03 px, 5x less time.
        return self.cv2.optflow.DualTVL1OpticalFlow_create(scaleStep=0.5)

    def _one(self, a, b, init=None):
        self.solver.setUseInitialFlow(init is not None)
        return self.solver.calc(a, b, None if init is None else init.copy())


# name -> estimator class; error messages list these names
ESTIMATORS: dict[str, type] = {"dis": _DIS, "farneback": _Farneback, "dualtvl1": _DualTVL1, "raft": RAFTEstimator}


# -- geometry helpers (the one owner of warping, resizing and composing flow) --------------------------------------


def _grid(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, h, w) pixel flow -> grid_sample grid (N, h, w, 2) of p + flow(p), pixel centres (align_corners=False)."""
    _, _, h, w = flow.shape
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device)
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device)
    gx = (xs[None, None, :] + flow[:, 0] + 0.5) * (2.0 / w) - 1
    gy = (ys[None, :, None] + flow[:, 1] + 0.5) * (2.0 / h) - 1
    return torch.stack([gx, gy], -1)


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """Backward warp: out(p) = image(p + flow(p)). image (N, C, H, W), flow (N, 2, H, W) in pixels.

    To carry frame r to frame t pass flow_{t->r}. Samples outside the image take the nearest edge pixel
    (padding="border"), or 0 with padding="zeros"; use `inside` to know which pixels that was.
    """
    flow = flow.to(image.dtype) if image.is_floating_point() else flow.float()
    return F.grid_sample(image, _grid(flow), mode=mode, padding_mode=padding, align_corners=False)


def inside(flow: torch.Tensor) -> torch.Tensor:
    """(N, h, w) bool: p + flow(p) lands inside the frame (its content is visible there, unless occluded)."""
    _, _, h, w = flow.shape
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device)[:, None]
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device)[None, :]
    x, y = xs + flow[:, 0], ys + flow[:, 1]
    return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Flow (N, 2, h, w) resampled to size (H, W), its vectors scaled to the new pixel units (x by W/w, y by H/h)."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=out.dtype, device=out.device)
    return (out * scale[None, :, None, None]).to(flow.dtype)


def compose(flow_ab: torch.Tensor, flow_bc: torch.Tensor) -> torch.Tensor:
    """flow_{a->c}(p) = flow_{a->b}(p) + flow_{b->c}(p + flow_{a->b}(p)), all (N, 2, h, w) in pixels."""
    return flow_ab + warp(flow_bc.to(flow_ab.dtype), flow_ab)


def consistency(flow_ab: torch.Tensor, flow_ba: torch.Tensor, alpha: float = 0.01, beta: float = 0.5) -> torch.Tensor:
    """(N, h, w) bool validity of flow_ab by the forward-backward check of Sundaram, Brox & Keutzer (ECCV 2010).

    p is valid when |f_ab(p) + f_ba(q)|^2 < alpha (|f_ab(p)|^2 + |f_ba(q)|^2) + beta with q = p + f_ab(p), and q is
    inside the frame. A point occluded in b (or leaving it) fails: the backward flow at q belongs to the occluder.
    beta is in squared pixels of the flow's resolution.
    """
    fab = flow_ab.float()
    back = warp(flow_ba.float(), fab)  # f_ba(q)
    err = (fab + back).square().sum(1)
    bound = alpha * (fab.square().sum(1) + back.square().sum(1)) + beta
    return (err < bound) & inside(fab)


# -- the engine ------------------------------------------------------------------------------------------------


@dataclass(eq=False)  # tensors inside: compare fields explicitly
class Motion:
    """Flow of N frame pairs (a_i, b_i) in both directions, at working resolution, fp16 on the CPU.

    From `FlowEngine.consecutive`: a_i = frame i, b_i = frame i + 1 (N = K - 1). From `FlowEngine.to_keyframe`:
    a_i = frame i, b_i = the keyframe (N = K). forward = flow_{a->b}, backward = flow_{b->a}; valid_forward marks
    pixels of a whose forward flow passes the consistency check (visible in b), valid_backward the same for b.
    """

    forward: torch.Tensor  # (N, 2, h, w) fp16, pixels of the working resolution
    backward: torch.Tensor  # (N, 2, h, w) fp16
    valid_forward: torch.Tensor  # (N, h, w) bool
    valid_backward: torch.Tensor  # (N, h, w) bool
    frame_size: tuple[int, int]  # (H, W) of the frames the flow was estimated from
    settings: dict  # FlowSettings.record()

    @property
    def work_size(self) -> tuple[int, int]:
        return tuple(self.forward.shape[-2:])

    def __len__(self) -> int:
        return self.forward.shape[0]

    def to_float(self) -> Motion:
        """The same motion with float32 flows (for arithmetic; storage stays fp16)."""
        return Motion(self.forward.float(), self.backward.float(), self.valid_forward, self.valid_backward,
                      self.frame_size, self.settings)

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(forward (2, h, w), backward, valid_forward (h, w), valid_backward) of pair i, as stored."""
        return self.forward[i], self.backward[i], self.valid_forward[i], self.valid_backward[i]

    def validity(self) -> torch.Tensor:
        """(N,) share of each pair's pixels consistent both ways (the mean of its two validity maps' shares)."""
        return (self.valid_forward.float().flatten(1).mean(1) + self.valid_backward.float().flatten(1).mean(1)) / 2


class PairwiseMotion:
    """The consecutive motion of a clip estimated pair by pair when a chain steps through it, for long clips: only
    the last `cache` pairs and one validity share per pair are held, where `FlowEngine.consecutive` holds every
    pair's flow (at 512 px, 1.5 MB a pair). Each pair is `consecutive` of its two frames (what it stores for the
    whole clip); a pair asked for again after it left the cache (two chains meeting in a blend window) is estimated
    again.

    frame(k) gives frame k (H, W, 3) of the `count` frames of size `frame_size`.
    """

    def __init__(self, engine: FlowEngine, frame: Callable[[int], torch.Tensor], count: int,
                 frame_size: tuple[int, int], cache: int = 4) -> None:
        self.engine, self.frame, self.count, self.cache = engine, frame, int(count), max(1, int(cache))
        self.frame_size, self.settings = tuple(frame_size), engine.settings.record()
        self._pairs: dict[int, tuple[torch.Tensor, ...]] = {}
        self._validity = torch.full((max(0, self.count - 1),), float("nan"))
        self._lock = threading.Lock()  # flow propagation estimates ahead in a worker thread

    def __len__(self) -> int:
        return max(0, self.count - 1)

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with self._lock:
            if i not in self._pairs:
                motion = self.engine.consecutive([self.frame(i), self.frame(i + 1)])
                if len(self._pairs) >= self.cache:
                    del self._pairs[next(iter(self._pairs))]
                self._pairs[i], self._validity[i] = motion.pair(0), motion.validity()[0]
            return self._pairs[i]

    def validity(self) -> torch.Tensor:
        """As `Motion.validity`; pairs no chain stepped through are estimated now (their flow is not kept)."""
        for i in range(len(self)):
            if math.isnan(float(self._validity[i])):
                self.pair(i)
        return self._validity.clone()


def as_frame(frame) -> torch.Tensor:
    """A frame as a (H, W, 3) float tensor in [0, 1] (uint8 arrays and tensors are scaled)."""
    x = torch.as_tensor(frame)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


class FlowEngine:
    """Estimates flow at the working resolution with the estimator `settings` names (built once, on first use)."""

    def __init__(self, settings: FlowSettings | None = None):
        self.settings = settings or FlowSettings()
        self._estimator = None
        self._lock = threading.RLock()
        self.check()

    def check(self) -> None:
        """One-line errors before work: unknown estimator, bad preset or size, no cv2 (or cv2.optflow), no weights."""
        s = self.settings
        if s.estimator not in ESTIMATORS:
            raise MagicPropError(f"flow estimator {s.estimator!r}: expected one of {sorted(ESTIMATORS)}.")
        if not isinstance(s.work_size, int) or s.work_size < 8:
            raise MagicPropError(f"flow work_size={s.work_size!r}: expected an integer long side of 8 pixels or more "
                                 "(default 512).")
        if s.estimator == "raft":
            check_device(s.device, "RAFT device")
        ESTIMATORS[s.estimator].check(s)

    @property
    def refines(self) -> bool:
        """Whether the estimator refines an initial guess (`flow(..., init=)`); one that cannot ignores it."""
        return ESTIMATORS[self.settings.estimator].refines_init

    @property
    def estimator(self):
        with self._lock:
            if self._estimator is None:
                self._estimator = ESTIMATORS[self.settings.estimator](self.settings)
            return self._estimator

    def work_shape(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) of the working resolution for frames of size (h, w): long side work_size, never upscaled."""
        scale = min(1.0, self.settings.work_size / max(h, w))
        return max(1, round(h * scale)), max(1, round(w * scale))

    def check_frames(self, h: int, w: int) -> tuple[int, int]:
        """One line when frames of size (h, w) are too small for the estimator at the working resolution (before any
        work when a caller knows the size); returns that resolution."""
        h, w = self.work_shape(h, w)
        ESTIMATORS[self.settings.estimator].check_size(h, w)
        return h, w

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) frames -> (N, h, w, 3) float32 at the working resolution (area-averaged when downscaled)."""
        frames = as_frame(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise MagicPropError(f"flow frames of shape {tuple(frames.shape)}: expected (N, H, W, 3) RGB images.")
        h, w = self.check_frames(*frames.shape[1:3])
        if (h, w) == tuple(frames.shape[1:3]):
            return frames
        x = F.interpolate(frames.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False,
                          antialias=True)
        return x.permute(0, 2, 3, 1).clamp(0, 1)

    def flow(self, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        """flow_{a->b} (N, 2, h, w) float32 at the working resolution, for frame batches a, b (N, H, W, 3).

        init: a first guess of flow_{a->b} (N, 2, h, w) at the working resolution that the estimator refines against
        b (OpenCV's initial-flow mode for DIS, Farneback and DualTVL1). RAFT ignores it: torchvision's RAFT has no
        flow_init (its updates start from zero flow), so RAFT's result is the same with or without a guess
        (`refines` is False: callers skip the guess instead of estimating the same flow twice).
        """
        a, b = self.prepare(a), self.prepare(b)
        if a.shape != b.shape:
            raise MagicPropError(f"flow frames: a is {tuple(a.shape)} but b is {tuple(b.shape)}: the two frames of "
                                 "each pair must have one size.")
        if init is not None and tuple(init.shape) != (a.shape[0], 2, *a.shape[1:3]):
            raise MagicPropError(f"initial flow of shape {tuple(init.shape)}: expected {(a.shape[0], 2, *a.shape[1:3])}"
                                 ", one (2, h, w) guess per pair at the working resolution (FlowEngine.work_shape).")
        with self._lock:  # one estimate at a time: an OpenCV solver object is not safe to share between threads
            return self.estimator(a, b) if init is None else self.estimator(a, b, init)

    def both(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(flow_ab, flow_ba, valid_ab, valid_ba) for frame batches a, b: both directions and their consistency."""
        a, b = self.prepare(a), self.prepare(b)
        n = a.shape[0]
        flows = self.flow(torch.cat([a, b]), torch.cat([b, a]))  # one batch for both directions (RAFT batches it)
        fab, fba = flows[:n], flows[n:]
        return fab, fba, consistency(fab, fba), consistency(fba, fab)

    def _collect(self, pairs: Iterator[tuple[torch.Tensor, torch.Tensor]], total: int | None, frame_size,
                 callback: Callable[[int], None] | None) -> Motion:
        """Run `both` over batches of prepared pairs and store the results fp16 (preallocated when total is known)."""
        chunks, done, store = [], 0, None
        for a, b in pairs:
            fab, fba, vab, vba = self.both(a, b)
            out = (fab.half(), fba.half(), vab, vba)
            if total is not None:
                if store is None:
                    store = [torch.empty((total, *x.shape[1:]), dtype=x.dtype) for x in out]
                for s, x in zip(store, out):
                    s[done:done + x.shape[0]] = x
            else:
                chunks.append(out)
            for i in range(a.shape[0]):
                if callback is not None:
                    callback(done + i + 1)
            done += a.shape[0]
        if total is None:
            if not chunks:
                raise MagicPropError("flow frames: got no frame pairs; expected at least 2 frames.")
            store = [torch.cat(parts) for parts in zip(*chunks)]
        elif done != total:
            raise MagicPropError(f"flow frames: got {done} pairs but expected {total}.")
        return Motion(*store, frame_size=frame_size, settings=self.settings.record())

    def consecutive(self, frames: torch.Tensor | Iterable, batch: int = 8,
                    callback: Callable[[int], None] | None = None) -> Motion:
        """Forward and backward flow of every consecutive pair, with validity (streamed in batches of pairs).

        frames: a (K, H, W, 3) tensor or any iterable of (H, W, 3) frames (a decoder: only `batch + 1` working-
        resolution frames are held at once). callback(n) after each pair, n = pairs done (1 .. K-1).
        """
        if batch < 1:
            raise MagicPropError(f"flow batch={batch}: expected 1 or more frame pairs per batch.")
        total = len(frames) - 1 if hasattr(frames, "__len__") else None  # known: the results are preallocated
        if total is not None and total < 1:
            raise MagicPropError(f"flow frames: got {len(frames)} frame(s); expected at least 2.")
        size: list[tuple[int, int]] = []

        def pairs():
            held = []
            for frame in frames:
                frame = as_frame(frame)
                if frame.ndim != 3 or frame.shape[-1] != 3:
                    raise MagicPropError(f"flow frame of shape {tuple(frame.shape)}: expected (H, W, 3).")
                if not size:
                    size.append(tuple(frame.shape[:2]))
                elif tuple(frame.shape[:2]) != size[0]:
                    raise MagicPropError(f"flow frame {len(held)} is {frame.shape[1]}x{frame.shape[0]} but the first "
                                         f"is {size[0][1]}x{size[0][0]}: every frame must have one size.")
                held.append(self.prepare(frame)[0])
                if len(held) == batch + 1:
                    yield torch.stack(held[:-1]), torch.stack(held[1:])
                    held = held[-1:]
            if len(held) > 1:
                yield torch.stack(held[:-1]), torch.stack(held[1:])

        it = pairs()
        first = next(it, None)
        if first is None:
            raise MagicPropError("flow frames: got fewer than 2 frames; expected at least 2.")
        return self._collect(itertools.chain([first], it), total, size[0], callback)

    def to_keyframe(self, frames: torch.Tensor | Iterable, keyframe: torch.Tensor, batch: int = 8,
                    callback: Callable[[int], None] | None = None) -> Motion:
        """Flow from every frame to one keyframe and back (pairs a_i = frame i, b_i = keyframe), streamed in batches.

        forward[i] = flow_{i->key} (sample the keyframe, or its edit, at p + forward[i](p) to carry it to frame i),
        valid_forward[i] marks pixels of frame i visible in the keyframe.
        """
        if batch < 1:
            raise MagicPropError(f"flow batch={batch}: expected 1 or more frame pairs per batch.")
        key = self.prepare(keyframe)
        total = len(frames) if hasattr(frames, "__len__") else None
        size = tuple(as_frame(keyframe).shape[-3:-1])

        def pairs():
            held = []
            for frame in frames:
                frame = as_frame(frame)
                if tuple(frame.shape) != (*size, 3):
                    raise MagicPropError(f"flow frame of shape {tuple(frame.shape)}: expected the keyframe's "
                                         f"{(*size, 3)}.")
                held.append(self.prepare(frame)[0])
                if len(held) == batch:
                    yield torch.stack(held), key.expand(len(held), -1, -1, -1)
                    held = []
            if held:
                yield torch.stack(held), key.expand(len(held), -1, -1, -1)

        return self._collect(pairs(), total, size, callback)


__all__ = [
    "CV2_INSTALL", "DIS_PRESETS", "ESTIMATORS", "FlowEngine", "FlowSettings", "Motion", "PairwiseMotion", "compose",
    "as_frame", "check_device", "consistency", "import_cv2", "inside", "resize_flow", "warp",
]
