"""Test media written the way cameras and phones write them."""

from __future__ import annotations

import numpy as np
import torch


def write_turned(path, frames: torch.Tensor, degrees: int, pix_fmt: str = "yuv444p") -> None:
    """(K, H, W, 3) frames stored turned and tagged with the display rotation (`degrees`, counter-clockwise) that
    shows them upright again, as a phone stores a portrait video; x264 lossless (crf 0)."""
    import av

    stored = [np.ascontiguousarray(np.rot90(f, -(degrees // 90))) for f in (frames * 255).round().byte().numpy()]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = pix_fmt
        stream.set_display_rotation(degrees)
        for f in stored:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def write_clip(path, frames: torch.Tensor, *, colorspace: int | None = None, color_range: int | None = None,
               sample_aspect=None, video_start: float = 0.0, audio_start: float | None = None,
               click: float = 1.0, rate: int = 25, fmt: str | None = None, times: list[float] | None = None,
               audio_codec: str = "aac") -> None:
    """(K, H, W, 3) frames as a camera's file: x264 lossless, the YUV matrix and range tagged and used (FFmpeg's
    numbers; None: untagged, FFmpeg's default matrix), a pixel aspect, the first frame at `video_start` seconds (the
    others `times` seconds after it: a variable frame rate; default one per 1/rate) and, with `audio_start`, a mono
    track (`audio_codec`) from then on, silent but for a click at `click` seconds (source time)."""
    from fractions import Fraction

    import av
    from av.video.reformatter import Colorspace

    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream("libx264", rate=rate, options={"crf": "0"})
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv444p"
        base = Fraction(1, rate) if times is None else Fraction(1, 90000)
        video.codec_context.time_base = video.time_base = base
        if colorspace is not None:
            video.codec_context.colorspace, video.codec_context.color_range = colorspace, color_range
        if sample_aspect is not None:
            video.codec_context.sample_aspect_ratio = Fraction(sample_aspect)
        audio = None if audio_start is None else out.add_stream(audio_codec, rate=48000, layout="mono")
        matrix = {1: Colorspace.ITU709, 5: Colorspace.ITU601}.get(colorspace)
        for i, f in enumerate((frames * 255).round().byte().numpy()):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(
                format="yuv444p", dst_colorspace=matrix, dst_color_range=color_range)
            if colorspace is not None:
                frame.colorspace, frame.color_range = colorspace, color_range
            at = video_start + (i / rate if times is None else times[i])
            frame.pts, frame.time_base = round(Fraction(at).limit_denominator(10**6) / base), base
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if audio is not None:
            n = round((video_start + len(frames) / rate + 0.5 - audio_start) * 48000)
            signal = np.zeros(n, np.float32)
            at = round((click - audio_start) * 48000)
            signal[at: at + 480] = 0.9
            for k in range(0, n - 1024, 1024):
                frame = av.AudioFrame.from_ndarray(signal[None, k: k + 1024].copy(), format="fltp", layout="mono")
                frame.sample_rate, frame.time_base = 48000, Fraction(1, 48000)
                frame.pts = k + round(audio_start * 48000)
                out.mux(audio.encode(frame))
            out.mux(audio.encode())


def click_time(path) -> float | None:
    """When the first loud sample of a file's audio plays (seconds from the file's start), None without audio."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        for frame in c.decode(c.streams.audio[0]):
            loud = np.flatnonzero(np.abs(frame.to_ndarray()[0]) > 0.5)
            if loud.size:
                return float(frame.time) + loud[0] / frame.sample_rate
    return None
