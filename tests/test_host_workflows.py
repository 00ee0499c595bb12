"""The example workflows: ComfyUI lists them, each API twin matches its UI file, and each runs with tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[1]
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_KEYS = ("image_upload", "video_upload", "audio_upload", "upload")
FRONTEND_ONLY = {"Note", "MarkdownNote"}
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")  # the frontend's


def ui_to_api(ui: dict, node_classes: dict) -> dict:
    """What ComfyUI's frontend sends for a UI workflow: widget values by input name, links as [node, slot]."""
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:  # a note: never sent to the server
            continue
        spec = node_classes[node["type"]].INPUT_TYPES()
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = iter(node.get("widgets_values", []))
        inputs = {}
        for name, entry in {**spec.get("required", {}), **spec.get("optional", {})}.items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                try:
                    value = next(values)
                except StopIteration:  # an optional widget the file does not set
                    continue
                if opts.get("control_after_generate"):
                    next(values)
                if any(opts.get(k) for k in UPLOAD_KEYS):
                    next(values)
                inputs[name] = value
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
        assert next(values, None) is None, f"{node['type']} {node['id']} has more widget values than widgets"
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def test_workflows_are_listed_as_templates():
    assert {p.stem for p in UI_FILES} == {"magicprop_restyle_video", "magicprop_local_edit_mask",
                                          "magicprop_flow_restyle", "magicprop_flow_refine", "magicprop_flow_guided"}
    for path in UI_FILES:
        ui = json.loads(path.read_text())
        assert ui["version"] == 0.4 and ui["nodes"] and ui["links"]
        assert (ROOT / "workflows" / "api" / path.name).is_file()


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_template_has_a_thumbnail_and_a_note(path):
    """The workflow browser shows <name>.jpg (it asks for .jpg only); the note says what the workflow needs."""
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file() and thumb.stat().st_size < 80_000
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.size[0] == im.size[1]
    ui = json.loads(path.read_text())
    (note,) = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    text = note["widgets_values"][0]
    assert "depth_estimation/" in text and "25-35 s" in text
    if any(n["type"] == "PropDPMLoader" for n in ui["nodes"]):
        assert "magicprop/" in text and "none is shipped" in text


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_models_are_declared_for_the_missing_models_panel(path):
    """Every model file a loader names that has a public download is declared on its node (properties.models) and
    at the top (models), with the folder it goes in and a url (ComfyUI's workflow schema requires both)."""
    ui = json.loads(path.read_text())
    top = {m["name"]: m for m in ui["models"]}
    for node in ui["nodes"]:
        files = [v for v in node["widgets_values"] if isinstance(v, str) and v.endswith(MODEL_EXTENSIONS)]
        declared = {m["name"]: m for m in node["properties"].get("models", [])}
        for name in files:
            if node["type"] == "PropDPMLoader":  # trained by the user: no url, so not declarable
                assert name not in declared
                continue
            assert declared[name] == top[name]
            assert declared[name]["url"].startswith("https://huggingface.co/") and declared[name]["directory"]
    assert {m["directory"] for m in top.values()} >= {"checkpoints", "controlnet"}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_flow_preview_does_not_cover_the_next_node(path):
    """OpticalFlowSequence shows flow images after a run: the node below it in its column starts past that room."""
    ui = json.loads(path.read_text())
    for node in ui["nodes"]:
        if node["type"] != "OpticalFlowSequence":
            continue
        x, y = node["pos"]
        below = [n["pos"][1] for n in ui["nodes"] if n["pos"][0] == x and n["pos"][1] > y]
        assert not below or min(below) >= y + node["size"][1] + 250


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_twin_matches_ui_file(comfy_host, path):
    ui = json.loads(path.read_text())
    twin = json.loads((ROOT / "workflows" / "api" / path.name).read_text())
    converted = ui_to_api(ui, comfy_host.nodes.NODE_CLASS_MAPPINGS)
    stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()}
    assert converted == stripped


def test_flow_guided_workflow_gives_the_propagation_flow_and_source_frames():
    twin = json.loads((ROOT / "workflows" / "api" / "magicprop_flow_guided.json").read_text())
    (node,) = [n for n in twin.values() if n["class_type"] == "AutoregressivePropagate"]
    flow = twin[node["inputs"]["flow"][0]]
    assert flow["class_type"] == "OpticalFlowSequence" and flow["inputs"]["frames"] == node["inputs"]["source_frames"]
    assert node["inputs"]["carried_composite"] is True and "mask" not in node["inputs"]


def test_flow_workflow_uses_the_default_strategy():
    from magicprop.motion.propagate import DEFAULT_STRATEGY

    twin = json.loads((ROOT / "workflows" / "api" / "magicprop_flow_restyle.json").read_text())
    (node,) = [n for n in twin.values() if n["class_type"] == "FlowPropagate"]
    assert node["inputs"]["strategy"] == DEFAULT_STRATEGY  # workflows/build.py FLOW_STRATEGY follows the core


def substitute_tiny(api: dict, tiny: dict) -> dict:
    """Loaders of full-size models swapped for the test's tiny ones, and a short run (6 frames, few steps) to keep
    CI fast on two cores; sizes, masks, samplers and all wiring as shipped. A workflow that gives the propagation
    flow gets the flow-guided tiny PropDPM."""
    api["3"]["inputs"]["length"] = 6
    flow_guided = any("flow" in n["inputs"] for n in api.values() if n["class_type"] == "AutoregressivePropagate")
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            node.update(class_type="TestTinyCheckpoint", inputs={"vae_folder": str(tiny["vae"])})
        elif kind == "ControlNetLoader":
            node.update(class_type="TestTinyControlNet", inputs={"seed": 0})
        elif kind == "CLIPVisionLoader":
            node.update(class_type="TestTinyCLIPVision", inputs={"folder": str(tiny["clip_vision"])})
        elif kind == "PropDPMLoader":
            inputs["checkpoint"] = "tiny-propdpm-flow.safetensors" if flow_guided else "tiny-propdpm.safetensors"
        elif kind == "DepthSequence":
            inputs["depth_model"] = "tiny-dpt"
        if kind in ("KSampler", "AutoregressivePropagate", "FlowRefine"):
            inputs["steps"] = 3
    return api


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_workflow_runs_with_tiny_models(comfy_host, tiny_models, bikes, path):
    import folder_paths

    shutil.copy(tiny_models["checkpoint"], comfy_host.models / "magicprop" / "tiny-propdpm.safetensors")
    flow_guided = comfy_host.models / "magicprop" / "tiny-propdpm-flow.safetensors"
    if not flow_guided.exists():  # recorded estimator: OpticalFlowSequence's defaults, as the workflow runs it
        from tiny import flow_guided_checkpoint

        from magicprop.motion.engine import FlowSettings

        flow_guided_checkpoint(tiny_models["checkpoint"], flow_guided, FlowSettings())
    depth = comfy_host.models / "depth_estimation" / "tiny-dpt"
    if not depth.exists():
        shutil.copytree(tiny_models["depth"], depth)
    shutil.copy(bikes, Path(folder_paths.get_input_directory()) / "video.mp4")
    twin = json.loads((ROOT / "workflows" / "api" / path.name).read_text())
    api = substitute_tiny(twin, tiny_models)
    before = set(Path(folder_paths.get_output_directory()).rglob("*.mp4"))
    comfy_host.run(api)
    written = set(Path(folder_paths.get_output_directory()).rglob("*.mp4")) - before
    assert len(written) == 1
    from magicprop.io.video import probe

    info = probe(written.pop())
    assert info.frames == 6 and (info.width, info.height) == (512, 288)
