"""`python -m magicprop warp`: flow propagation from the command line on real clips, PNG folders in and out, the
files equal to the core's output, and one-line refusals before any output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from media import write_turned

from magicprop.cli import main
from magicprop.io.images import load_image, resize_width, save_image
from magicprop.io.video import probe, read_frames, to_uint8, write_frames
from magicprop.log import PREFIX
from magicprop.motion.engine import FlowEngine, FlowSettings
from magicprop.motion.propagate import DEFAULT_STRATEGY, flow_propagate

R, FRAMES, WIDTH = 2, 6, 96


def _edit(frame: torch.Tensor) -> torch.Tensor:
    """A non-linear colour edit (a channel-mixing grade with a gamma), what a user's restyle of a frame might be."""
    return torch.stack([frame[..., 1], frame[..., 2], frame[..., 0]], -1).pow(0.6)


@pytest.fixture(scope="module")
def edit(bigbuckbunny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("edit") / "reference.png"
    save_image(path, _edit(read_frames(bigbuckbunny, R + 1)[R]))
    return path


def _args(video, edit, out, *extra) -> list[str]:
    return ["-q", "warp", "--video", str(video), "--reference", str(edit), "--reference-index", str(R),
            "--out", str(out), "--frames", str(FRAMES), "--width", str(WIDTH), *map(str, extra)]


def _u8(frames: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.from_numpy(to_uint8(f)) for f in frames])


def _core(video: Path, edit: Path, **options):
    """flow_propagate called directly on the frames the CLI works on, with the CLI's default settings."""
    frames = _u8(resize_width(read_frames(video, FRAMES), WIDTH))  # the CLI holds the selected frames as 8 bits
    reference = resize_width(load_image(edit), WIDTH).mul(255).round().div(255)  # ... and the reference too
    engine = FlowEngine(FlowSettings(estimator="dis", preset="medium", work_size=512))
    return flow_propagate(frames, reference, [R], engine, strategy=DEFAULT_STRATEGY, window=8, dtype=torch.float16,
                          **options)


def test_warp_fill_synthesis_equals_the_core(tmp_path, bigbuckbunny, edit):
    png = tmp_path / "frames"
    assert main(_args(bigbuckbunny, edit, f"{png}/", "--fill", "synthesis")) == 0
    expected = _core(bigbuckbunny, edit, fill="synthesis")
    assert torch.equal(_u8(read_frames(png)), _u8(expected.frames.float()))
    colour = _core(bigbuckbunny, edit)
    assert not torch.equal(_u8(expected.frames.float()), _u8(colour.frames.float()))  # the fill is not colour


def test_warp_png_folder_equals_the_core_and_mp4_is_within_codec_tolerance(tmp_path, bigbuckbunny, edit):
    png, masks, mp4 = tmp_path / "frames", tmp_path / "masks", tmp_path / "out.mp4"
    assert main(_args(bigbuckbunny, edit, f"{png}/", "--mask-out", f"{masks}/")) == 0
    assert main(_args(bigbuckbunny, edit, mp4, "--mask-out", tmp_path / "masks.mp4")) == 0
    expected = _core(bigbuckbunny, edit)

    written = read_frames(png)
    assert written.shape == (FRAMES, 54, WIDTH, 3)
    assert sorted(p.name for p in png.iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]
    assert torch.equal(_u8(written), _u8(expected.frames.float()))  # exactly the core's frames, 8-bit
    assert torch.equal(_u8(read_frames(masks)[..., 0, None]), _u8(expected.filled.float()[..., None]))
    assert torch.equal(written[R], torch.round(resize_width(load_image(edit), WIDTH)[0] * 255) / 255)

    info = probe(mp4)
    assert (info.frames, info.width, info.height) == (FRAMES, WIDTH, 54) and info.fps == probe(bigbuckbunny).fps
    decoded = read_frames(mp4)
    mse = (decoded - written).square().mean()
    assert 10 * torch.log10(1 / mse) > 30  # x264 crf 18, 4:2:0: lossy, but close to the PNG frames
    assert probe(tmp_path / "masks.mp4").frames == FRAMES


def _write_rgba(path: Path, rgb: torch.Tensor, alpha: torch.Tensor, bits: int = 8) -> None:
    """(H, W, 3) colours and (H, W, 1) alpha in [0, 1] -> an RGBA PNG of 8 or 16 bits (straight alpha)."""
    import av
    import numpy as np

    top, fmt, png = (65535, "rgba64le", "rgba64be") if bits == 16 else (255, "rgba", "rgba")
    layer = (torch.cat([rgb, alpha], -1) * top).round().numpy().astype(np.uint16 if bits == 16 else np.uint8)
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], png
        for packet in stream.encode(av.VideoFrame.from_ndarray(layer, format=fmt).reformat(format=png)):
            out.mux(packet)
        out.mux(stream.encode())


def test_a_matte_in_the_masks_alpha_is_the_mask(tmp_path, bigbuckbunny, edit):
    """A mask exported as a matte (white, the mask in its alpha) gives the same run as the mask drawn white on
    black; before, its white colour made the whole frame the edited region."""
    h, w = read_frames(bigbuckbunny, 1).shape[1:3]
    mask = torch.zeros(h, w, 1)
    mask[h // 4: 3 * h // 4, : w // 2] = 1
    drawn, matte = tmp_path / "drawn.png", tmp_path / "matte.png"
    save_image(drawn, mask.expand(h, w, 3))
    _write_rgba(matte, torch.ones(h, w, 3), mask)
    assert main(_args(bigbuckbunny, edit, f"{tmp_path}/drawn/", "--mask", drawn, "--fill", "colour")) == 0
    assert main(_args(bigbuckbunny, edit, f"{tmp_path}/matte/", "--mask", matte, "--fill", "colour")) == 0
    assert torch.equal(read_frames(tmp_path / "drawn"), read_frames(tmp_path / "matte"))


@pytest.mark.parametrize("bits", [8, 16])
def test_a_paint_layer_with_transparency_is_laid_over_its_frame(tmp_path, bigbuckbunny, edit, bits):
    """A reference PNG with alpha (a paint layer: the edit where it is opaque, transparent elsewhere) gives the same
    run as the layer flattened over its frame, also at its edges after --width (premultiplied before resampling, the
    black of its transparent pixels does not bleed in); before, its transparent pixels were carried as a black
    edit."""
    source = read_frames(bigbuckbunny, R + 1)[R]
    painted = load_image(edit)[0]
    alpha = torch.zeros(*source.shape[:2], 1)
    alpha[:, : source.shape[1] // 2] = 1  # the left half painted, the right half transparent
    alpha[:, source.shape[1] // 2: source.shape[1] // 2 + 8] = 0.5  # a soft edge
    path = tmp_path / "layer.png"
    _write_rgba(path, painted * (alpha > 0), alpha, bits)  # as a paint program exports it: black where transparent
    flat = tmp_path / "flat.png"
    save_image(flat, alpha * painted + (1 - alpha) * source)
    assert main(_args(bigbuckbunny, path, f"{tmp_path}/layer/", "--fill", "colour")) == 0
    assert main(_args(bigbuckbunny, flat, f"{tmp_path}/flat/", "--fill", "colour")) == 0
    a, b = read_frames(tmp_path / "layer"), read_frames(tmp_path / "flat")
    # the same run, to rounding and to the order of resizing and laying over (--width) at the soft edge
    assert (a - b).abs().mean() < 0.5 / 255 and (a - b).abs().max() < 0.1, ((a - b).abs().mean(), (a - b).abs().max())
    assert (a[R, :, -20:] - resize_width(source[None], WIDTH)[0, :, -20:]).abs().mean() < 0.02  # the source there


def test_png_folder_works_as_video(tmp_path, bigbuckbunny, edit):
    source = tmp_path / "source"
    write_frames(source, iter(read_frames(bigbuckbunny, FRAMES)))
    assert main(_args(source, edit, f"{tmp_path}/from_png/", "--fps", "24")) == 0
    assert main(_args(bigbuckbunny, edit, f"{tmp_path}/from_mp4/")) == 0
    # decoded 8-bit frames survive PNG exactly, so both runs see the same frames
    assert torch.equal(read_frames(tmp_path / "from_png"), read_frames(tmp_path / "from_mp4"))
    assert main(_args(source, edit, tmp_path / "from_png.mp4", "--fps", "24")) == 0
    assert probe(tmp_path / "from_png.mp4").fps == 24


def test_a_portrait_phone_video_is_edited_upright(tmp_path, bigbuckbunny):
    """A video stored on its side with a display rotation (what phones write) takes a reference edited upright, as
    every player and image tool shows its frames, and the result is written upright: the same run as on the upright
    frames as PNGs. Before, the reference was refused (its size was the stored one turned)."""
    upright = read_frames(bigbuckbunny, FRAMES)[:, :, 440:840]  # portrait frames, 400x720
    write_turned(tmp_path / "phone.mp4", upright, -90)  # as a phone held upright stores them
    write_frames(tmp_path / "frames", iter(read_frames(tmp_path / "phone.mp4")))
    path = tmp_path / "edit.png"
    save_image(path, _edit(read_frames(tmp_path / "frames", R + 1)[R]))
    assert main(_args(tmp_path / "phone.mp4", path, f"{tmp_path}/from_phone/")) == 0
    assert main(_args(tmp_path / "frames", path, f"{tmp_path}/from_png/")) == 0
    assert torch.equal(read_frames(tmp_path / "from_phone"), read_frames(tmp_path / "from_png"))
    h, w = read_frames(tmp_path / "from_phone").shape[1:3]
    assert w == WIDTH and h == round(WIDTH * 720 / 400)  # portrait, at --width


def test_png_frames_out_keep_the_sources_frame_numbers(tmp_path, bigbuckbunny, edit):
    """A compositor's plate.1001.png ... comes back as 01001.png ... (every stride-th: 01001, 01003 ...), the
    frames and the filled masks alike, so the result lines up with the plate on the timeline; before, 00000.png ..."""
    plate = tmp_path / "plate"
    plate.mkdir()
    for i, frame in enumerate(read_frames(bigbuckbunny, FRAMES)):
        save_image(plate / f"plate.{1001 + i}.png", frame)
    assert main(_args(plate, edit, f"{tmp_path}/out/", "--stride", "2", "--reference-index", "1",
                      "--mask-out", f"{tmp_path}/filled/")) == 0
    for folder in ("out", "filled"):
        assert sorted(f.name for f in (tmp_path / folder).iterdir()) == ["01001.png", "01003.png", "01005.png"]


def test_a_keyed_plates_matte_is_kept_in_png_frames_out(tmp_path, bigbuckbunny, edit, caplog):
    """PNG frames with an alpha channel (a keyed element): the result's frames carry each source frame's own matte
    (at --width), their colours the same as from the frames without it; an mp4 --out says it cannot keep it."""
    frames = read_frames(bigbuckbunny, FRAMES)
    h, w = frames.shape[1:3]
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    keyed, flat = tmp_path / "keyed", tmp_path / "flat"
    keyed.mkdir()
    for i, frame in enumerate(frames):  # a soft disc that moves: the matte differs per frame
        matte = ((1 - ((x - w / 3 - 20 * i) ** 2 + (y - h / 2) ** 2).sqrt() / (h / 3)).clamp(0, 1) * 4).clamp(0, 1)
        _write_rgba(keyed / f"{i:04d}.png", frame, matte[..., None])
    write_frames(flat, iter(frames))
    assert main(_args(keyed, edit, f"{tmp_path}/out/", "--fill", "colour")) == 0
    assert main(_args(flat, edit, f"{tmp_path}/out_flat/", "--fill", "colour")) == 0
    out = [load_image(f, alpha=True)[0] for f in sorted((tmp_path / "out").iterdir())]
    written = torch.stack([load_image(f, alpha=True)[0, ..., 3:] for f in sorted(keyed.iterdir())])
    expected = resize_width(written, WIDTH).clamp(0, 1)
    assert all(((o[..., 3:] - e).abs().max() <= 0.5 / 255 + 1e-6) for o, e in zip(out, expected, strict=True))
    assert torch.equal(torch.stack([o[..., :3] for o in out]), read_frames(tmp_path / "out_flat"))
    with caplog.at_level("INFO"):
        assert main(_args(keyed, edit, tmp_path / "out.mp4", "--fill", "colour")) == 0
    assert "holds an alpha channel, which an mp4 --out cannot keep" in caplog.text


def test_mask_keeps_the_source_outside(tmp_path, bigbuckbunny, edit):
    frame = read_frames(bigbuckbunny, 1)[0]
    mask = torch.zeros_like(frame)
    mask[:, : frame.shape[1] // 2] = 1  # edit the left half only
    save_image(tmp_path / "mask.png", mask)
    assert main(_args(bigbuckbunny, edit, f"{tmp_path}/out/", "--mask", tmp_path / "mask.png")) == 0
    out = read_frames(tmp_path / "out")
    source = resize_width(read_frames(bigbuckbunny, FRAMES), WIDTH)
    keep = resize_width(mask[None], WIDTH)[0, :, :, 0] == 0  # pixels fully outside the (resized) mask
    assert keep.any()
    assert (out[:, keep] - source[:, keep]).abs().max() <= 0.5 / 255 + 1e-6
    assert (out[:, ~keep] - source[:, ~keep]).abs().mean() > 0.05  # the edit shows inside


def _refused(capsys, tmp_path, argv, *needles) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("magicprop warp: error:"), err
    for needle in needles:
        assert needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_bad_inputs_are_refused_in_one_line_before_any_output(tmp_path, bigbuckbunny, edit, capsys, monkeypatch):
    out = tmp_path / "out.mp4"
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--flow", "raft", "--flow-weights",
                                     tmp_path / "raft.pth"), "--flow-weights", "raft.pth", "--flow dis")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--flow", "horn"), "'horn'", "dis")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--fill", "paint"), "--fill 'paint'", "synthesis")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--keyframes-per-frame", "3"), "--keyframes-per-frame 3",
             "[1, 2]")
    small = tmp_path / "small.png"
    save_image(small, torch.zeros(16, 16, 3))
    _refused(capsys, tmp_path, _args(bigbuckbunny, small, out), "--reference", "small.png", "video's size")
    small.unlink()
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, f"{tmp_path}/frames/", "--reference-index", "9"),
             "reference")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--strategy", "teleport"), "--strategy", "direct")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--carry", "pixels"), "--carry", "residual")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--device", "gpu0"), "--device 'gpu0'", "'cuda'")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--reference-index", "9"),
             "--reference-index [9]: frame 9 is out of range")
    for name in ("frame_%04d.png", "still.png", "clip.webm"):
        _refused(capsys, tmp_path, _args(bigbuckbunny, edit, tmp_path / name), f"{name}' is not an mp4 name", "'/'")
    _refused(capsys, tmp_path, _args(bigbuckbunny, tmp_path, out), f"--reference {str(tmp_path)!r} is a folder")
    (tmp_path / "notes.txt").write_text("a file, not a folder")  # before: a FileExistsError traceback
    for name in ("notes.txt/out.mp4", "notes.txt/frames/"):
        _refused(capsys, tmp_path, _args(bigbuckbunny, edit, f"{tmp_path}/{name}"), "notes.txt', which is a file")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--crf", "-5"), "--crf -5", "0 (lossless) to 51")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--fps", "0"), "--fps 0.0", "above 0")
    # the encoder is opened before any frame is made: an odd width is refused for yuv420p, with the fixes
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--width", "161"), "161x", "yuv420p needs an even",
             "--pix-fmt yuv444p")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--pix-fmt", "yuv999"), "--pix-fmt 'yuv999'",
             "--pix-fmt yuv420p")
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out, "--flow-size", "8"), "DIS needs at least 8",
             "--flow-size")
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` fails as on a host without OpenCV
    _refused(capsys, tmp_path, _args(bigbuckbunny, edit, out), "cv2", "pip install opencv-contrib-python-headless")


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path, bigbuckbunny, edit, capsys):
    """A PNG output folder is cleared when it is opened: --out or --mask-out naming the --video or --mask folder (or
    a folder holding the reference) would delete the user's frames. Refused in one line before any work."""
    plates = tmp_path / "plates"
    write_frames(plates, resize_width(read_frames(bigbuckbunny, FRAMES), WIDTH))
    frames = sorted(p.name for p in plates.iterdir())
    copied = tmp_path / "ref" / "00000.png"
    copied.parent.mkdir()
    copied.write_bytes(Path(edit).read_bytes())
    for argv, needles in (
        (_args(plates, edit, f"{plates}/"), ("--out", "is also --video")),
        (_args(plates, edit, tmp_path / "o.mp4", "--mask-out", f"{plates}/"), ("--mask-out", "is also --video")),
        (_args(plates, edit, tmp_path / "o.mp4", "--mask", plates, "--mask-out", f"{plates}/"), ("--mask-out",)),
        (_args(plates, copied, f"{copied.parent}/"), ("--out", "holds --reference")),
        (_args(bigbuckbunny, edit, bigbuckbunny), ("--out", "is also --video")),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and all(n in err for n in needles), err
        assert "give" in err and "a path of its own" in err, err
    assert sorted(p.name for p in plates.iterdir()) == frames and copied.is_file()


def test_external_flow_becomes_motion_both_ways():
    from magicprop.errors import MagicPropError
    from magicprop.motion.engine import compose
    from magicprop.motion.external import check_external_flow, external_motion

    h, w = 40, 48
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    angle = 0.05  # a small rotation about the centre plus a shift: smooth and invertible
    dx = (xs - w / 2) * (torch.cos(torch.tensor(angle)) - 1) - (ys - h / 2) * torch.sin(torch.tensor(angle)) + 2.5
    dy = (xs - w / 2) * torch.sin(torch.tensor(angle)) + (ys - h / 2) * (torch.cos(torch.tensor(angle)) - 1) - 1.0
    flow = torch.stack([dx, dy], -1)[None].repeat(2, 1, 1, 1)  # controlnet_aux layout (K-1, H, W, 2)
    check_external_flow(flow, 3, (h, w))
    motion = external_motion(flow, "forward", (h, w))
    assert motion.settings == {"estimator": "external", "direction": "forward", "other_direction": "inverted"}
    assert len(motion) == 2
    assert torch.allclose(motion.forward.float(), flow.permute(0, 3, 1, 2), atol=2e-2)  # fp16 storage
    round_trip = compose(motion.forward.float(), motion.backward.float())  # a -> b -> a: no motion
    assert motion.valid_forward[:, 4:-4, 4:-4].float().mean() > 0.95
    assert round_trip[:, :, 4:-4, 4:-4].abs().max() < 0.05
    back = external_motion(-flow, "backward", (h, w))  # the same field read as backward flow
    assert torch.allclose(back.backward.float(), -flow.permute(0, 3, 1, 2), atol=2e-2)
    with pytest.raises(MagicPropError, match=r"external_flow has shape \(2, 40, 48, 2\): expected .*\(3, 40, 48, 2\)"):
        check_external_flow(flow, 4, (h, w))
    with pytest.raises(MagicPropError, match="flow_direction 'sideways'"):
        external_motion(flow, "sideways", (h, w))


def test_cut_notices_on_bikes(tmp_path, bikes, caplog):
    """bikes.mp4 cuts after frames 29 and 75 (frames 69-74 move fast without a cut)."""
    reference = tmp_path / "reference.png"
    save_image(reference, _edit(read_frames(bikes, 1)[0]))
    with caplog.at_level("INFO", logger="magicprop"):
        assert main(["-q", "warp", "--video", str(bikes), "--reference", str(reference), "--reference-index", "0",
                     "--out", f"{tmp_path}/out/", "--frames", "100", "--width", "160", "--strategy", "accumulate"]) == 0
    notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith(PREFIX + "hard cut at frame")]
    assert [int(m.split()[5]) for m in notices] == [30, 76], notices
    assert all("add an edited keyframe at frame" in m for m in notices)


def test_bench_real_is_a_bench_subcommand():
    from magicprop.cli import build_parser

    args = build_parser().parse_args(["bench", "real", "--out", "results", "--flow-weights", "raft.pth"])
    assert (args.command, args.bench, str(args.out), str(args.flow_weights)) == ("bench", "real", "results", "raft.pth")
