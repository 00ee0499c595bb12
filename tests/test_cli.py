"""`python -m magicprop`: init and propagate end to end on a real clip with tiny real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_UNET_CONFIG

from magicprop.cli import main
from magicprop.io.images import crop_to_grid, resize_width, save_image
from magicprop.io.stream import write_video
from magicprop.io.video import probe, read_frames
from magicprop.log import PREFIX
from magicprop.propdpm.depth import DepthEstimator, align_clip_depth, depth_to_latent_grid
from magicprop.propdpm.diffusers_backend import DiffusersDenoiser, StandaloneModels
from magicprop.propdpm.loop import propagate

ROOT = Path(__file__).resolve().parents[1]
R, FRAMES, WIDTH, STEPS, SEED = 5, 8, 160, 3, 9


@pytest.fixture(scope="module")
def edit(bikes, tmp_path_factory) -> Path:
    """An "edited" frame R of bikes.mp4 at the video's own size (colours inverted)."""
    path = tmp_path_factory.mktemp("edit") / "reference.png"
    save_image(path, 1 - read_frames(bikes, R + 1)[R])
    return path


def _args(tiny_models, bikes, edit, out, *extra) -> list[str]:
    return ["propagate", "--checkpoint", str(tiny_models["checkpoint"]), "--video", str(bikes),
            "--reference", str(edit), "--reference-index", str(R), "--out", str(out), "--vae", str(tiny_models["vae"]),
            "--clip-vision", str(tiny_models["clip_vision"]), "--depth-model", str(tiny_models["depth"]),
            "--frames", str(FRAMES), "--width", str(WIDTH), "--steps", str(STEPS), "--seed", str(SEED),
            "--crf", "0", "--pix-fmt", "yuv444p", "--device", "cpu", *extra]


def test_init_from_unet_config(tmp_path, tiny_models):
    (tmp_path / "unet.json").write_text(json.dumps(TINY_UNET_CONFIG))
    out = tmp_path / "p.safetensors"
    assert main(["init", "--unet-config", str(tmp_path / "unet.json"), "--out", str(out),
                 "--clip-vision", str(tiny_models["clip_vision"])]) == 0
    from magicprop.propdpm.checkpoint import inspect_checkpoint

    cfg = inspect_checkpoint(out)
    assert cfg.unet_config["in_channels"] == 10 and cfg.clip.token_dim == 32 and cfg.clip.fingerprint
    assert cfg.clip.num_tokens == 17


def test_propagate_end_to_end_matches_the_core_loop(tmp_path, tiny_models, bikes, edit, caplog):
    out = tmp_path / "out.mp4"
    with caplog.at_level("INFO"):
        assert main(_args(tiny_models, bikes, edit, out)) == 0
    assert "cropped to 160x64" in caplog.text  # 640x272 -> 160x68 -> 160x64, as documented

    info = probe(out)
    src = probe(bikes)
    assert (info.width, info.height) == (160, 64) and info.fps == src.fps
    written = read_frames(out)
    assert written.shape == (FRAMES, 64, 160, 3)

    # the same run composed from the core's parts
    frames_raw = read_frames(bikes, FRAMES)
    frames = crop_to_grid(resize_width(frames_raw, WIDTH), notice=False)
    from magicprop.io.images import load_image

    reference = crop_to_grid(resize_width(load_image(edit), WIDTH), notice=False)
    depth = align_clip_depth(DepthEstimator.from_folder(tiny_models["depth"])(frames))
    models = StandaloneModels.load(tiny_models["checkpoint"], tiny_models["vae"], tiny_models["clip_vision"])
    ref_latent = models.encode(reference)
    denoiser = DiffusersDenoiser(models.unet, models.config, models.appearance_tokens(reference, ref_latent), STEPS)
    latents = propagate(denoiser, ref_latent, depth_to_latent_grid(depth, tuple(ref_latent.shape[-2:])), R, SEED)
    expected = models.decode(latents)
    err = (written - expected).abs()
    assert err.mean() < 1.5 / 255 and err.max() < 12 / 255, (err.mean().item() * 255, err.max().item() * 255)
    # frame R is the VAE round trip of the edited reference
    # (decoded alone rather than in a batch of 8: float rounding differs by ~1e-5)
    torch.testing.assert_close(expected[R], models.decode(models.encode(reference))[0], atol=1e-4, rtol=1e-4)
    assert (written[R] - expected[R]).abs().mean() < 1.5 / 255
    # and the edit is really propagated: other frames are not the source frames
    assert (written[R + 1] - frames[R + 1]).abs().mean() > 0.05


def test_audio_is_remuxed(tmp_path, tiny_models, bigbuckbunny):
    ref = tmp_path / "ref.png"
    save_image(ref, read_frames(bigbuckbunny, 1)[0])
    out = tmp_path / "bunny.mp4"
    args = ["propagate", "--checkpoint", str(tiny_models["checkpoint"]), "--video", str(bigbuckbunny),
            "--reference", str(ref), "--reference-index", "0", "--out", str(out), "--vae", str(tiny_models["vae"]),
            "--clip-vision", str(tiny_models["clip_vision"]), "--depth-model", str(tiny_models["depth"]),
            "--frames", "4", "--width", "64", "--steps", "1", "--device", "cpu"]
    assert main(args) == 0
    import av

    with av.open(str(out)) as c:
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        audio_packets = sum(1 for _ in c.demux(c.streams.audio[0]))
    assert audio_packets > 0
    assert main(args[:-2] + ["--no-audio", "--device", "cpu"]) == 0
    assert not probe(out).has_audio


@pytest.mark.parametrize("case,pattern", [
    ("reference_size", r"--reference \S+ is 64x48 but the video is 640x272"),
    ("index", r"reference_index=8 is out of range for a clip of 8 frames"),
    ("zero_frames", r"--frames 0: expected 1 or more"),
    ("missing", r"--video '.*nope.mp4' does not exist"),
    ("empty_video", r"video '.*empty.mp4' cannot be opened"),
])
def test_bad_inputs_fail_cleanly(tmp_path, tiny_models, bikes, edit, case, pattern, capfd):
    out = tmp_path / "out.mp4"
    args = _args(tiny_models, bikes, edit, out)
    if case == "reference_size":
        small = tmp_path / "small.png"
        save_image(small, torch.rand(48, 64, 3))
        args[args.index("--reference") + 1] = str(small)
    elif case == "index":
        args[args.index("--reference-index") + 1] = "8"
    elif case == "zero_frames":
        args[args.index("--frames") + 1] = "0"
    elif case == "missing":
        args[args.index("--video") + 1] = str(tmp_path / "nope.mp4")
    elif case == "empty_video":
        (tmp_path / "empty.mp4").write_bytes(b"")
        args[args.index("--video") + 1] = str(tmp_path / "empty.mp4")
    assert main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("magicprop propagate: error:"), err
    import re

    assert re.search(pattern, err[0]), err[0]
    assert not out.exists() and list(tmp_path.glob("*.part")) == []


def test_module_entry_point_reports_errors_with_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "magicprop", "propagate", "--checkpoint", str(tmp_path / "x.safetensors"),
         "--video", "v.mp4", "--reference", "r.png", "--reference-index", "0", "--out", str(tmp_path / "o.mp4"),
         "--vae", ".", "--clip-vision", ".", "--depth-frames", "."],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"magicprop propagate: error: --checkpoint '{tmp_path / 'x.safetensors'}' does not exist; "
        "pass an existing file."
    ]


def test_width_applies_to_the_reference_at_either_size(tmp_path, tiny_models, bikes, edit, capfd):
    """--width W: a reference at the video's size is resized like the frames; one already at the resized size is
    taken as is; any other size is refused in one line that says --width applies to both."""
    from magicprop.io.images import load_image
    from magicprop.jobs.propagate import PropagateJob, read_job

    def job(reference: Path) -> PropagateJob:
        return PropagateJob(checkpoint=tiny_models["checkpoint"], video=bikes, reference=reference, reference_index=0,
                            out=tmp_path / "out.mp4", vae=tiny_models["vae"], clip_vision=tiny_models["clip_vision"],
                            depth_model=tiny_models["depth"], max_frames=2, width=WIDTH)

    original = read_job(job(edit), progress=False).references
    torch.testing.assert_close(original, crop_to_grid(resize_width(load_image(edit), WIDTH), notice=False))
    small = tmp_path / "small.png"
    save_image(small, resize_width(load_image(edit), WIDTH)[0])  # 160x68, what --width makes of the video
    resized = read_job(job(small), progress=False)
    assert resized.references.shape == original.shape == (1, 64, 160, 3)
    assert torch.equal(resized.references, crop_to_grid(load_image(small), notice=False)), "taken as is"
    assert resized.depth.shape == (2, 1, 8, 20)

    other = tmp_path / "other.png"
    save_image(other, torch.rand(50, 100, 3, generator=torch.Generator().manual_seed(0)))
    args = _args(tiny_models, bikes, edit, tmp_path / "out.mp4")
    args[args.index("--reference") + 1] = str(other)
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["magicprop propagate: error: --reference other.png is 100x50 but the video is 640x272 (--width "
                   "160: 160x68): give it at either size: --width applies to both the video and the reference."], err


def test_a_short_video_is_written_with_a_notice(tmp_path, tiny_models, bikes, caplog):
    """--frames 200 on a video of 4 frames writes 4 frames and says so."""
    frames = resize_width(read_frames(bikes, 4), 64)[:, :16]
    write_video(tmp_path / "short.mp4", frames, 25, crf=0, pix_fmt="yuv444p")
    save_image(tmp_path / "ref.png", frames[0])
    out = tmp_path / "out.mp4"
    args = ["propagate", "--checkpoint", str(tiny_models["checkpoint"]), "--video", str(tmp_path / "short.mp4"),
            "--reference", str(tmp_path / "ref.png"), "--reference-index", "0", "--out", str(out),
            "--vae", str(tiny_models["vae"]), "--clip-vision", str(tiny_models["clip_vision"]),
            "--depth-model", str(tiny_models["depth"]), "--frames", "200", "--steps", "1", "--device", "cpu"]
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert read_frames(out).shape[0] == 4
    notices = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert notices == [PREFIX + "short.mp4 has 4 frames (after --stride 1) where --frames asked for 200; "
                       "writing 4 frames."], caplog.text
