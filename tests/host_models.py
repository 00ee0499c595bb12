"""Tiny models as ComfyUI objects (moved to `harness/`, shared with the benchmarks); re-exported for the tests."""

from harness.comfy_models import (  # noqa: F401
    RecordingControlNet,
    clip_vision_json,
    comfy_clip_vision,
    comfy_sd15_model,
    comfy_tiny_text_clip,
    comfy_vae,
    fill_random,
)
