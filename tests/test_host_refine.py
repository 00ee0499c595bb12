"""FlowRefine in the real ComfyUI with a tiny SD1.5-shaped checkpoint: denoise 0 is the identity, per_frame equals
the host's own VAEEncode -> KSampler -> VAEDecode with frame k's seed and hint, filled pixels repainted with the rest
of the frame untouched, loopback runs, and wrong inputs are refused in one line."""

from __future__ import annotations

import shutil

import pytest
import torch
from graphs import PROPDPM, VIDEO, add_hand_refined_frame, refine_graph
from host import GraphError, progress_hook

from magicprop.seeding import frame_seed

pytestmark = pytest.mark.host

K, REF, SEED, BORDER = 4, 1, 3, 16


@pytest.fixture(scope="module")
def host(comfy_host, tiny_models, bikes):
    import folder_paths

    shutil.copy(bikes, folder_paths.get_input_directory() + "/" + VIDEO)
    shutil.copy(tiny_models["checkpoint"], comfy_host.models / "magicprop" / PROPDPM)
    comfy_host.vae = str(tiny_models["vae"])
    return comfy_host


def run(host, graph, nodes=("20", "9")) -> list[torch.Tensor]:
    ex = host.run(graph, list(nodes))
    return [host.output(ex, n, 0) for n in nodes]


def test_denoise_zero_returns_the_input_bit_identical(host):
    refined, carried = run(host, refine_graph(host.vae, K, REF, denoise=0.0, filled_denoise=0.0))
    assert refined.shape == carried.shape == (K, 64, 64, 3)
    assert torch.equal(refined, carried)


def test_per_frame_equals_the_hosts_own_img2img_with_frame_seed_and_hint(host):
    """Per frame noise: frame k == VAEEncode -> KSampler(frame_seed(seed, k), hint k) -> VAEDecode; fixed noise (node
    "21"): frame k == the same with the seed itself."""
    from harness.tiny_nodes import CONTROL_LOG

    graph = refine_graph(host.vae, K, REF, seed=SEED, noise="per_frame", denoise=0.5, filled_denoise=0.5)
    graph["21"] = {"class_type": "FlowRefine", "inputs": {**graph["20"]["inputs"], "noise": "fixed"}}
    others = [k for k in range(K) if k != REF]
    hand = {k: add_hand_refined_frame(graph, k, frame_seed(SEED, k), 0.5) for k in others}
    fixed = add_hand_refined_frame(graph, 2, SEED, 0.5)
    CONTROL_LOG.clear()
    ex = host.run(graph, ["20", "9", "4"])  # FlowRefine alone samples here: the hints its sampler calls got
    seen = list(CONTROL_LOG)
    refined, carried = host.output(ex, "20"), host.output(ex, "9")
    hints = host.output(ex, "4").movedim(-1, 1)  # (K, 3, H, W), what ControlNetApplyAdvanced was given
    ex = host.run(graph, ["21", fixed, *hand.values()])
    assert torch.equal(refined[REF], carried[REF]), "the keyframe is output unchanged"
    for k in others:
        assert (refined[k] - host.output(ex, hand[k])[0]).abs().max() < 1e-4, k
        assert (refined[k] - carried[k]).abs().mean() > 1e-3, "the frame was refined"
    assert (host.output(ex, "21")[2] - host.output(ex, fixed)[0]).abs().max() < 1e-4
    # per_frame samples its frames as one batch (PER_FRAME_BATCH >= 3 here): every ControlNet call saw the hints of
    # the frames being sampled, one row per sample, in frame order
    assert seen and all(torch.equal(hint, hints[others]) for hint in seen)


def test_filled_pixels_are_repainted_and_the_rest_is_kept(host):
    graph = refine_graph(host.vae, 3, 0, denoise=0.0, filled_denoise=0.6)
    graph.update({  # a filled square (rows and columns 24..39) for every frame
        "40": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
        "41": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 16}},
        "42": {"class_type": "MaskComposite", "inputs": {"destination": ["40", 0], "source": ["41", 0], "x": 24,
                                                         "y": 24, "operation": "add"}},
    })
    graph["20"]["inputs"]["filled"] = ["42", 0]
    refined, carried = run(host, graph)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[24:40, 24:40] = True
    near = torch.zeros(64, 64, dtype=torch.bool)
    near[24 - BORDER - 1:40 + BORDER + 1, 24 - BORDER - 1:40 + BORDER + 1] = True
    assert torch.equal(refined[0], carried[0]), "the keyframe is unchanged"
    for k in (1, 2):
        assert torch.equal(refined[k][~near], carried[k][~near]), "more than border px outside: bit-identical"
        assert (refined[k][inside] - carried[k][inside]).abs().mean() > 0.01, "filled pixels are repainted"


def test_per_pixel_levels_are_installed_on_a_clone(host):
    """Outside the filled mask the run at filled_denoise differs from one at denoise (tooltip), and the MODEL the
    node was given has no mask function afterwards."""
    graph = refine_graph(host.vae, 3, 0, denoise=0.3, filled_denoise=0.6)
    ex = host.run(graph, ["20", "12", "9"])
    model = host.output(ex, "12", 0)
    assert "denoise_mask_function" not in model.model_options
    levels, filled = host.output(ex, "20", 0), host.output(ex, "9", 1)
    graph["20"]["inputs"]["filled_denoise"] = 0.3
    plain = run(host, graph, ["20"])[0]
    outside = filled[1:] < 0.5
    assert outside.any() and (levels[1:] - plain[1:]).abs().amax(-1)[outside].max() > 1e-3


def test_loopback_runs_with_keyframes_unchanged_and_progress(host):
    events = []
    with progress_hook(lambda value, total, preview, **kw: events.append((value, total))):
        refined, carried = run(host, refine_graph(host.vae, K, REF, mode="loopback", steps=2, denoise=0.4,
                                                  filled_denoise=0.6))
    assert torch.equal(refined[REF], carried[REF])
    assert torch.isfinite(refined).all() and (refined - carried).abs().mean() > 1e-3
    mine = [v for v, total in events if total == (K - 1) * 2]
    assert mine and mine[-1] == (K - 1) * 2


@pytest.mark.parametrize("mode", ["per_frame", "loopback"])
def test_batched_refine_equals_one_frame_at_a_time(host, mode):
    """The node's default batches a round's frames into one sampler call (per_frame: the 3 frames; loopback: the
    forward and backward chains' next frames), each with its own hint, noise and levels: the one-frame-at-a-time
    result (max_batch 1) to 1e-4."""
    graph = refine_graph(host.vae, K, REF, mode=mode, steps=2, denoise=0.4, filled_denoise=0.7)
    graph["20"]["inputs"]["max_batch"] = 0
    batched = run(host, graph, ["20"])[0]
    graph["20"]["inputs"]["max_batch"] = 1
    one = run(host, graph, ["20"])[0]
    assert (batched - one).abs().max() < 1e-4


def test_cancel_stops_between_frames_and_the_next_prompt_runs(host):
    import nodes

    def hook(value, total, preview, **kw):
        if total == 2 * 2 and value >= 2:  # 2 frames x 2 steps: cancel after the first frame
            nodes.interrupt_processing(True)

    graph = refine_graph(host.vae, 3, 0, steps=2, denoise=0.3, filled_denoise=0.3)
    with progress_hook(hook), pytest.raises(GraphError) as err:
        host.run(graph, ["20"])
    assert err.value.exception_type == "interrupted"
    assert run(host, graph, ["20"])[0].shape[0] == 3


def test_filmstrip_gets_every_frame(host):
    import server

    class Instance:
        client_id = "test"

        def __init__(self):
            self.messages = []

        def send_sync(self, event, data, sid=None):
            self.messages.append((event, data))

    saved = getattr(server.PromptServer, "instance", None)
    server.PromptServer.instance = fake = Instance()
    try:
        run(host, refine_graph(host.vae, 3, 0, steps=1, denoise=0.3, filled_denoise=0.3))
    finally:
        if saved is None:
            del server.PromptServer.instance
        else:
            server.PromptServer.instance = saved
    frames = sorted(d["index"] for e, d in fake.messages if e == "magicprop.frame" and d["node"] == "20")
    assert ("magicprop.start", {"node": "20", "total": 3, "reference": 0}) in fake.messages
    assert frames == [0, 1, 2]


@pytest.mark.parametrize("case,pattern", [
    ("propdpm", r"PropDPM.*AutoregressivePropagate"),
    ("size", r"64x60.*multiples of 8"),
])
def test_wrong_inputs_are_refused_in_one_line(host, case, pattern):
    """What only the inputs' values show, when the node runs; bad widget values are refused before anything runs
    (test_host_validate.py)."""
    graph = refine_graph(host.vae, 3, 0)
    inputs = graph["20"]["inputs"]
    if case == "propdpm":
        graph["50"] = {"class_type": "PropDPMLoader", "inputs": {"checkpoint": PROPDPM, "weight_dtype": "fp32"}}
        inputs["model"] = ["50", 0]
    elif case == "size":
        graph["4"]["inputs"]["height"] = 60
        del inputs["flow"]
    with pytest.raises(GraphError) as err:
        host.run(graph, ["20"])
    assert err.value.exception_type == "magicprop.MagicPropError", err.value
    assert "\n" not in err.value.message.strip()
    import re

    assert re.search(pattern, err.value.message), err.value.message
