"""Peak memory of propagation at K = 16, 64 and 256 frames (one resolution), for the node and for the CLI.

    python bench/memory.py [--size 128 --frames 16 64 256]
    python bench/memory.py --flow-guided     # a flow-guided PropDPM: flow propagation and motion inputs included

The node runs batched (its default max_batch 0). With --flow-guided the node is given OpticalFlowSequence's flow
and the source frames (both held by the host before the node runs, as its IMAGE inputs are) and the CLI estimates
the flow itself; the results go to memory-flow-guided.json.

Node: AutoregressivePropagate (decode off) runs inside the real ComfyUI host in a fresh process per K; its peak
host RSS while it runs, minus the RSS before it (which already holds the K-frame IMAGE inputs ComfyUI keeps).
CLI: `python -m magicprop propagate` on a K-frame video, peak RSS of the whole process.
On a GPU the node figure is torch.cuda.max_memory_allocated over the node. Each K's growth is set against the
bytes of the extra output latents; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # magicprop and harness (the in-process host), never tests/

from harness.rss import PeakRSS  # noqa: E402


def make_checkpoint(path: Path, tiny: dict, flow_guided: bool) -> Path:
    """The tiny PropDPM (random weights), extended to the flow-guided layout with DIS medium when asked."""
    from magicprop.propdpm.init_model import init_checkpoint
    from magicprop.tiny import TINY_UNET_CONFIG

    paper = init_checkpoint(path.with_suffix(".paper.safetensors") if flow_guided else path,
                            unet_config=dict(TINY_UNET_CONFIG), clip_vision=tiny["clip_vision"], seed=0)
    if not flow_guided:
        return paper
    from magicprop.motion.engine import FlowSettings
    from magicprop.propdpm.motion_inputs import flow_guided_checkpoint

    return flow_guided_checkpoint(paper, path, FlowSettings())


def node_child(frames: int, size: int, work: Path, flow_guided: bool = False) -> dict:
    """In a fresh process: run the node on K frames; return its memory growth."""
    from harness.host import enter_comfyui, find_comfyui

    comfy = find_comfyui()
    if comfy is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout")
    enter_comfyui(comfy, cpu=True)
    import execution
    import psutil
    import torch

    from harness.host import Host
    from magicprop.tiny import save_tiny_models

    tiny = save_tiny_models(work / "tiny")
    host = Host(ROOT, work / "comfy")
    make_checkpoint(host.models / "magicprop" / "m.safetensors", tiny, flow_guided)
    types = host.module("nodes.common.types")
    h = w = size // 8

    class BenchAppearance:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self):
            t = torch.randn(1, 1 + h * w // 4, 32)
            info = types.AppearanceInfo("bench", 32, False)
            return [[t, {types.APPEARANCE_KEY: info}]], [[torch.zeros_like(t), {types.APPEARANCE_KEY: info}]]

    class BenchFrames:
        """A moving synthetic clip (flow estimation needs texture and motion), used as both frames and depth."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"frames": ("INT", {"default": 16}), "size": ("INT", {"default": 128})}}

        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self, frames, size):
            from magicprop.synthetic import SceneConfig, make_clip

            return (make_clip(5, SceneConfig(size=size, frames=frames), edit=False).frames,)

    host.nodes.NODE_CLASS_MAPPINGS["BenchAppearance"] = BenchAppearance
    host.nodes.NODE_CLASS_MAPPINGS["BenchFrames"] = BenchFrames
    graph = {
        "1": {"class_type": "PropDPMLoader", "inputs": {"checkpoint": "m.safetensors", "weight_dtype": "fp32"}},
        "2": {"class_type": "TestTinyVAE", "inputs": {"folder": str(tiny["vae"])}},
        "3": {"class_type": "BenchFrames", "inputs": {"frames": frames, "size": size}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": 3355443}},
        "5": {"class_type": "BenchAppearance", "inputs": {}},
        "6": {"class_type": "AutoregressivePropagate", "inputs": {
            "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "vae": ["2", 0], "depth": ["3", 0],
            "reference": ["4", 0], "reference_index": 0, "seed": 0, "steps": 1, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "decode": False, "frame_previews": False}},
    }
    upstream = ["1", "2", "3", "4", "5"]
    if flow_guided:
        graph["7"] = {"class_type": "OpticalFlowSequence", "inputs": {
            "frames": ["3", 0], "estimator": "dis", "dis_preset": "medium", "raft_weights": "none",
            "work_size": 512, "batch_size": 8}}
        graph["6"]["inputs"].update(source_frames=["3", 0], flow=["7", 0])
        upstream.append("7")
    executor = execution.PromptExecutor(host.server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    executor.execute(graph, "warm", {"client_id": None}, upstream)  # inputs held by the host
    graph["6"]["inputs"]["seed"] = 1
    import gc

    gc.collect()
    before = psutil.Process().memory_info().rss
    with PeakRSS(os.getpid(), 0.002) as peak:
        executor.execute(graph, "run", {"client_id": None}, ["6"])
    assert executor.success, executor.status_messages
    latents = executor.caches.outputs.get("6").outputs[0][0]["samples"]
    return {"frames": frames, "growth_bytes": peak.peak - before,
            "latent_bytes": latents.numel() * latents.element_size()}


def make_video(path: Path, frames: int, size: int) -> None:
    from magicprop.io.stream import write_video
    from magicprop.synthetic import SceneConfig, make_clip

    clip = make_clip(5, SceneConfig(size=size, frames=frames), edit=False)
    write_video(path, clip.frames, fps=25, crf=18)


def cli_run(frames: int, size: int, video: Path, tiny: dict, ckpt: Path, work: Path) -> dict:
    from magicprop.io.images import save_image
    from magicprop.io.video import read_frames

    ref = work / "ref.png"
    if not ref.exists():
        save_image(ref, read_frames(video, 1)[0])
    cmd = [sys.executable, "-m", "magicprop", "-q", "propagate", "--checkpoint", str(ckpt), "--video", str(video),
           "--reference", str(ref), "--reference-index", "0", "--out", str(work / f"out-{frames}.mp4"),
           "--vae", str(tiny["vae"]), "--clip-vision", str(tiny["clip_vision"]), "--depth-model", str(tiny["depth"]),
           "--frames", str(frames), "--steps", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    with PeakRSS(proc.pid) as peak:
        proc.wait()
    if proc.returncode:
        raise SystemExit(f"CLI failed for K={frames}")
    h = w = size // 8
    return {"frames": frames, "peak_bytes": peak.peak, "latent_bytes": frames * 4 * h * w * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--flow-guided", action="store_true", help="a flow-guided PropDPM (flow propagation included)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default bench/results/memory.json (memory-flow-guided.json with --flow-guided)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.json = args.json or ROOT / "bench" / "results" / f"memory{'-flow-guided' if args.flow_guided else ''}.json"
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(node_child(args.child, args.size, Path(tmp), args.flow_guided)), flush=True)
        return

    node = []
    for k in args.frames:
        out = subprocess.run([sys.executable, __file__, "--child", str(k), "--size", str(args.size),
                              *(["--flow-guided"] if args.flow_guided else [])],
                             capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(out.stderr[-3000:])
        node.append(json.loads(line[7:]))
    from magicprop.tiny import save_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = save_tiny_models(work / "tiny")
        ckpt = make_checkpoint(work / "m.safetensors", tiny, args.flow_guided)
        video = work / "long.mp4"
        make_video(video, max(args.frames), args.size)
        cli = [cli_run(k, args.size, video, tiny, ckpt, work) for k in args.frames]

    mb = 2**20
    first, last = args.frames[0], args.frames[-1]
    n0, n1 = node[0], node[-1]
    c0, c1 = cli[0], cli[-1]
    extra_latents = n1["latent_bytes"] - n0["latent_bytes"]
    result = {"size": args.size, "flow_guided": args.flow_guided, "node": node, "cli": cli,
              "node_growth_bytes": n1["growth_bytes"] - n0["growth_bytes"],
              "cli_growth_bytes": c1["peak_bytes"] - c0["peak_bytes"],
              "extra_latent_bytes": extra_latents,
              "limit_bytes": 2 * extra_latents + 50 * mb}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"peak memory at {args.size}x{args.size} (MB){', flow-guided PropDPM' if args.flow_guided else ''}")
    print(f"{'K':>6}{'node growth':>14}{'CLI peak':>12}{'latents':>10}")
    for a, b in zip(node, cli):
        print(f"{a['frames']:>6}{a['growth_bytes'] / mb:>14.1f}{b['peak_bytes'] / mb:>12.1f}"
              f"{a['latent_bytes'] / mb:>10.2f}")
    print(f"growth {first}->{last} frames: node {result['node_growth_bytes'] / mb:.1f} MB, CLI "
          f"{result['cli_growth_bytes'] / mb:.1f} MB; limit 2 x extra latents + 50 MB = "
          f"{result['limit_bytes'] / mb:.1f} MB")


if __name__ == "__main__":
    main()
