"""Clip depth alignment speed: frames per second of ClipDepthAligner on K = 300 maps of 512x512.

    python bench/depth.py [--frames 300 --size 512 --repeats 5]

The maps are smooth random relative depth with a random scale and shift per frame (what a monocular model gives).
Median of --repeats runs after a warm-up; prints the figure and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "depth.json")
    args = parser.parse_args()
    import torch

    from magicprop.propdpm.depth import ClipDepthAligner

    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 1, 16, 16, generator=g), size=(args.size, args.size),
                                           mode="bicubic", align_corners=False)[0, 0]
    drift = torch.linspace(0, 1, args.size)[None, :]
    scale = torch.rand(args.frames, generator=g) * 1.5 + 0.5
    shift = torch.rand(args.frames, generator=g) - 0.5

    def run(frames: int) -> None:
        aligner = ClipDepthAligner()
        for k in range(frames):
            aligner.push(scale[k] * (base + 0.1 * k / frames * drift) + shift[k])
        aligner.finish()

    run(10)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run(args.frames)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    fps = args.frames / seconds
    result = {"frames": args.frames, "size": args.size, "repeats": args.repeats, "seconds": seconds,
              "frames_per_second": fps, "threads": torch.get_num_threads()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"clip depth alignment, K={args.frames} at {args.size}x{args.size}: {fps:.1f} frames/s "
          f"({seconds:.2f} s, median of {args.repeats}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
