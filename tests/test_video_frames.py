"""Frame folders as video: natural order, 8/16-bit PNG round trips, atomic writes, and the same API as video files."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from magicprop.errors import MagicPropError
from magicprop.io.images import load_image
from magicprop.io.stream import FolderStream, write_video
from magicprop.io.video import (
    has_alpha,
    is_frame_folder,
    iter_frames,
    list_frames,
    probe,
    read_frames,
    read_png,
    write_frames,
    write_png,
)
from magicprop.log import PREFIX


def _frames(k: int = 4, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(k, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_frame_folder_is_chosen_by_the_path(tmp_path):
    (tmp_path / "dir").mkdir()
    assert is_frame_folder(tmp_path / "dir") and is_frame_folder(f"{tmp_path}/new/")
    assert not is_frame_folder(tmp_path / "new.mp4") and not is_frame_folder(tmp_path / "new")


def test_png_round_trip_8_and_16_bit(tmp_path):
    x = _frames(1)[0]
    write_png(tmp_path / "a.png", x, bits=8)
    write_png(tmp_path / "b.png", x, bits=16)
    assert torch.equal(read_png(tmp_path / "a.png"), torch.round(x * 255) / 255)
    assert (read_png(tmp_path / "b.png") - x).abs().max() <= 0.5 / 65535 + 1e-7
    write_png(tmp_path / "g.png", x[..., 0], bits=8)  # grey masks read back as three equal channels
    g = read_png(tmp_path / "g.png")
    assert torch.equal(g[..., 0], g[..., 2]) and torch.equal(g[..., 1], torch.round(x[..., 0] * 255) / 255)


def test_natural_order_stride_and_limit(tmp_path):
    x = _frames(12)
    for i in range(12):  # unpadded names: name order would put frame10 before frame2
        write_png(tmp_path / f"frame{i}.png", x[i])
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [f.name for f in list_frames(tmp_path)][:3] == ["frame0.png", "frame1.png", "frame2.png"]
    got = read_frames(tmp_path, max_frames=3, stride=4)
    assert torch.equal(got, torch.round(x[[0, 4, 8]] * 255) / 255)
    info = probe(tmp_path, fps=12.5)
    assert (info.width, info.height, info.frames, info.fps, info.has_audio) == (10, 12, 12, Fraction(25, 2), False)
    assert probe(tmp_path).fps == 25
    assert [probe(tmp_path, fps=f).fps for f in (29.97, 23.976, 59.94, 24, 12.5)] == [
        Fraction(30000, 1001), Fraction(24000, 1001), Fraction(60000, 1001), 24, Fraction(25, 2)]  # NTSC rates exact


def test_a_video_file_keeps_its_own_rate_and_says_when_fps_is_ignored(bigbuckbunny, caplog):
    own = probe(bigbuckbunny).fps
    with caplog.at_level("WARNING"):
        assert probe(bigbuckbunny, fps=own).fps == own and not caplog.records  # the same rate: nothing to say
        assert probe(bigbuckbunny, fps=12).fps == own
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [PREFIX + "--fps 12 ignored"]
    assert f"its own frame rate ({float(own):g} fps)" in caplog.text


def test_a_jpeg_is_read_upright_by_its_exif_orientation(tmp_path):
    """A photo app's JPEG stored turned with an EXIF orientation (6: turn a quarter clockwise to view) is read as
    viewers and ComfyUI's LoadImage show it, so it matches the video frame it edits."""
    from PIL import Image

    y, x = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 40), indexing="ij")
    upright = torch.stack([x, y, x * y], -1)  # smooth, so the JPEG keeps it within a few levels
    stored = np.ascontiguousarray(np.rot90((upright * 255).round().byte().numpy(), 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=100, exif=exif)
    got = load_image(tmp_path / "photo.jpg")[0]
    assert got.shape == upright.shape and (got - upright).abs().mean() < 2 / 255


def test_alpha_is_found_in_rgba_grey_alpha_and_palette_pngs(tmp_path):
    from PIL import Image

    rgb = (_frames(1)[0] * 255).round().byte().numpy()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "opaque_palette.png")
    palette.save(tmp_path / "palette.png", transparency=int(np.asarray(palette)[0, 0]))  # pngquant-style matte
    assert [has_alpha(tmp_path / f"{n}.png") for n in ("rgb", "rgba", "la", "opaque_palette", "palette")] == [
        False, True, True, False, True]


def test_a_numbered_folder_stream_says_which_frames_it_holds(tmp_path):
    stream = FolderStream(tmp_path / "out", numbers=[1001, 1003, 1005])
    stream.put(1, _frames(1)[0])
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["01003.png"]
    assert stream.describe().endswith("holds 1 frames (named by the source's frame numbers): 1003")


def test_write_frames_is_atomic_and_replaces_its_own_folder(tmp_path):
    out = tmp_path / "out"
    write_video(f"{out}/", iter(_frames(5)), fps=30)
    assert [f.name for f in sorted(out.iterdir())] == [f"{i:05d}.png" for i in range(5)]
    write_frames(out, iter(_frames(2, seed=1)))  # a shorter rerun leaves no stale frame behind
    assert len(list(out.iterdir())) == 2 and torch.equal(read_frames(out), torch.round(_frames(2, seed=1) * 255) / 255)

    def broken():
        yield _frames(1)[0]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_frames(out, broken())
    assert len(list(out.iterdir())) == 2 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(MagicPropError, match="holds other files"):
        write_frames(tmp_path, iter(_frames(1)))
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_frames_of_different_sizes_are_refused(tmp_path):
    write_png(tmp_path / "0.png", _frames(1)[0])
    write_png(tmp_path / "1.png", _frames(1, h=8)[0])
    with pytest.raises(MagicPropError, match="1.png is 10x8 but the first frame is 10x12"):
        list(iter_frames(tmp_path))


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(MagicPropError, match="has no PNG frames"):
        read_frames(tmp_path)
    with pytest.raises(MagicPropError, match="not an existing folder"):
        read_frames(f"{tmp_path}/missing/")


def test_mp4_and_folder_hold_the_same_frames(tmp_path, bikes):
    frames = read_frames(bikes, max_frames=3)
    write_frames(tmp_path / "png", iter(frames))
    assert torch.equal(read_frames(tmp_path / "png"), torch.round(frames * 255) / 255)
    assert torch.equal(read_frames(tmp_path / "png"), frames)  # decoded 8-bit frames survive PNG exactly


def test_a_single_png_and_a_frame_folder_are_read_alike_at_16_bits(tmp_path):
    """`--mask image.png` and a mask folder take the same PNG reader: a 16-bit mask keeps its depth in both."""
    ramp = torch.linspace(0, 1, 12 * 10).reshape(12, 10, 1).expand(12, 10, 3).contiguous()
    write_png(tmp_path / "mask.png", ramp, bits=16)
    single = load_image(tmp_path / "mask.png", "--mask")
    assert single.shape == (1, 12, 10, 3) and torch.equal(single[0], read_png(tmp_path / "mask.png"))
    assert (single[0] - ramp).abs().max() <= 0.5 / 65535 + 1e-7  # not the 1/255 steps of an 8-bit read
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MagicPropError, match=r"^--mask .*bad\.png' is not a readable PNG"):
        load_image(tmp_path / "bad.png", "--mask")


def test_gaps_in_a_numbered_sequence_are_named_and_other_names_are_left_alone(tmp_path):
    """A plate sequence that lacks frames (shot_1003.png) is named by the check, since every later frame's index moves;
    names that are not one numbered sequence, or one numbered in steps (timestamps), give nothing; a folder of JPEGs
    says what it holds."""
    from magicprop.io.video import list_frames, missing_frames

    for n in (1001, 1002, 1004, 1007):
        (tmp_path / f"shot_{n}.png").write_bytes(b"")
    assert missing_frames(list_frames(tmp_path)) == (3, ["shot_1003.png", "shot_1005.png", "shot_1006.png"])
    assert missing_frames(list_frames(tmp_path), shown=2) == (3, ["shot_1003.png", "shot_1005.png"])
    (tmp_path / "other.png").write_bytes(b"")
    assert missing_frames(list_frames(tmp_path)) == (0, [])
    steps = tmp_path / "steps"  # every 512th frame (timestamps): deliberate, not a gap
    steps.mkdir()
    for n in range(0, 512 * 2000, 512):
        (steps / f"{n}.png").write_bytes(b"")
    assert missing_frames(list_frames(steps)) == (0, [])
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    (jpegs / "0001.jpg").write_bytes(b"")
    with pytest.raises(MagicPropError, match=r"has no PNG frames \(it holds \.jpg files: export the frames as PNG\)"):
        list_frames(jpegs, "--video")
