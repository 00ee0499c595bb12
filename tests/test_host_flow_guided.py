"""A flow-guided PropDPM in the real ComfyUI: AutoregressivePropagate with OpticalFlowSequence's flow and the source
frames (no mask needed), carried pixels kept exactly, missing or foreign flow refused in one line."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from graphs import DEPTH_MODEL, VIDEO, propagation_graph
from host import GraphError
from tiny import flow_guided_checkpoint

pytestmark = pytest.mark.host

FLOW_GUIDED = "tiny-propdpm-flow.safetensors"


@pytest.fixture(scope="module")
def files(comfy_host, tiny_models, bikes, tmp_path_factory):
    """A flow-guided tiny PropDPM trained (as it records) with OpticalFlowSequence's defaults, the depth model and a
    real clip where ComfyUI's loaders look for them."""
    import folder_paths

    from magicprop.motion.engine import FlowSettings

    made = flow_guided_checkpoint(tiny_models["checkpoint"], tmp_path_factory.mktemp("fg") / FLOW_GUIDED,
                                  FlowSettings())
    shutil.copy(made, comfy_host.models / "magicprop" / FLOW_GUIDED)
    dst = comfy_host.models / "depth_estimation" / DEPTH_MODEL
    if not dst.exists():
        shutil.copytree(tiny_models["depth"], dst)
    shutil.copy(bikes, folder_paths.get_input_directory() + "/" + VIDEO)
    return tiny_models


def flow_guided_graph(files, preset: str = "medium", flow: bool = True, **kw) -> dict:
    """propagation_graph with the flow-guided checkpoint, OpticalFlowSequence ("13") of the frames, the frames as
    source_frames, and FlowPropagate ("14", the checkpoint's strategy) for comparison."""
    graph = propagation_graph(files, **kw)
    graph["6"]["inputs"]["checkpoint"] = FLOW_GUIDED
    graph["13"] = {"class_type": "OpticalFlowSequence", "inputs": {
        "frames": ["4", 0], "estimator": "dis", "dis_preset": preset, "raft_weights": "none", "work_size": 512,
        "batch_size": 4}}
    graph["14"] = {"class_type": "FlowPropagate", "inputs": {
        "frames": ["4", 0], "reference": ["10", 0], "flow": ["13", 0], "reference_index": kw.get("ref", 2),
        "strategy": "guided"}}
    graph["12"]["inputs"]["source_frames"] = ["4", 0]
    if flow:
        graph["12"]["inputs"]["flow"] = ["13", 0]
    return graph


def test_flow_guided_node_keeps_carried_pixels_and_makes_the_filled_ones(comfy_host, files):
    graph = flow_guided_graph(files, frames=4, ref=1, steps=2)
    ex = comfy_host.run(graph, ["12", "14"])
    latents, images = comfy_host.output(ex, "12", 0)["samples"], comfy_host.output(ex, "12", 1)
    carried, filled = comfy_host.output(ex, "14", 0), comfy_host.output(ex, "14", 1)
    assert latents.shape == (4, 4, 8, 16) and images.shape == (4, 64, 128, 3) and torch.isfinite(latents).all()
    keep = filled < 0.5
    assert torch.equal(images[keep], carried[keep]), "carried pixels are kept exactly"
    assert float(filled.gt(0.5).float().mean()) > 0, "the clip has filled pixels for the model to make"
    off = flow_guided_graph(files, frames=4, ref=1, steps=2)
    off["12"]["inputs"]["carried_composite"] = False
    ex = comfy_host.run(off, ["12"])
    plain = comfy_host.output(ex, "12", 1)
    assert not torch.equal(plain[keep], carried[keep]), "without the composite the IMAGE is the decoded latents"


@pytest.mark.parametrize("case,pattern", [
    ("no_flow", r"flow-guided but flow is not connected.*OpticalFlowSequence"),
    ("no_frames", r"flow-guided but source_frames is not connected.*OpticalFlowSequence"),
    ("neither", r"flow-guided but flow and source_frames are not connected.*OpticalFlowSequence"),
    ("other_preset", r"flow \(OpticalFlowSequence\) was estimated with dis \(preset fast.*trained with dis \(preset "
                     r"medium"),
])
def test_missing_or_foreign_flow_is_refused_in_one_line(comfy_host, files, case, pattern):
    graph = flow_guided_graph(files, preset="fast" if case == "other_preset" else "medium",
                              flow=case not in ("no_flow", "neither"))
    if case in ("no_frames", "neither"):
        del graph["12"]["inputs"]["source_frames"]
    with pytest.raises(GraphError) as err:
        comfy_host.run(graph, ["12"])
    assert re.search(pattern, err.value.message), err.value.message
    assert "\n" not in err.value.message.strip()
