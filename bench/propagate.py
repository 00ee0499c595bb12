"""Propagation speed, side by side in one process with the same model, size, steps, cfg and sampler:

  (a) AutoregressivePropagate on K frames, executed by ComfyUI's PromptExecutor (upstream nodes cached, decode off);
  (b) ComfyUI's own KSampler (nodes.common_ksampler) run K-1 times on the same model and conditioning: the anchor,
      what the host itself achieves per image;
  (c) the host-free backend (diffusers, DDIM trailing) on the same K frames;
  (d) the layouts where chains run side by side, at K = --chain-frames (25): the reference in mid-clip (index K//2:
      a forward and a backward chain) and 3 keyframes (0, K//2, K-1, window 4: four chains), each batched (every
      round's frames in one sampler call, the node's default) and sequential (max_batch 1), per generated frame;
  (e) OpticalFlowSequence (DIS medium) on the --chain-frames frames at the preset's size: the flow estimation a
      flow-guided run adds, and its share of a mid-clip batched run;
  (f) the profile behind the ratios: per sample, at batch 1, 2 and 4, one step of the host's own sampler (KSampler's
      path, the one the node's rounds take) and one forward of the host-free backend's UNet.

Each figure is the median of --repeats runs after a warm-up (--chain-repeats for (d)); (a) and (b), and each layout's
batched and sequential runs, are measured interleaved, so that a machine whose speed drifts slows both alike. Prints a
table and writes JSON.

    python bench/propagate.py                        # CPU: SD1.5-shaped UNet (64 .. 256 channels), 256 px, 10 steps
    python bench/propagate.py --preset sd15 --device cuda   # GPU: full SD1.5 size, 512 px, fp16, 20 steps, cfg 5,
                                                            # K = 17, and peak memory of the batched node at K = 300
    python bench/propagate.py --pytorch-attention    # the host run with --use-pytorch-cross-attention

What a batch saves is the host's: the node samples with the host's model and attention. ComfyUI's default attention
on CPU is sub-quadratic (chunked, whose cost grows with the batch); on NVIDIA GPUs it is PyTorch's SDPA. The JSON
records the attention the host used.

The host is found through COMFYUI_PATH (or as the parent of custom_nodes/). Weights are random (speed does not
depend on their values); the VAE is the tiny 4-level one of magicprop.tiny in every variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # magicprop and harness (the in-process host), never tests/

PRESETS = {
    "cpu": {"channels": [64, 128, 256, 256], "size": 256, "steps": 10, "cfg": 1.0, "dtype": "fp32"},
    "sd15": {"channels": [320, 640, 1280, 1280], "size": 512, "steps": 20, "cfg": 5.0, "dtype": "fp16",
             "frames": 17, "chain_frames": 17, "memory_frames": 300, "memory_steps": 2, "repeats": 3,
             "chain_repeats": 2},
}
RESULTS = ROOT / "bench" / "results"


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    """Median wall time of `fn` over `repeats` runs after a warm-up; `sync` waits for queued device work."""
    return interleaved_medians({"fn": fn}, repeats, sync)["fn"]


def interleaved_medians(fns: dict, repeats: int, sync=lambda: None) -> dict:
    """Median wall time of each of `fns`, their runs interleaved (A B, B A, A B, ...) after one warm-up each, so that
    a machine whose speed drifts during the bench slows every variant alike instead of the one measured last."""
    for fn in fns.values():
        fn()
    sync()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=None, help="K of (a)-(c) (K-1 frames are generated); "
                                                                    "default 5 (sd15: 17)")
    parser.add_argument("--chain-frames", type=int, default=None, help="K of (d) and (e); default 25 (sd15: 17)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (sd15: 3)")
    parser.add_argument("--chain-repeats", type=int, default=None, help="default 3 (sd15: 2)")
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="run the host with --use-pytorch-cross-attention (its CPU default is sub-quadratic)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default bench/results/propagate.json (sd15: propagate-sd15.json, never the CPU file; "
                             "-pytorch-attention added with that flag)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    args.frames = args.frames or preset.get("frames", 5)
    args.chain_frames = args.chain_frames or preset.get("chain_frames", 25)
    args.repeats = args.repeats or preset.get("repeats", 5)
    args.chain_repeats = args.chain_repeats or preset.get("chain_repeats", 3)
    name = "propagate" + ("" if args.preset == "cpu" else f"-{args.preset}")
    args.json = args.json or RESULTS / (name + ("-pytorch-attention" if args.pytorch_attention else "") + ".json")

    from harness.host import enter_comfyui, find_comfyui

    comfy = find_comfyui()
    if comfy is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout")
    enter_comfyui(comfy, cpu=args.device == "cpu", pytorch_attention=args.pytorch_attention)
    import torch

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    from harness.host import Host
    from magicprop.keyframes import keyframe_plan
    from magicprop.propdpm.checkpoint import load_checkpoint
    from magicprop.propdpm.diffusers_backend import DiffusersDenoiser
    from magicprop.propdpm.init_model import init_checkpoint
    from magicprop.propdpm.loop import propagate
    from magicprop.tiny import save_tiny_models, sd_shaped_config

    work = Path(tempfile.mkdtemp(prefix="magicprop-bench-"))
    tiny = save_tiny_models(work / "tiny")
    host = Host(ROOT, work / "comfy")
    ckpt = init_checkpoint(host.models / "magicprop" / "bench.safetensors",
                           unet_config=sd_shaped_config(preset["channels"]), seed=0)
    k, size, steps, cfg = args.frames, preset["size"], preset["steps"], preset["cfg"]
    h = w = size // 8
    types = host.module("nodes.common.types")
    model_mod = host.module("nodes.propdpm.model")

    # (a) the node, through the executor; everything upstream is cached after the first run
    graph = {
        "1": {"class_type": "PropDPMLoader",
              "inputs": {"checkpoint": "bench.safetensors", "weight_dtype": preset["dtype"]}},
        "2": {"class_type": "TestTinyVAE", "inputs": {"folder": str(tiny["vae"])}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": k, "color": 8421504}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": 3355443}},
        "5": {"class_type": "BenchAppearance", "inputs": {"tokens": 1 + h * w // 4}},
        "6": {"class_type": "AutoregressivePropagate", "inputs": {
            "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "vae": ["2", 0], "depth": ["3", 0],
            "reference": ["4", 0], "reference_index": 0, "seed": 0, "steps": steps, "cfg": cfg,
            "sampler_name": "euler", "scheduler": "simple", "decode": False, "frame_previews": False}},
    }

    class BenchAppearance:
        """Appearance conditioning of the right shape without a CLIP vision model (speed only)."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"tokens": ("INT", {"default": 17})}}

        RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self, tokens):
            t = torch.randn(1, tokens, 768)
            info = types.AppearanceInfo("bench", 768, False)
            return [[t, {types.APPEARANCE_KEY: info}]], [[torch.zeros_like(t), {types.APPEARANCE_KEY: info}]]

    host.nodes.NODE_CLASS_MAPPINGS["BenchAppearance"] = BenchAppearance
    import execution

    executor = execution.PromptExecutor(host.server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    seed = [0]

    def run_node():
        seed[0] += 1
        graph["6"]["inputs"]["seed"] = seed[0]
        executor.execute(graph, str(seed[0]), {"client_id": None, "preview_method": "none"}, ["6"])
        assert executor.success, executor.status_messages

    run_node()  # loads the model into the executor's cache, which (b) takes it from

    # (b) the host's KSampler on the same model and conditioning, once per generated frame
    import nodes

    model = executor.caches.outputs.get("1").outputs[0][0]
    positive, negative = executor.caches.outputs.get("5").outputs[0][0], executor.caches.outputs.get("5").outputs[1][0]
    concat = torch.randn(1, 6, h, w)
    positive = [[c[0], {**c[1], model_mod.CONCAT_KEY: concat}] for c in positive]
    negative = [[c[0], {**c[1], model_mod.CONCAT_KEY: concat}] for c in negative]
    latent = {"samples": torch.zeros(1, 4, h, w)}

    def run_ksampler():
        for i in range(k - 1):
            nodes.common_ksampler(model, i, steps, cfg, "euler", "simple", positive, negative, latent, denoise=1.0)

    ab = interleaved_medians({"a": run_node, "b": run_ksampler}, args.repeats, sync)
    a, b = ab["a"], ab["b"]
    # each phase's figures as soon as they are measured, in case a device run is cut short
    print(f"(a) node {a / (k - 1):.3f} s/frame, (b) KSampler {b / (k - 1):.3f}", flush=True)

    # (a') the same with the web filmstrip's frame previews on, sent through a (fake) server as in the UI
    import server

    server.PromptServer.instance = host.server
    host.server.client_id = "bench"
    graph["6"]["inputs"]["frame_previews"] = True
    a_previews = median_time(run_node, args.repeats, sync)
    graph["6"]["inputs"]["frame_previews"] = False
    sent = sum(1 for event, _ in host.server.messages if event == "magicprop.frame")
    assert sent >= k, "frame previews were not sent"

    # (c) the host-free backend on the same checkpoint
    core = load_checkpoint(ckpt)
    dtype = torch.float16 if preset["dtype"] == "fp16" else torch.float32
    unet = core.build_unet(dtype).to(args.device).eval()
    tokens = positive[0][0]
    denoiser = DiffusersDenoiser(unet, core.config, tokens, steps=steps, cfg=cfg)
    ref = torch.randn(1, 4, h, w)
    depth = torch.rand(k, 1, h, w)

    def run_core():
        propagate(denoiser, ref, depth, 0, 0)

    c = median_time(run_core, args.repeats, sync)

    # (d) chains side by side at K = chain_frames, batched and sequential, through the executor as in (a)
    kc = args.chain_frames
    mid, last = kc // 2, kc - 1
    layouts = {"mid": {"reference_index": mid, "keyframe_indices": "", "references": 1},
               "keyframes3": {"reference_index": 0, "keyframe_indices": f"0, {mid}, {last}", "keyframe_window": 4,
                              "references": 3}}
    graph["3"]["inputs"]["batch_size"] = kc
    chain_seconds, generated = {}, {}
    for name, layout in layouts.items():
        graph["4"]["inputs"]["batch_size"] = layout["references"]
        graph["6"]["inputs"].update({k: v for k, v in layout.items() if k != "references"})
        keys = [int(i) for i in layout["keyframe_indices"].split(",")] if layout["keyframe_indices"] else [mid]
        chains, _ = keyframe_plan(keys, kc, layout.get("keyframe_window", 8))
        generated[name] = sum(len(c.indices) - 1 for c in chains)

        def run_mode(max_batch):
            graph["6"]["inputs"]["max_batch"] = max_batch
            run_node()

        medians = interleaved_medians({"batched": lambda: run_mode(0), "sequential": lambda: run_mode(1)},
                                      args.chain_repeats, sync)
        for mode, seconds in medians.items():
            chain_seconds[f"{name}_{mode}"] = seconds / generated[name]
        print(f"(d) {name}: batched {chain_seconds[f'{name}_batched']:.3f}, sequential "
              f"{chain_seconds[f'{name}_sequential']:.3f} s/frame", flush=True)
    graph["6"]["inputs"].update(reference_index=0, keyframe_indices="", max_batch=0)
    graph["3"]["inputs"]["batch_size"], graph["4"]["inputs"]["batch_size"] = k, 1

    # (e) the flow a flow-guided run estimates first: OpticalFlowSequence at the preset's size on chain_frames frames
    from magicprop.motion.engine import FlowEngine, FlowSettings
    from magicprop.synthetic import SceneConfig, make_clip

    frames = make_clip(3, SceneConfig(size=size, frames=kc), edit=False).frames
    engine = FlowEngine(FlowSettings(estimator="dis", preset="medium"))
    flow_seconds = median_time(lambda: engine.consecutive(frames), max(1, args.chain_repeats))
    mid_batched_total = chain_seconds["mid_batched"] * generated["mid"]

    # (f) the profile behind the ratios, per sample at batch 1, 2 and 4: one step of the host's sampler on the node's
    # model and conditioning, and one forward of the host-free backend's UNet
    import comfy.ldm.modules.attention

    host_per_sample = {}
    for n in (1, 2, 4):
        batch = {"samples": torch.zeros(n, 4, h, w)}
        host_per_sample[str(n)] = median_time(
            lambda batch=batch: nodes.common_ksampler(model, 0, steps, cfg, "euler", "simple", positive, negative,
                                                      batch, denoise=1.0), args.repeats, sync) / (n * steps)
    x = torch.randn(4, unet.config.in_channels, h, w, device=args.device, dtype=dtype)
    ctx = tokens.to(args.device, dtype).expand(4, -1, -1)
    t = torch.tensor(500, device=args.device)
    unet_per_sample = {}
    with torch.no_grad():
        for n in (1, 2, 4):
            unet_per_sample[str(n)] = median_time(lambda n=n: unet(x[:n], t, encoder_hidden_states=ctx[:n]),
                                                  args.repeats, sync) / n

    memory = None
    if "memory_frames" in preset and args.device.startswith("cuda"):
        memory = node_peak_memory(torch, graph, run_node, preset["memory_frames"], preset["memory_steps"])

    per = k - 1
    result = {"preset": args.preset, "device": args.device, "device_name": _device_name(torch, args.device),
              "frames": k, "size": size, "steps": steps, "cfg": cfg, "dtype": preset["dtype"],
              "repeats": args.repeats, "chain_frames": kc, "chain_repeats": args.chain_repeats,
              "generated_frames": generated,
              "seconds_per_frame": {"a_node": a / per, "a_node_previews": a_previews / per, "b_ksampler": b / per,
                                    "c_core": c / per, **chain_seconds},
              "a_over_b": a / b, "c_over_b": c / b, "previews_overhead": a_previews / a - 1,
              "batched_over_sequential": {n: chain_seconds[f"{n}_batched"] / chain_seconds[f"{n}_sequential"]
                                          for n in layouts},
              "batched_over_ksampler": {n: chain_seconds[f"{n}_batched"] / (b / per) for n in layouts},
              "flow_seconds": flow_seconds,
              "flow_share_of_mid_batched": flow_seconds / (flow_seconds + mid_batched_total),
              "attention": comfy.ldm.modules.attention.optimized_attention.__name__,
              "host_step_seconds_per_sample": host_per_sample,
              "unet_seconds_per_sample": unet_per_sample, "peak_memory": memory}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    s = result["seconds_per_frame"]
    print(f"{args.preset} on {result['device_name']}: K={k}, {size}px, {steps} steps, cfg {cfg}, {preset['dtype']}, "
          f"host attention {result['attention']}")
    print(f"{'variant':<42}{'s/frame':>10}")
    print(f"{'(a) AutoregressivePropagate':<42}{s['a_node']:>10.3f}")
    print(f"{'(a) with frame previews':<42}{s['a_node_previews']:>10.3f}")
    print(f"{'(b) KSampler x (K-1)':<42}{s['b_ksampler']:>10.3f}")
    print(f"{'(c) host-free backend':<42}{s['c_core']:>10.3f}")
    for n in layouts:
        for mode in ("batched", "sequential"):
            label = f"(d) {n}, {mode} (K={kc}, {generated[n]} made)"
            print(f"{label:<42}{s[f'{n}_{mode}']:>10.3f}")
    print(f"a/b = {result['a_over_b']:.3f}   c/b = {result['c_over_b']:.3f}   "
          f"previews add {100 * result['previews_overhead']:+.1f}%")
    print("batched/sequential: " + "   ".join(f"{n} {r:.3f}" for n, r in result["batched_over_sequential"].items()))
    print("batched/KSampler:   " + "   ".join(f"{n} {r:.3f}" for n, r in result["batched_over_ksampler"].items()))
    print(f"(e) OpticalFlowSequence (DIS medium), {kc} frames at {size}px: {flow_seconds:.2f} s, "
          f"{100 * result['flow_share_of_mid_batched']:.1f}% of a mid-clip batched run with it")
    for label, per_sample in (("host sampler step", host_per_sample), ("host-free UNet forward", unet_per_sample)):
        print(f"(f) {label} per sample at batch 1 / 2 / 4: " + " / ".join(f"{v:.3f}" for v in per_sample.values())
              + " s (" + " / ".join(f"{v / per_sample['1']:.2f}" for v in per_sample.values()) + ")")
    if memory is not None:
        print(f"peak GPU memory of the batched node at K={memory['frames']} ({memory['steps']} steps): "
              f"{memory['peak_bytes'] / 2**30:.2f} GiB")


def node_peak_memory(torch, graph: dict, run_node, frames: int, steps: int) -> dict:
    """torch.cuda.max_memory_allocated over one batched mid-clip node run of `frames` frames at `steps` steps."""
    graph["3"]["inputs"]["batch_size"] = frames
    graph["6"]["inputs"].update(reference_index=frames // 2, steps=steps, max_batch=0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run_node()
    torch.cuda.synchronize()
    return {"frames": frames, "steps": steps, "peak_bytes": torch.cuda.max_memory_allocated()}


def _device_name(torch, device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
