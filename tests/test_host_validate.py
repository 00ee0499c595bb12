"""Errors the UI shows first: every bad widget value (and a socket a widget needs but is not connected) is refused by
the node's validate_inputs when the prompt is queued, before any node runs, in one line naming the input and the fix.

Each prompt goes the server's way (`execution.validate_prompt`, then execution only if it is valid), with a spy node
(tests/host_nodes.py TestSpy) upstream of the node under test that records whether anything ran."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from graphs import VIDEO, refine_graph
from host_nodes import TestSpy

pytestmark = pytest.mark.host

K, REF = 6, 2
KEYFRAME_FORMAT = ('write one frame number (0 = the first frame) per reference image, separated by commas, e.g. '
                   '"0, 60, 119"')


@pytest.fixture(scope="module")
def host(comfy_host, bikes):
    import folder_paths

    shutil.copy(bikes, Path(folder_paths.get_input_directory()) / VIDEO)
    comfy_host.nodes.NODE_CLASS_MAPPINGS["TestSpy"] = TestSpy
    return comfy_host


def submit(host, prompt: dict) -> tuple[tuple, dict | None, int]:
    """What the server does with a queued prompt: validate_prompt, then execute the valid outputs. Returns the
    validation result, the execution error (None when none) and how many times the spy ran."""
    import execution

    TestSpy.runs.clear()
    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    error = None
    if valid[0]:
        executor = execution.PromptExecutor(host.server, cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0})
        executor.execute(prompt, prompt_id, {"client_id": "test", "preview_method": "none"}, valid[2])
        error = next((data for event, data in executor.status_messages if event == "execution_error"), None)
    return valid, error, len(TestSpy.runs)


def refused(host, prompt: dict, node_id: str) -> str:
    """The one message validation refused `prompt` with, on node `node_id` alone, with nothing run."""
    valid, error, runs = submit(host, prompt)
    assert not valid[0] and error is None, "the prompt was not refused by validation"
    assert runs == 0, "a node upstream ran before the refusal"
    assert set(valid[3]) == {node_id}, valid[3]
    errors = valid[3][node_id]["errors"]
    # the host repeats a custom validation message once per input its validate_inputs names ("<input> - <message>")
    assert {e["type"] for e in errors} == {"custom_validation_failed"}, errors
    messages = {e["details"].split(" - ", 1)[1] for e in errors}
    assert len(messages) == 1, messages
    (message,) = messages
    assert "\n" not in message and "pass its path" not in message and "--" not in message
    return message


def flow_graph() -> dict:
    """Video -> K frames -> spy ("30") -> OpticalFlowSequence ("10") -> FlowPropagate ("7", frame REF inverted)
    -> PreviewImage ("9")."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": VIDEO}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": K}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "area", "width": 128,
                                                     "height": 64, "crop": "center"}},
        "30": {"class_type": "TestSpy", "inputs": {"value": ["4", 0]}},
        "5": {"class_type": "ImageFromBatch", "inputs": {"image": ["30", 0], "batch_index": REF, "length": 1}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "10": {"class_type": "OpticalFlowSequence", "inputs": {
            "frames": ["30", 0], "estimator": "dis", "dis_preset": "medium", "raft_weights": "none",
            "work_size": 512, "batch_size": 4}},
        "7": {"class_type": "FlowPropagate", "inputs": {"frames": ["30", 0], "reference": ["6", 0],
                                                        "reference_index": REF, "strategy": "accumulate",
                                                        "flow": ["10", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }


def spied_refine_graph() -> dict:
    """tests/graphs.py refine_graph (FlowRefine is "20") with the frames through the spy ("30") and a PreviewImage
    of the refined frames ("40"); only validated here, so its tiny checkpoint's folder is never read."""
    graph = refine_graph("unused", frames=4, ref=1)
    for node in graph.values():
        for name, value in node["inputs"].items():
            if value == ["4", 0]:
                node["inputs"][name] = ["30", 0]
    graph["30"] = {"class_type": "TestSpy", "inputs": {"value": ["4", 0]}}
    graph["40"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}
    return graph


def spied_propagate_graph(**widgets) -> dict:
    """AutoregressivePropagate ("12") with every socket fed by the spy ("30"), its IMAGE previewed ("13")."""
    spy = ["30", 0]
    return {
        "30": {"class_type": "TestSpy", "inputs": {}},
        "12": {"class_type": "AutoregressivePropagate", "inputs": {
            "model": spy, "positive": spy, "negative": spy, "vae": spy, "depth": spy, "reference": spy,
            "reference_index": 0, "seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            **widgets}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 1]}},
    }


# -- the good graphs pass (the spy runs when the prompt is executed) -------------------------------------------------


def test_good_values_pass_and_run(host):
    graph = flow_graph()
    graph["7"]["inputs"]["keyframe_indices"] = str(REF)
    valid, error, runs = submit(host, graph)
    assert valid[0] and error is None and runs == 1
    graph["7"]["inputs"].update(reference_index=0, keyframe_indices="1")  # left at 0: the widget names the frame
    valid, error, runs = submit(host, graph)
    assert valid[0] and error is None and runs == 1
    assert asyncio.run(validate(spied_refine_graph() | {"20": loopback(spied_refine_graph()["20"])}))[0]
    assert asyncio.run(validate(spied_propagate_graph(keyframe_indices="0; 5, 9")))[0]


def loopback(node: dict) -> dict:
    return {**node, "inputs": {**node["inputs"], "mode": "loopback", "keyframe_indices": "1, 3"}}


async def validate(prompt: dict):
    import execution

    return await execution.validate_prompt(str(uuid.uuid4()), prompt, None)


# -- every bad widget value is refused before anything runs ---------------------------------------------------------


@pytest.mark.parametrize("text,message", [
    ("0,, 5", f"keyframe_indices '0,, 5': item 2 is empty: {KEYFRAME_FORMAT}."),
    ("0, 5,,", f"keyframe_indices '0, 5,,': item 3 is empty: {KEYFRAME_FORMAT}."),  # (one trailing comma is fine)
    ("0, a", f"keyframe_indices '0, a': 'a' is not a frame number: {KEYFRAME_FORMAT}."),
    ("1.5", f"keyframe_indices '1.5': '1.5' is not a frame number: {KEYFRAME_FORMAT}."),
    ("-1, 3", f"keyframe_indices '-1, 3': -1 is negative (frames count from 0): {KEYFRAME_FORMAT}."),
    ("3, 3", "keyframe_indices '3, 3': 3 comes twice: give each edited frame once, in increasing order (the order of "
             "the reference images in the batch)."),
    ("5, 0", "keyframe_indices '5, 0': 0 comes after 5: give each edited frame once, in increasing order (the order "
             "of the reference images in the batch)."),
])
def test_bad_keyframe_indices_are_refused_by_every_node(host, text, message):
    graph = flow_graph()
    graph["7"]["inputs"]["keyframe_indices"] = text
    assert refused(host, graph, "7") == message
    graph = spied_refine_graph()
    graph["20"]["inputs"]["keyframe_indices"] = text
    assert refused(host, graph, "20") == message
    assert refused(host, spied_propagate_graph(keyframe_indices=text), "12") == message


@pytest.mark.parametrize("case,message", [
    ("filled_below", "filled_denoise=0.2 is below denoise=0.5: filled pixels (not carried by the flow) need at least "
                     "the freedom of the others; set filled_denoise >= denoise (filled_denoise = denoise turns the "
                     "per-pixel level off)."),
    ("denoise_range", "denoise=1.5: expected a value from 0 (keep the frames) to 1 (repaint them)."),
    ("loopback_no_flow", "mode 'loopback' needs flow, which is not connected: connect OpticalFlowSequence's flow of "
                         "the source frames to flow, or pick mode 'per_frame'."),
    ("unknown_mode", "mode 'sideways': expected one of ['per_frame', 'loopback']."),
])
def test_flow_refine_widgets_are_refused_before_upstream_work(host, case, message):
    """Today's late errors: FlowRefine used to say "loopback needs flow" after the whole upstream had run."""
    graph = spied_refine_graph()
    inputs = graph["20"]["inputs"]
    if case == "filled_below":
        inputs.update(denoise=0.5, filled_denoise=0.2)
    elif case == "denoise_range":
        inputs.update(denoise=1.5)
    elif case == "loopback_no_flow":
        inputs["mode"] = "loopback"
        del inputs["flow"]
    elif case == "unknown_mode":
        inputs["mode"] = "sideways"  # an API prompt: the host skips its own options check for validated inputs
    assert refused(host, graph, "20") == message


@pytest.mark.parametrize("case,message", [
    ("no_flow", "flow and external_flow: neither is connected: connect exactly one, OpticalFlowSequence's flow of "
                "the frames to flow or controlnet_aux's OPTICAL_FLOW to external_flow."),
    ("both_flows", "flow and external_flow: both are connected: connect exactly one, OpticalFlowSequence's flow of "
                   "the frames to flow or controlnet_aux's OPTICAL_FLOW to external_flow."),
])
def test_flow_propagate_needs_exactly_one_flow(host, case, message):
    graph = flow_graph()
    if case == "no_flow":
        del graph["7"]["inputs"]["flow"]
    else:
        graph["7"]["inputs"]["external_flow"] = ["30", 0]
    assert refused(host, graph, "7") == message


def test_mask_without_source_frames_is_refused(host):
    graph = spied_propagate_graph(mask=["30", 0])
    assert refused(host, graph, "12") == (
        "mask is connected but source_frames is not: connect the source video frames to source_frames (kept outside "
        "the mask), or disconnect mask to edit every pixel.")
    assert asyncio.run(validate(spied_propagate_graph(mask=["30", 0], source_frames=["30", 0])))[0]


@pytest.mark.parametrize("case,message", [
    ("no_depth", "depth_model is 'none' and depth_images is not connected: connect depth_images (any depth "
                 "preprocessor) or choose a depth_model from models/depth_estimation."),
    ("missing_model", "depth_model 'gone' is not a folder with config.json under models/depth_estimation; put a "
                      "transformers depth-estimation model there (e.g. Depth-Anything-V2-Small-hf)."),
])
def test_depth_sequence_needs_a_depth_source(host, case, message):
    graph = {n: node for n, node in flow_graph().items() if n in ("1", "2", "3", "4", "30")}  # frames -> spy
    graph["20"] = {"class_type": "DepthSequence", "inputs": {
        "frames": ["30", 0], "depth_model": "none" if case == "no_depth" else "gone", "batch_size": 8}}
    graph["21"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}
    assert refused(host, graph, "20") == message
    graph["20"]["inputs"]["depth_images"] = ["30", 0]  # connected: depth_model is not used
    assert asyncio.run(validate(graph))[0]


@pytest.mark.parametrize("weights,message", [
    ("none", "raft_weights is 'none' but estimator 'raft' needs a weights file: put a RAFT weights file "
             "(torchvision's raft_small or raft_large, or the RAFT authors' raft-things/sintel/kitti/small.pth; "
             ".safetensors or .pth) in models/optical_flow, refresh the page and pick it in raft_weights, or pick "
             "estimator 'dis'."),
    ("gone.pth", "raft_weights 'gone.pth' is not a file in models/optical_flow: put the RAFT weights file "
                 "(torchvision's raft_small or raft_large, or the RAFT authors' raft-things/sintel/kitti/small.pth; "
                 ".safetensors or .pth) there and pick it, or pick estimator 'dis'."),
])
def test_raft_without_its_weights_file_names_the_widget(host, weights, message):
    graph = flow_graph()
    graph["10"]["inputs"].update(estimator="raft", raft_weights=weights)
    assert refused(host, graph, "10") == message


def test_negative_reference_index_is_refused_by_the_hosts_own_range_check(host):
    """reference_index is decided by its widget alone when negative: the schema's min refuses it (the node's
    validate_inputs does not name it, so the host's check stays on)."""
    graph = flow_graph()
    graph["7"]["inputs"]["reference_index"] = -1
    valid, error, runs = submit(host, graph)
    assert not valid[0] and error is None and runs == 0
    (reason,) = valid[3]["7"]["errors"]
    assert (reason["type"], reason["details"]) == ("value_smaller_than_min", "reference_index")


# -- what only the frames decide stays in execute, with the pack's own short error class ---------------------------


def test_range_against_the_clip_is_checked_when_it_runs(host):
    graph = flow_graph()
    graph["7"]["inputs"]["reference_index"] = K + 3
    valid, error, runs = submit(host, graph)
    assert valid[0] and runs == 1
    assert error["node_id"] == "7" and error["exception_type"] == "magicprop.MagicPropError"
    assert error["exception_message"].strip() == (f"reference_index={K + 3} is out of range for a clip of {K} frames: "
                                          f"expected 0 <= reference_index <= {K - 1} (the index of the frame that "
                                          "was edited).")


@pytest.mark.parametrize("widget,message", [
    (f"0, {K + 2}", f"keyframe_indices [0, {K + 2}]: frame {K + 2} is out of range for a clip of {K} frames: "
                    f"expected frames 0 to {K - 1} (the frames that were edited, counted from 0)."),
    ("1", f"reference_index={REF} and keyframe_indices '1' name different edited frames: set reference_index to 1 "
          "(or 0), or clear keyframe_indices to use reference_index."),
    ("", f'reference holds 2 images but keyframe_indices is empty: set keyframe_indices to the frame each one edits, '
         f'in order (e.g. "0, {K - 1}"), or pick one image of the batch with ImageFromBatch.'),
])
def test_keyframes_from_the_widget_are_refused_naming_the_widget(host, widget, message):
    """An index the keyframe_indices widget gave is named as the widget's when the clip refuses it; one reference
    with the widget and reference_index (set, not 0) naming different frames is refused (the edit would land on a
    guessed frame); reference_index left at 0 lets the widget name the frame, as saved workflows do."""
    graph = flow_graph()
    graph["7"]["inputs"]["keyframe_indices"] = widget
    if "," in widget or not widget:  # two edited frames: the reference twice
        graph["60"] = {"class_type": "ImageBatch", "inputs": {"image1": ["6", 0], "image2": ["6", 0]}}
        graph["7"]["inputs"]["reference"] = ["60", 0]
    valid, error, runs = submit(host, graph)
    assert valid[0] and runs == 1
    assert error["exception_type"] == "magicprop.MagicPropError"
    assert error["exception_message"].strip() == message


def test_a_widget_turned_into_a_socket_is_checked_when_it_runs_with_the_same_message(host):
    graph = flow_graph()
    graph["50"] = {"class_type": "PrimitiveString", "inputs": {"value": "0,, 5"}}
    graph["7"]["inputs"]["keyframe_indices"] = ["50", 0]
    valid, error, runs = submit(host, graph)
    assert valid[0] and runs == 1
    assert error["exception_type"] == "magicprop.MagicPropError"
    assert error["exception_message"].strip() == f"keyframe_indices '0,, 5': item 2 is empty: {KEYFRAME_FORMAT}."
