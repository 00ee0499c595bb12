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
