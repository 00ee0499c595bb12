"""Video files with PyAV: decode frames, write an mp4 at the source fps with the source audio remuxed."""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import MagicPropError
from .fileio import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int | None
    """Frame count from the container (None when it does not say)."""
    has_audio: bool


def _open(path: str | Path):
    import av

    p = Path(path)
    if not p.is_file():
        raise MagicPropError(f"video {str(p)!r} does not exist; pass the path of a video file (mp4, mov, webm ...).")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as e:
        raise MagicPropError(f"video {str(p)!r} cannot be opened as a video ({e}); is the file complete?") from None
    if not container.streams.video:
        container.close()
        raise MagicPropError(f"video {str(p)!r} has no video stream.")
    return container


def probe(path: str | Path) -> VideoInfo:
    with _open(path) as c:
        s = c.streams.video[0]
        fps = s.average_rate or s.guessed_rate or Fraction(25)
        return VideoInfo(s.codec_context.width, s.codec_context.height, Fraction(fps), s.frames or None,
                         bool(c.streams.audio))


def iter_frames(path: str | Path, max_frames: int | None = None, stride: int = 1) -> Iterator[torch.Tensor]:
    """Yield (H, W, 3) float32 frames in [0, 1]: every `stride`-th frame, at most `max_frames` of them."""
    import av

    if stride < 1:
        raise MagicPropError(f"stride={stride}: expected 1 or more (take every stride-th frame).")
    c = _open(path)
    n = 0
    try:
        for i, frame in enumerate(c.decode(video=0)):
            if i % stride:
                continue
            if max_frames is not None and n >= max_frames:
                break
            yield torch.from_numpy(frame.to_ndarray(format="rgb24")).float() / 255.0
            n += 1
    except av.error.FFmpegError as e:
        raise MagicPropError(f"video {str(path)!r} could not be decoded after {n} frames ({e}).") from None
    finally:
        c.close()


def read_frames(path: str | Path, max_frames: int | None = None, stride: int = 1) -> torch.Tensor:
    """(K, H, W, 3) float32 frames in [0, 1]."""
    frames = list(iter_frames(path, max_frames, stride))
    if not frames:
        raise MagicPropError(f"video {str(path)!r} has no decodable frames.")
    return torch.stack(frames)


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8 array."""
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_video(
    path: str | Path,
    frames: Iterable[torch.Tensor],
    fps: Fraction | float,
    audio_from: str | Path | None = None,
    audio_start: float = 0.0,
    crf: int = 18,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
) -> Path:
    """Encode (H, W, 3) frames in [0, 1] to an mp4 atomically; remux audio from `audio_from` if it has any.

    The audio is cut to the written video's duration, starting at `audio_start` seconds of the source. Audio that
    the mp4 container cannot hold as is gets transcoded to AAC. Frames may be a generator (streamed, flat memory).
    """
    import av

    fps = Fraction(fps).limit_denominator(100000)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise MagicPropError("no frames to write: the video would be empty.")
    out_path = Path(path)
    with atomic_path(out_path) as tmp, contextlib.ExitStack() as stack:
        out = stack.enter_context(av.open(str(tmp), mode="w", format="mp4"))
        height, width = first.shape[:2]
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, pix_fmt
        stream.options = {"crf": str(crf)}
        audio = None
        if audio_from is not None:  # every stream must exist before the first packet is muxed
            src = stack.enter_context(av.open(str(audio_from)))
            if src.streams.audio:
                audio = _AudioCopy(src, out)
        n = 0
        for frame in itertools.chain([first], it):
            for packet in stream.encode(av.VideoFrame.from_ndarray(to_uint8(frame), format="rgb24")):
                out.mux(packet)
            n += 1
        out.mux(stream.encode())
        if audio is not None:
            audio.copy(audio_start, n / float(fps))
    return out_path


class _AudioCopy:
    """The first audio stream of `src` copied into `out` (remuxed, or transcoded to AAC if mp4 cannot hold it)."""

    def __init__(self, src, out) -> None:
        import av

        self.src, self.out, self.a_in = src, out, src.streams.audio[0]
        try:
            self.a_out = out.add_stream_from_template(self.a_in)
            self.remux = True
        except (ValueError, av.error.FFmpegError):
            self.a_out = out.add_stream("aac", rate=self.a_in.codec_context.sample_rate)
            self.remux = False

    def copy(self, start: float, duration: float) -> None:
        end, tb, first_pts = start + duration, self.a_in.time_base, None
        for packet in self.src.demux(self.a_in):
            if packet.pts is None:
                continue
            t = float(packet.pts * tb)
            if t < start:
                continue
            if t >= end:
                break
            if self.remux:
                first_pts = packet.pts if first_pts is None else first_pts
                packet.pts -= first_pts
                packet.dts = packet.pts if packet.dts is None else packet.dts - first_pts
                packet.stream = self.a_out
                self.out.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    for p in self.a_out.encode(frame):
                        self.out.mux(p)
        if not self.remux:
            for p in self.a_out.encode(None):
                self.out.mux(p)
