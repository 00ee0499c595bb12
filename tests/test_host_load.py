"""The pack loads in the real ComfyUI: four node ids on ComfyUI's own types, and a quiet start-up."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.host


def test_four_nodes_with_comfy_types(comfy_host):
    assert comfy_host.loaded
    expected = {
        "DepthSequence": (["IMAGE"], {"frames": "IMAGE", "depth_images": "IMAGE"}),
        "AppearanceAdapterEncode": (["CONDITIONING", "CONDITIONING"],
                                    {"adapter": "MAGICPROP_ADAPTER", "clip_vision": "CLIP_VISION", "vae": "VAE",
                                     "reference": "IMAGE"}),
        "PropDPMLoader": (["MODEL", "MAGICPROP_ADAPTER"], {}),
        "AutoregressivePropagate": (["LATENT", "IMAGE"],
                                    {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING",
                                     "vae": "VAE", "depth": "IMAGE", "reference": "IMAGE", "mask": "MASK",
                                     "source_frames": "IMAGE", "reference_depth": "IMAGE"}),
        "FlowRefine": (["IMAGE"], {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING",
                                   "vae": "VAE", "images": "IMAGE", "filled": "MASK", "flow": "MAGICPROP_FLOW"}),
    }
    for node_id, (outputs, inputs) in expected.items():
        cls = comfy_host.node_class(node_id)
        info = cls.GET_NODE_INFO_V1()
        assert list(info["output"]) == outputs, node_id
        all_inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, kind in inputs.items():
            assert all_inputs[name][0] == kind, (node_id, name)
        for name, spec in all_inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert info["category"] == "MagicProp"


def test_startup_log_has_no_errors_from_the_pack(comfy_host):
    bad = [line for line in comfy_host.pack_log if line.startswith(("ERROR", "WARNING", "CRITICAL"))]
    assert not bad, bad


def test_model_folder_merges_extra_paths(comfy_host):
    import folder_paths

    paths, exts = folder_paths.folder_names_and_paths["magicprop"]
    assert str(comfy_host.models / "magicprop") in paths
    assert paths[-1].endswith("magicprop") and exts == {".safetensors"}
