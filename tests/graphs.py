"""API-format graphs for host tests: real ComfyUI nodes plus the pack's, with test-only tiny-model nodes."""

from __future__ import annotations

import copy

PROPDPM = "tiny-propdpm.safetensors"
DEPTH_MODEL = "tiny-dpt"
VIDEO = "bikes.mp4"


def propagation_graph(paths: dict, frames: int = 5, ref: int = 2, width: int = 128, height: int = 64, seed: int = 1,
                      steps: int = 3, cfg: float = 1.0, sampler: str = "euler", scheduler: str = "simple") -> dict:
    """Video -> depth -> an edited frame -> appearance -> propagation; node "12" is AutoregressivePropagate."""
    return copy.deepcopy({
        "1": {"class_type": "LoadVideo", "inputs": {"file": VIDEO}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": frames}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "area", "width": width,
                                                     "height": height, "crop": "center"}},
        "5": {"class_type": "DepthSequence", "inputs": {"frames": ["4", 0], "depth_model": DEPTH_MODEL,
                                                        "batch_size": 8}},
        "6": {"class_type": "PropDPMLoader", "inputs": {"checkpoint": PROPDPM, "weight_dtype": "fp32"}},
        "7": {"class_type": "TestTinyVAE", "inputs": {"folder": str(paths["vae"])}},
        "8": {"class_type": "TestTinyCLIPVision", "inputs": {"folder": str(paths["clip_vision"])}},
        "9": {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": ref, "length": 1}},
        "10": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}},
        "11": {"class_type": "AppearanceAdapterEncode", "inputs": {"adapter": ["6", 1], "clip_vision": ["8", 0],
                                                                   "vae": ["7", 0], "reference": ["10", 0]}},
        "12": {"class_type": "AutoregressivePropagate", "inputs": {
            "model": ["6", 0], "positive": ["11", 0], "negative": ["11", 1], "vae": ["7", 0], "depth": ["5", 0],
            "reference": ["10", 0], "reference_index": ref, "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler, "scheduler": scheduler}},
    })


def add_depth_controlnet(graph: dict) -> dict:
    """propagation_graph with a recording ControlNet ("21", applied as "22") given the clip depth, one hint per frame,
    on AutoregressivePropagate's positive and negative."""
    graph["21"] = {"class_type": "TestTinyControlNet", "inputs": {"seed": 0}}
    graph["22"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["11", 0], "negative": ["11", 1], "control_net": ["21", 0], "image": ["5", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    graph["12"]["inputs"]["positive"], graph["12"]["inputs"]["negative"] = ["22", 0], ["22", 1]
    return graph


def refine_graph(vae_folder: str, frames: int = 4, ref: int = 1, width: int = 64, height: int = 64, seed: int = 3,
                 steps: int = 3, mode: str = "per_frame", noise: str = "per_frame", denoise: float = 0.5,
                 filled_denoise: float = 0.5, cfg: float = 2.0) -> dict:
    """Video -> frames -> flow -> FlowPropagate (frame `ref` inverted) -> FlowRefine with a tiny SD1.5-shaped
    checkpoint, a prompt and a recording ControlNet given one hint per frame (the frames themselves).
    Node "9" is FlowPropagate, "20" FlowRefine, "14" the ControlNet apply, "12" the checkpoint."""
    return copy.deepcopy({
        "1": {"class_type": "LoadVideo", "inputs": {"file": VIDEO}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": frames}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "area", "width": width,
                                                     "height": height, "crop": "center"}},
        "5": {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": ref, "length": 1}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "8": {"class_type": "OpticalFlowSequence", "inputs": {
            "frames": ["4", 0], "estimator": "dis", "dis_preset": "medium", "raft_weights": "none",
            "work_size": 512, "batch_size": 4}},
        "9": {"class_type": "FlowPropagate", "inputs": {"frames": ["4", 0], "reference": ["6", 0], "flow": ["8", 0],
                                                        "reference_index": ref, "strategy": "accumulate"}},
        "12": {"class_type": "TestTinyCheckpoint", "inputs": {"vae_folder": vae_folder}},
        "10": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 1], "text": "a watercolor painting"}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 1], "text": "blurry"}},
        "13": {"class_type": "TestTinyControlNet", "inputs": {"seed": 0}},
        "14": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["10", 0], "negative": ["11", 0], "control_net": ["13", 0], "image": ["4", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "20": {"class_type": "FlowRefine", "inputs": {
            "model": ["12", 0], "positive": ["14", 0], "negative": ["14", 1], "vae": ["12", 2], "images": ["9", 0],
            "mode": mode, "reference_index": ref, "seed": seed, "noise": noise, "steps": steps, "cfg": cfg,
            "sampler_name": "euler", "scheduler": "normal", "denoise": denoise, "filled_denoise": filled_denoise,
            "filled": ["9", 1], "flow": ["8", 0]}},
    })


def add_hand_refined_frame(graph: dict, k: int, seed: int, denoise: float) -> str:
    """Add to `graph` the host's own img2img of carried frame k with frame k's hint: VAEEncode -> KSampler ->
    VAEDecode, with FlowRefine's settings; returns the VAEDecode node's id."""
    inputs = graph["20"]["inputs"]
    n = 100 + 10 * len([i for i in graph if int(i) >= 100]) // 6
    ids = [str(n + i) for i in range(6)]
    graph.update({
        ids[0]: {"class_type": "ImageFromBatch", "inputs": {"image": ["9", 0], "batch_index": k, "length": 1}},
        ids[1]: {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": k, "length": 1}},
        ids[2]: {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["10", 0], "negative": ["11", 0], "control_net": ["13", 0], "image": [ids[1], 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        ids[3]: {"class_type": "VAEEncode", "inputs": {"pixels": [ids[0], 0], "vae": ["12", 2]}},
        ids[4]: {"class_type": "KSampler", "inputs": {
            "model": ["12", 0], "positive": [ids[2], 0], "negative": [ids[2], 1], "latent_image": [ids[3], 0],
            "seed": seed, "steps": inputs["steps"], "cfg": inputs["cfg"], "sampler_name": inputs["sampler_name"],
            "scheduler": inputs["scheduler"], "denoise": denoise}},
        ids[5]: {"class_type": "VAEDecode", "inputs": {"samples": [ids[4], 0], "vae": ["12", 2]}},
    })
    return ids[5]
