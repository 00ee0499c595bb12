"""Video files as phones and cameras write them: a display rotation, colour tags, a pixel aspect and streams that
do not start at 0 are read as players show them and carried into the videos made from them."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from media import click_time, write_clip, write_turned

from magicprop.cli import main
from magicprop.io.images import save_image
from magicprop.io.stream import Outputs, write_video
from magicprop.io.video import iter_frames, kept_times, probe, read_frames

PATCHES = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.94, 0.78, 0.12]])
"""Saturated colours, where a YUV matrix that differs from the one the file was written with shows most."""


def _patches(k: int = 3, size: int = 32) -> torch.Tensor:
    """(k, 2 size, 2 size, 3) frames of four flat patches: lossless through YUV 4:4:4 but for rounding."""
    grid = PATCHES.view(2, 2, 1, 1, 3).expand(2, 2, size, size, 3).permute(0, 2, 1, 3, 4).reshape(2 * size, 2 * size, 3)
    return grid[None].repeat(k, 1, 1, 1)


def _shown(path, colorspace: int | None) -> torch.Tensor:
    """The first frame of a file decoded with the YUV matrix and range it is tagged with, as players decode it
    (untagged: FFmpeg's default); independent of the reader under test."""
    import av
    from av.video.reformatter import Colorspace

    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        matrix = {1: Colorspace.ITU709, 5: Colorspace.ITU601}.get(colorspace)
        rgb = frame.reformat(format="rgb24", src_colorspace=matrix, src_color_range=frame.color_range or None)
        return torch.from_numpy(rgb.to_ndarray()).float() / 255


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_video_with_a_display_rotation_is_read_upright(tmp_path, degrees, caplog):
    """A phone's portrait video (stored landscape, a display rotation to show it): read as players show it, the same
    frames that OpenCV reads with its automatic orientation; before, it was read on its side."""
    import cv2

    frames = torch.rand(3, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "turned.mp4"
    write_turned(path, frames, degrees)
    with caplog.at_level("INFO"):
        info = probe(path)
    assert (info.width, info.height) == (48, 32)  # stored 32x48 when turned a quarter
    assert "display rotation" in caplog.text
    got = read_frames(path)
    assert got.shape == frames.shape and (got - frames).abs().mean() < 2 / 255  # lossless but for RGB <-> YUV
    capture = cv2.VideoCapture(str(path))  # an independent reader that applies the rotation
    shown = [capture.read()[1][..., ::-1] for _ in range(3)]
    capture.release()
    assert (got - torch.from_numpy(np.stack(shown).copy()).float() / 255).abs().mean() < 2 / 255



@pytest.mark.parametrize(("colorspace", "color_range"), [(1, 1), (5, 1), (1, 2), (None, None)],
                         ids=["bt709", "bt601", "bt709-full-range", "untagged"])
def test_a_video_made_from_a_source_keeps_its_colours(tmp_path, colorspace, color_range):
    """Written with the source's matrix and range and tagged with them, by both writers (whole and streamed), so a
    player shows the result's colours as it shows the source's. Before, every output was written with FFmpeg's
    default (BT.601) matrix and untagged: an HD source tagged BT.709 came out with its greens at 214 of 255."""
    source = tmp_path / "source.mp4"
    write_clip(source, _patches(), colorspace=colorspace, color_range=color_range)
    tags = probe(source).tags
    assert (tags.colorspace, tags.color_range) == (colorspace or 2, color_range or 0)
    frames = read_frames(source)
    assert (frames[0] - _patches()[0]).abs().max() <= 2 / 255
    write_video(tmp_path / "whole.mp4", frames, 25, crf=0, pix_fmt="yuv444p", tags=tags)
    with Outputs("test", 3) as outputs:
        outputs.open(tmp_path / "streamed.mp4", tuple(frames.shape[1:3]), 25, crf=0, pix_fmt="yuv444p", tags=tags)
        for k in (2, 0, 1):
            outputs.put(k, frames[k])
    for out in ("whole.mp4", "streamed.mp4"):
        made = probe(tmp_path / out).tags
        assert (made.colorspace, made.color_range) == (tags.colorspace, tags.color_range)
        assert (_shown(tmp_path / out, colorspace) - _patches()[0]).abs().max() <= 3 / 255


def test_frames_without_a_source_are_written_as_bt709(tmp_path):
    """PNG frames (sRGB) become an mp4 tagged BT.709 and written with its matrix, what players assume for HD."""
    write_video(tmp_path / "out.mp4", _patches(), 25, crf=0, pix_fmt="yuv444p")
    tags = probe(tmp_path / "out.mp4").tags
    assert (tags.colorspace, tags.color_range, tags.primaries, tags.trc) == (1, 1, 1, 1)
    assert (_shown(tmp_path / "out.mp4", 1) - _patches()[0]).abs().max() <= 3 / 255


def test_a_source_stored_as_rgb_gives_a_bt709_video(tmp_path):
    """x264's RGB mode (tagged RGB, full range): the result, YUV, is written and tagged as BT.709 limited range, as
    from PNGs; its tags copied, players would read the YUV as RGB."""
    import av

    with av.open(str(tmp_path / "rgb.mkv"), "w") as out:
        stream = out.add_stream("libx264rgb", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "rgb24"
        for f in (_patches() * 255).round().byte().numpy():
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    tags = probe(tmp_path / "rgb.mkv").tags
    assert (tags.colorspace, tags.color_range) == (1, 1)
    write_video(tmp_path / "out.mp4", read_frames(tmp_path / "rgb.mkv"), 25, crf=0, pix_fmt="yuv444p", tags=tags)
    assert (_shown(tmp_path / "out.mp4", 1) - _patches()[0]).abs().max() <= 3 / 255


def test_an_anamorphic_video_keeps_its_pixel_aspect(tmp_path):
    write_clip(tmp_path / "source.mp4", _patches(), sample_aspect=Fraction(4, 3))
    info = probe(tmp_path / "source.mp4")
    assert info.tags.sample_aspect == Fraction(4, 3)
    write_video(tmp_path / "out.mp4", read_frames(tmp_path / "source.mp4"), 25, tags=info.tags)
    assert probe(tmp_path / "out.mp4").tags.sample_aspect == Fraction(4, 3)


@pytest.mark.parametrize(("video_start", "audio_start", "fmt"),
                         [(10.0, 10.0, "matroska"), (10.0, 10.0, "mpegts"), (0.4, 0.0, None), (0.0, 0.4, None)],
                         ids=["both-at-10s-mkv", "both-at-10s-ts", "video-later", "audio-later"])
def test_the_audio_keeps_its_place_against_the_picture(tmp_path, video_start, audio_start, fmt):
    """A click at source time t plays at t - video_start in the result, whatever time the streams start at (a clip
    cut from a longer recording, camera .ts files, an audio track that begins late). Before, audio whose times did
    not begin at 0 was dropped, and the first audio packet was put at 0."""
    source = tmp_path / ("source.mkv" if fmt == "matroska" else "source.ts" if fmt else "source.mp4")
    click = max(video_start, audio_start) + 0.6
    write_clip(source, _patches(k=40), video_start=video_start, audio_start=audio_start, click=click, fmt=fmt)
    info = probe(source)
    assert info.tags.start == pytest.approx(video_start, abs=0.01)
    write_video(tmp_path / "out.mp4", read_frames(source), info.fps, audio_from=source, tags=info.tags)
    assert click_time(tmp_path / "out.mp4") == pytest.approx(click - video_start, abs=0.005)


@pytest.mark.parametrize(("audio_codec", "fmt", "written", "video_start", "audio_start"), [
    ("pcm_s16le", "mov", "aac", 0.0, 0.0), ("pcm_s16le", "mov", "aac", 0.0, 0.4), ("pcm_s16le", "mov", "aac", 0.4, 0.0),
    ("aac", "mp4", "aac", 0.0, 0.0), ("mp3", "mp4", "mp3", 0.0, 0.0)])
def test_audio_players_cannot_play_from_mp4_becomes_aac(tmp_path, audio_codec, fmt, written, video_start,
                                                         audio_start):
    """A camera's PCM (which FFmpeg would put in an mp4 as 'ipcm', unplayable in browsers) is transcoded to AAC, at
    its time against the picture (a track starting later, or earlier, than the video); AAC and MP3 are copied."""
    source = tmp_path / f"camera.{fmt}"
    click = max(video_start, audio_start) + 0.6
    write_clip(source, _patches(k=40), video_start=video_start, audio_start=audio_start, click=click,
               audio_codec=audio_codec)
    info = probe(source)
    write_video(tmp_path / "out.mp4", read_frames(source), info.fps, audio_from=source, tags=info.tags)
    import av

    with av.open(str(tmp_path / "out.mp4")) as c:
        assert [a.codec_context.codec.canonical_name for a in c.streams.audio] == [written]
    assert click_time(tmp_path / "out.mp4") == pytest.approx(click - video_start, abs=0.03)  # (AAC's encoder delay)


def _frame_times(path) -> list[float]:
    import av

    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


def test_a_variable_frame_rate_keeps_each_frames_time(tmp_path, caplog):
    """A phone's variable frame rate (30 fps falling to 15): the result's frames play at the source's times, so they
    stay in sync with its audio; a constant rate is written as before (one frame per 1/fps)."""
    times = [k / 30 for k in range(20)] + [20 / 30 + k / 15 for k in range(20)]
    write_clip(tmp_path / "vfr.mp4", _patches(k=40), times=times)
    write_clip(tmp_path / "cfr.mp4", _patches(k=40))
    seen: list[float] = []
    frames = torch.stack(list(iter_frames(tmp_path / "vfr.mp4", times=seen)))
    assert seen == pytest.approx(times, abs=1e-4)
    with caplog.at_level("INFO"):
        kept = kept_times(seen, probe(tmp_path / "vfr.mp4").fps)
    assert kept == pytest.approx(times, abs=1e-4) and "variable frame rate (frames 33 to 67 ms apart)" in caplog.text
    write_video(tmp_path / "out.mp4", frames, probe(tmp_path / "vfr.mp4").fps, times=kept)
    assert _frame_times(tmp_path / "out.mp4") == pytest.approx(times, abs=1e-4)
    constant: list[float] = []
    list(iter_frames(tmp_path / "cfr.mp4", times=constant))
    assert kept_times(constant, probe(tmp_path / "cfr.mp4").fps) is None


def test_the_audio_ends_with_the_frames_kept_at_their_times(tmp_path):
    """The first 20 frames of a clip at 30 fps that falls to 15 (average 20 fps) play 0.68 s, not 20 / 20 = 1 s:
    the audio copied ends with them."""
    import av

    times = [k / 30 for k in range(20)] + [20 / 30 + k / 15 for k in range(20)]
    write_clip(tmp_path / "vfr.mp4", _patches(k=40), times=times, audio_start=0.0, click=0.3)
    info = probe(tmp_path / "vfr.mp4")
    seen: list[float] = []
    frames = torch.stack(list(iter_frames(tmp_path / "vfr.mp4", max_frames=20, times=seen)))
    kept = kept_times(seen, info.fps)
    write_video(tmp_path / "out.mp4", frames, info.fps, audio_from=tmp_path / "vfr.mp4", tags=info.tags, times=kept)
    with av.open(str(tmp_path / "out.mp4")) as c:
        end = max(float(f.time) + f.samples / f.sample_rate for f in c.decode(c.streams.audio[0]))
    assert end == pytest.approx(19 / 30 + 1 / 20, abs=0.03)


def test_frame_times_that_go_backwards_are_not_kept(caplog):
    """Two clips joined end to end (cat a.ts b.ts), a clock reset: no time line to keep, so a constant rate, said
    once (keeping them made the encoder refuse the file at the end of the run)."""
    joined = [k / 25 for k in range(10)] * 2
    with caplog.at_level("WARNING"):
        assert kept_times(joined, 25) is None
    assert "frame times go backwards (or repeat) at frame 10 (0.000 s after 0.360 s)" in caplog.text


def test_warp_carries_the_sources_colours_pixel_aspect_audio_and_times(tmp_path, bigbuckbunny):
    """The wiring of the above through `warp` (mp4 and --mask-out)."""
    frames = read_frames(bigbuckbunny, 6)[:, ::6, ::6].contiguous()  # 120x214
    frames = frames[:, :120, :212]
    source, times = tmp_path / "camera.mp4", [0, 0.04, 0.08, 0.16, 0.24, 0.32]
    write_clip(source, frames, colorspace=1, color_range=1, sample_aspect=Fraction(4, 3), video_start=0.4,
               audio_start=0.0, click=0.6, times=times)
    save_image(tmp_path / "edit.png", read_frames(source, 1)[0].flip(-1))
    assert main(["-q", "warp", "--video", str(source), "--reference", str(tmp_path / "edit.png"), "--reference-index",
                 "0", "--out", str(tmp_path / "out.mp4"), "--mask-out", str(tmp_path / "filled.mp4")]) == 0
    for out in ("out.mp4", "filled.mp4"):
        tags = probe(tmp_path / out).tags
        assert (tags.colorspace, tags.color_range, tags.sample_aspect) == (1, 1, Fraction(4, 3))
    assert click_time(tmp_path / "out.mp4") == pytest.approx(0.2, abs=0.005)
    assert _frame_times(tmp_path / "out.mp4") == pytest.approx(times, abs=1e-4)
