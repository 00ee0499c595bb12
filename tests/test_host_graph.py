"""Graphs of real ComfyUI nodes plus the pack's, executed in-process by ComfyUI's own executor."""

from __future__ import annotations

import shutil

import pytest
import torch
from graphs import DEPTH_MODEL, PROPDPM, VIDEO, add_depth_controlnet, propagation_graph
from host import GraphError, progress_hook
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def files(comfy_host, tiny_models, bikes):
    """The tiny PropDPM, depth model and a real clip where ComfyUI's loaders look for them."""
    import folder_paths

    shutil.copy(tiny_models["checkpoint"], comfy_host.models / "magicprop" / PROPDPM)
    dst = comfy_host.models / "depth_estimation" / DEPTH_MODEL
    if not dst.exists():
        shutil.copytree(tiny_models["depth"], dst)
    shutil.copy(bikes, folder_paths.get_input_directory() + "/" + VIDEO)
    return tiny_models


def run_latent(comfy_host, graph, node="12"):
    ex = comfy_host.run(graph, [node])
    return comfy_host.output(ex, node, 0)["samples"], comfy_host.output(ex, node, 1)


def test_graph_runs_end_to_end_and_is_seeded(comfy_host, files):
    latents, images = run_latent(comfy_host, propagation_graph(files, seed=1))
    assert latents.shape == (5, 4, 8, 16) and images.shape == (5, 64, 128, 3)
    assert torch.isfinite(latents).all()
    again, _ = run_latent(comfy_host, propagation_graph(files, seed=1))
    other, _ = run_latent(comfy_host, propagation_graph(files, seed=2))
    assert torch.equal(latents, again)
    for k in (0, 1, 3, 4):
        assert (latents[k] - other[k]).abs().max() > 1e-3, k
    assert torch.equal(latents[2], other[2]), "the reference frame is the reference's own encoding"


def test_progress_reaches_every_frame_with_previews(comfy_host, files):
    def progress(max_batch: int) -> list:
        events = []
        graph = propagation_graph(files, steps=2)  # reference 2 of 5: a forward and a backward chain of 2 frames
        graph["12"]["inputs"]["max_batch"] = max_batch
        with progress_hook(lambda value, total, preview, **kw: events.append((value, total, preview))):
            comfy_host.run(graph, ["12"], preview_method="latent2rgb")
        mine = [e for e in events if e[1] == 4 * 2]  # (K-1) frames x steps
        assert mine and mine[-1][0] == 8
        assert any(p is not None for _, _, p in mine), "step previews are sent"
        return mine

    assert sorted({v for v, _, _ in progress(1)}) == list(range(1, 9))
    batched = progress(0)  # a round of 2 frames advances 2 frame-steps per sampler step
    assert sorted({v for v, _, _ in batched}) == [2, 4, 6, 8]
    widths = {p[1].size[0] for _, _, p in batched if p is not None}
    assert len(widths) == 1 and widths.pop() >= 2 * 16, "the step preview shows every frame of the round"


def test_lora_equals_merged_weights(comfy_host, files):
    """An SD1.5 LoRA with kohya key names through LoraLoaderModelOnly == the same LoRA merged by hand."""
    import folder_paths

    tensors = load_file(str(files["checkpoint"]))
    g = torch.Generator().manual_seed(0)
    lora, merged, rank, alpha = {}, dict(tensors), 2, 1.0
    for key in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                "down_blocks.0.attentions.0.proj_in", "up_blocks.1.resnets.0.conv1"):
        w = tensors[f"unet.{key}.weight"]
        down = torch.randn((rank, *w.shape[1:]), generator=g) * 0.3
        up = torch.randn((w.shape[0], rank, *([1] * (w.ndim - 2))), generator=g) * 0.3
        name = "lora_unet_" + key.replace(".", "_")
        lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"] = down, up
        lora[f"{name}.alpha"] = torch.tensor(alpha)
        delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape) * (alpha / rank)
        merged[f"unet.{key}.weight"] = w + delta
    save_file(lora, str(comfy_host.models / "loras" / "tiny-lora.safetensors"))
    from safetensors import safe_open

    with safe_open(str(files["checkpoint"]), "pt") as f:
        meta = f.metadata()
    save_file(merged, str(comfy_host.models / "magicprop" / "merged.safetensors"), metadata=meta)
    assert "tiny-lora.safetensors" in folder_paths.get_filename_list("loras")

    with_lora = propagation_graph(files)
    with_lora["20"] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": ["6", 0], "lora_name": "tiny-lora.safetensors", "strength_model": 1.0}}
    with_lora["12"]["inputs"]["model"] = ["20", 0]
    by_hand = propagation_graph(files)
    by_hand["6"]["inputs"]["checkpoint"] = "merged.safetensors"
    plain, _ = run_latent(comfy_host, propagation_graph(files))
    a, _ = run_latent(comfy_host, with_lora)
    b, _ = run_latent(comfy_host, by_hand)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a - plain).abs().max() > 1e-2, "the LoRA changes the result"


def test_controlnet_gets_each_frames_own_hint(comfy_host, files):
    import host_nodes

    graph = propagation_graph(files, frames=5, ref=2, steps=2)
    graph["12"]["inputs"]["max_batch"] = 1  # one frame per call (batched rounds: test_host_batch)
    add_depth_controlnet(graph)
    host_nodes.CONTROL_LOG.clear()
    ex = comfy_host.run(graph, ["12"])
    depth = comfy_host.output(ex, "5", 0).movedim(-1, 1)  # (K, 3, H, W), what ControlNetApplyAdvanced was given
    seen = []
    for hint in host_nodes.CONTROL_LOG:
        assert hint.shape[0] == 1, "one frame's hint per frame"
        if not seen or not torch.equal(seen[-1], hint):
            seen.append(hint)
    from magicprop.keyframes import keyframe_plan

    chains = keyframe_plan([2], 5)[0]  # the frames as generated: the chains in lockstep, one frame per call
    order = [c.indices[j] for j in range(1, max(len(c.indices) for c in chains)) for c in chains if j < len(c.indices)]
    assert sorted(order) == [0, 1, 3, 4]
    assert len(seen) == len(order)
    for hint, k in zip(seen, order):
        assert torch.equal(hint[0], depth[k]), k


def test_mask_keeps_the_source_outside(comfy_host, files):
    graph = propagation_graph(files, frames=4, ref=1, steps=2)
    graph["30"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 64}}
    graph["31"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 48, "height": 32}}
    graph["32"] = {"class_type": "MaskComposite", "inputs": {"destination": ["30", 0], "source": ["31", 0],
                                                             "x": 32, "y": 16, "operation": "add"}}
    graph["12"]["inputs"].update(mask=["32", 0], source_frames=["4", 0], pixel_composite=True)
    graph["33"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["7", 0]}}
    ex = comfy_host.run(graph, ["12", "33"])
    latents, images = comfy_host.output(ex, "12", 0)["samples"], comfy_host.output(ex, "12", 1)
    source_lat = comfy_host.output(ex, "33", 0)["samples"]
    frames = comfy_host.output(ex, "4", 0)
    mask = comfy_host.output(ex, "32", 0)[0]
    outside_px = mask == 0
    # latent cells at least one cell away from the mask edge (mask spans x 32..80, y 16..48 -> cells 4..10, 2..6)
    far = torch.ones(8, 16, dtype=torch.bool)
    far[1:7, 3:11] = False
    for k in (0, 2, 3):
        torch.testing.assert_close(latents[k][:, far], source_lat[k][:, far], atol=1e-4, rtol=1e-4)
        assert torch.equal(images[k][outside_px], frames[k][outside_px]), "pixel composite is exact"
        inside = mask > 0
        assert (images[k][inside] - frames[k][inside]).abs().mean() > 0.02, "the edit is propagated inside"


def test_interrupt_between_frames_then_next_prompt_runs(comfy_host, files):
    import nodes

    calls = []

    def hook(value, total, preview, **kw):
        calls.append(value)
        if total == 4 * 2 and value >= 2:
            nodes.interrupt_processing(True)

    with progress_hook(hook), pytest.raises(GraphError) as err:
        comfy_host.run(propagation_graph(files, steps=2), ["12"])
    assert err.value.exception_type == "interrupted"
    latents, _ = run_latent(comfy_host, propagation_graph(files, steps=2))
    assert latents.shape[0] == 5


@pytest.mark.parametrize("case,pattern", [
    ("depth_count", r"source_frames has 3 frames.*depth has 5 frames"),
    ("hint_count", r"ControlNet.*hint of 3 frames for a clip of 5"),
    ("reference_size", r"reference is 64x64 but the depth frames are 128x64"),
    ("reference_index", r"reference_index=5 is out of range for a clip of 5 frames"),
    ("text_conditioning", r"positive is not appearance conditioning.*AppearanceAdapterEncode"),
    ("plain_sd", r"plain Stable Diffusion checkpoint.*not a PropDPM"),
    ("clip_tokens", r"clip_vision gives 5 tokens of width 32.*trained with .*17 tokens"),
])
def test_bad_inputs_are_refused_before_sampling(comfy_host, files, tmp_path, case, pattern):
    graph = propagation_graph(files)
    p = graph["12"]["inputs"]
    if case == "depth_count":
        graph["40"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": 0, "length": 3}}
        graph["41"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 64}}
        p.update(mask=["41", 0], source_frames=["40", 0])
    elif case == "hint_count":
        graph["40"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["5", 0], "batch_index": 0, "length": 3}}
        graph["21"] = {"class_type": "TestTinyControlNet", "inputs": {"seed": 0}}
        graph["22"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["11", 0], "negative": ["11", 1], "control_net": ["21", 0], "image": ["40", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        p["positive"], p["negative"] = ["22", 0], ["22", 1]
    elif case == "reference_size":
        graph["40"] = {"class_type": "ImageScale", "inputs": {"image": ["10", 0], "upscale_method": "area",
                                                              "width": 64, "height": 64, "crop": "center"}}
        p["reference"] = ["40", 0]
    elif case == "reference_index":
        p["reference_index"] = 5
    elif case == "text_conditioning":
        graph["40"] = {"class_type": "TestTinyCheckpoint", "inputs": {"vae_folder": str(files["vae"])}}
        graph["41"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["40", 1], "text": "a red bike"}}
        p["positive"] = ["41", 0]
    elif case == "plain_sd":
        from tiny import tiny_unet

        save_file(tiny_unet().state_dict(), str(comfy_host.models / "magicprop" / "sd15-unet.safetensors"))
        graph["6"]["inputs"]["checkpoint"] = "sd15-unet.safetensors"
    elif case == "clip_tokens":
        from tiny import TINY_CLIP_CONFIG
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        other = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**TINY_CLIP_CONFIG, "image_size": 16}))
        other.save_pretrained(tmp_path / "clip16")
        graph["8"]["inputs"]["folder"] = str(tmp_path / "clip16")
    events = []
    with progress_hook(lambda value, total, preview, **kw: events.append(total)), pytest.raises(GraphError) as err:
        comfy_host.run(graph, ["12"])
    import re

    assert re.search(pattern, err.value.message), err.value.message
    assert 4 * 3 not in events, "no frame was sampled"


def test_full_size_vae_and_clip_vision_through_the_host_loaders(comfy_host, files, full_size_models):
    """SD1.5's VAE and ViT-L/14 (random weights) load through VAELoader / CLIPVisionLoader into a full graph."""
    from tiny import TINY_UNET_CONFIG

    from magicprop.propdpm.checkpoint import inspect_checkpoint
    from magicprop.propdpm.init_model import init_checkpoint

    for kind, path in (("vae", full_size_models["vae"]), ("clip_vision", full_size_models["clip_vision"])):
        link = comfy_host.models / kind / path.name
        if not link.exists():
            link.symlink_to(path)
    ckpt = init_checkpoint(comfy_host.models / "magicprop" / "tiny-768.safetensors",
                           unet_config={**TINY_UNET_CONFIG, "cross_attention_dim": 768},
                           clip_vision=full_size_models["clip_vision"].with_suffix(""), seed=3)
    spec = inspect_checkpoint(ckpt).clip
    assert (spec.token_dim, spec.num_tokens, spec.image_size) == (768, 257, 224)
    graph = propagation_graph(files, frames=3, ref=0, width=64, height=64, steps=2)
    graph["6"]["inputs"]["checkpoint"] = "tiny-768.safetensors"
    graph["7"] = {"class_type": "VAELoader", "inputs": {"vae_name": full_size_models["vae"].name}}
    graph["8"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": full_size_models["clip_vision"].name}}
    ex = comfy_host.run(graph, ["12"])
    latents, images = comfy_host.output(ex, "12", 0)["samples"], comfy_host.output(ex, "12", 1)
    tokens = comfy_host.output(ex, "11", 0)[0][0]
    assert tokens.shape == (1, 1 + 8 * 8 // 4, 768)
    assert latents.shape == (3, 4, 8, 8) and images.shape == (3, 64, 64, 3)
    assert torch.isfinite(latents).all() and torch.isfinite(images).all()


def test_a_paint_layer_reference_is_refused_with_the_way_to_flatten_it(comfy_host, files):
    """An RGBA reference with transparent pixels (JoinImageWithAlpha) would be encoded as its RGB, whatever lies
    under the transparent pixels: refused in one line by both PropDPM nodes that take it."""
    graph = propagation_graph(files, frames=3, steps=1)
    graph["30"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 128, "height": 64}}
    graph["31"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["10", 0], "alpha": ["30", 0]}}
    for node in ("11", "12"):
        graph[node]["inputs"]["reference"] = ["31", 0]
    with pytest.raises(GraphError) as e:
        comfy_host.run(graph, ["12"])
    assert e.value.message.strip().startswith("reference has an alpha channel with transparent pixels (a paint layer)")


def test_keyframes_and_anchoring_in_the_node(comfy_host, files):
    graph = propagation_graph(files, frames=6, ref=0, steps=2)
    graph["40"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": 5, "length": 1}}
    graph["41"] = {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["40", 0]}}
    graph["11"]["inputs"]["reference"] = ["41", 0]
    # (a trailing comma in keyframe_indices, as lists are often typed, is fine)
    graph["12"]["inputs"].update(reference=["41", 0], keyframe_indices="0, 5,", keyframe_window=2, anchor_strength=0.5)
    graph["42"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["41", 0], "vae": ["7", 0]}}
    ex = comfy_host.run(graph, ["12", "42"])
    latents = comfy_host.output(ex, "12", 0)["samples"]
    refs = comfy_host.output(ex, "42", 0)["samples"]
    assert latents.shape[0] == 6 and torch.isfinite(latents).all()
    torch.testing.assert_close(latents[0], refs[0])
    torch.testing.assert_close(latents[5], refs[1])
    graph["12"]["inputs"]["keyframe_indices"] = "0, 9"
    with pytest.raises(GraphError, match="out of range"):
        comfy_host.run(graph, ["12"])
    graph["12"]["inputs"]["keyframe_indices"] = "0"
    with pytest.raises(GraphError, match="give 1 indices for 2 reference images"):
        comfy_host.run(graph, ["12"])


def test_decode_off_returns_latents_only_and_refuses_a_reader_of_images(comfy_host, files):
    graph = propagation_graph(files, frames=3, ref=0, steps=1)
    graph["12"]["inputs"]["decode"] = False
    ex = comfy_host.run(graph, ["12"])
    assert comfy_host.output(ex, "12", 0)["samples"].shape[0] == 3 and comfy_host.output(ex, "12", 1) is None
    graph["50"] = {"class_type": "ImageInvert", "inputs": {"image": ["12", 1]}}
    with pytest.raises(GraphError, match="decode is off but node 50 \\(ImageInvert\\) reads the IMAGE output"):
        comfy_host.run(graph, ["50"])
