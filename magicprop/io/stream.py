"""Outputs written while a run makes them: frames come in any order, each as soon as it is final.

A PNG folder takes each frame at once (one file each, written atomically: a reader never sees half a PNG). An mp4
is written in frame order through one open encoder: a frame that comes before its predecessors waits until they have
come (for flow propagation from a mid-clip keyframe: the frames before it, which its backward chain makes first from
the keyframe down to frame 0, wait until that chain ends). Waiting frames are kept as uint8 in an unnamed temporary
file (`TMPDIR`; the page cache, not the process, holds them), so memory stays flat however many wait. `close`
finishes what was written, also after an interrupt: the mp4 is finalised (encoder flushed, audio cut to the frames
written, the container closed) and renamed into place, so a stopped run leaves a valid, shorter video.
"""

from __future__ import annotations

import itertools
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import MagicPropError
from ..log import get_logger
from .fileio import atomic_path
from .video import (
    FRAME_DIGITS,
    Clock,
    VideoTags,
    _AudioCopy,
    check_frame_folder_out,
    is_frame_folder,
    to_uint8,
    video_stream,
    write_frames,
    write_png,
)

log = get_logger(__name__)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out, run = [], []
    for k in sorted(indices):
        if run and k == run[-1] + 1:
            run.append(k)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [k]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


class FolderStream:
    """Frames (H, W, 3) or (H, W) in [0, 1] written into a PNG folder as k:05d.png, in any order, or named after the
    source's frame numbers (`numbers[k]`: `video.frame_numbers`); with `alpha`, frame k gets `alpha(k)`, (H, W, 1),
    as its alpha channel (a keyed plate's matte, kept).

    The folder's earlier frames (it may hold only frames; `check_frame_folder_out`) are removed when it is opened,
    so a partial run never mixes with an earlier one."""

    def __init__(self, path: str | Path, what: str = "--out", numbers: list[int] | None = None,
                 alpha: Callable[[int], torch.Tensor] | None = None) -> None:
        self.path, self.what, self.numbers, self.alpha = Path(path), what, numbers, alpha
        check_frame_folder_out(self.path, what)
        self.path.mkdir(parents=True, exist_ok=True)
        for old in self.path.iterdir():
            old.unlink()
        self.written: list[int] = []

    def put(self, k: int, frame: torch.Tensor) -> None:
        number = k if self.numbers is None else self.numbers[k]
        frame = frame.float() if self.alpha is None else torch.cat([frame.float(), self.alpha(k).float()], -1)
        with atomic_path(self.path / f"{number:0{FRAME_DIGITS}d}.png") as tmp:
            write_png(tmp, frame)
        self.written.append(number)

    def close(self) -> None:
        pass

    def held(self) -> int:
        return 0

    def describe(self) -> str:
        named = " (named by the source's frame numbers)" if self.numbers is not None else ""
        return (f"{self.what} {os.fspath(self.path)} holds {len(self.written)} frames{named}: "
                f"{_ranges(self.written) or 'none'}")


class VideoStream:
    """Frames (H, W, 3) or (H, W) (grey, written as RGB) in [0, 1] encoded to an mp4 in frame order.

    Written into a hidden sibling file, renamed over `path` by `close` (a killed process leaves only that hidden
    file); nothing is renamed when no frame was encoded."""

    def __init__(self, path: str | Path, size: tuple[int, int], fps: Fraction | float, audio_from=None,
                 crf: int = 18, pix_fmt: str = "yuv420p", codec: str = "libx264", what: str = "--out",
                 tags: VideoTags | None = None, times: list[float] | None = None) -> None:
        import av

        self.path, self.what, self.fps = Path(path), what, Fraction(fps).limit_denominator(100000)
        self.tags, self.pix_fmt, self.clock = tags or VideoTags(), pix_fmt, Clock(self.fps, times)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.{secrets.token_hex(6)}.part"
        self._out = av.open(str(self._tmp), mode="w", format="mp4")
        self._src = None
        self._spill = None  # an unnamed temporary file, opened when the first frame has to wait
        try:
            self._stream = video_stream(self._out, size, self.fps, crf, pix_fmt, codec,
                                        f"{what} {os.fspath(self.path)!r}", self.tags, times is not None)
            self._audio = None
            if audio_from is not None and not is_frame_folder(audio_from):
                self._src = av.open(str(audio_from))  # every stream must exist before the first packet is muxed
                if self._src.streams.audio:
                    self._audio = _AudioCopy(self._src, self._out)
        except BaseException:
            self._abandon()
            raise
        self._waiting: dict[int, int] = {}  # frame index -> its offset in the spill file
        self._free: list[int] = []  # offsets of the spill file whose frame has been encoded
        self._end = 0
        self.next = 0  # frames 0 .. next-1 are encoded
        self._closed = False

    def put(self, k: int, frame: torch.Tensor) -> None:
        arr = to_uint8(frame.float())
        arr = np.ascontiguousarray(np.repeat(arr[..., None], 3, -1) if arr.ndim == 2 else arr)
        if k != self.next:
            self._wait(k, arr)
            return
        while True:
            for packet in self._stream.encode(self.clock.stamp(self.tags.frame(arr, self.pix_fmt), self.next)):
                self._out.mux(packet)
            self.next += 1
            if self.next not in self._waiting:
                return
            arr = self._read(self._waiting.pop(self.next))

    def _wait(self, k: int, arr: np.ndarray) -> None:
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="magicprop-waiting-")  # noqa: SIM115 (closed by close)
            self._shape = arr.shape
        offset = self._free.pop() if self._free else self._end
        self._end = max(self._end, offset + arr.nbytes)
        os.pwrite(self._spill.fileno(), memoryview(arr).cast("B"), offset)
        self._waiting[k] = offset

    def _read(self, offset: int) -> np.ndarray:
        n = int(np.prod(self._shape))
        self._free.append(offset)
        return np.frombuffer(bytearray(os.pread(self._spill.fileno(), n, offset)), dtype=np.uint8).reshape(self._shape)

    def held(self) -> int:
        """Frames made but waiting for an earlier one (lost if the run stops now)."""
        return len(self._waiting)

    def discard(self) -> None:
        """Stop without writing anything at `path` (what `close` would finish is removed)."""
        self._closed = True
        self._abandon()

    def _abandon(self) -> None:
        self._out.close()
        if self._spill is not None:
            self._spill.close()
        if self._src is not None:
            self._src.close()
        if self._tmp.exists():
            self._tmp.unlink()

    def close(self) -> None:
        """Finish the video with the frames encoded so far (0 .. next-1) and put it in place."""
        if self._closed:
            return
        self._closed = True
        if self.next == 0:
            self._abandon()
            return
        try:
            for packet in self._stream.encode():
                self._out.mux(packet)
            if self._audio is not None:
                self._audio.copy(self.tags.start, self.clock.duration(self.next))
            self._out.close()
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        finally:  # the file is in place (nothing left at _tmp) or the partial is removed; handles closed either way
            self._abandon()

    def describe(self) -> str:
        held = f" ({self.held()} later frames made but not yet in order are lost)" if self._waiting else ""
        kept = "; the file already there is left as it was" if self.path.exists() else ""
        frames = f"0-{self.next - 1}" if self.next > 1 else ("0" if self.next else f"none (no file written{kept})")
        return f"{self.what} {os.fspath(self.path)} holds {self.next} frames: {frames}{held}"


def open_stream(path: str | Path, size: tuple[int, int], fps: Fraction | float, what: str = "--out",
                numbers: list[int] | None = None, alpha: Callable[[int], torch.Tensor] | None = None, **video):
    """A FolderStream for a frame-folder path (see `is_frame_folder`; its frames named after `numbers`, with `alpha`),
    else a VideoStream (mp4: no alpha)."""
    if is_frame_folder(path):
        return FolderStream(path, what, numbers, alpha)
    return VideoStream(path, size, fps, what=what, **video)


def write_video(
    path: str | Path,
    frames: Iterable[torch.Tensor],
    fps: Fraction | float,
    audio_from: str | Path | None = None,
    crf: int = 18,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    tags: VideoTags | None = None,
    times: list[float] | None = None,
) -> Path:
    """Encode (H, W, 3) frames in [0, 1] to an mp4 atomically; remux audio from `audio_from` if it has any.

    `tags` are the source's (`probe(...).tags`: its colours, pixel aspect and start; default: a PNG folder's);
    `times` its frames' (`kept_times`; None: one per 1/fps). The audio is cut to the written video's duration from
    the source's first frame on (`VideoTags.start`), at the same times against the picture. Audio that the mp4
    container cannot hold as is gets transcoded to AAC. Frames may be a generator (streamed, flat memory). A
    frame-folder `path` (see `is_frame_folder`) gets 8-bit PNG frames instead (no audio; the codec arguments do not
    apply). The one mp4 writer is `VideoStream`, fed in order; an error leaves no file at `path`.
    """
    if is_frame_folder(path):
        return write_frames(path, frames)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise MagicPropError("no frames to write: the video would be empty.")
    stream = VideoStream(path, tuple(first.shape[:2]), fps, audio_from, crf, pix_fmt, codec, what="video", tags=tags,
                         times=times)
    try:
        for k, frame in enumerate(itertools.chain([first], it)):
            stream.put(k, frame)
    except BaseException:
        stream.discard()
        raise
    stream.close()
    return Path(path)


class Outputs:
    """A run's output streams (`open_stream`), each frame put into all of them, closed together when the run ends.

    Used as a context manager: a run that stops early (Ctrl-C, an error) closes them too, leaving valid partial
    outputs, and one warning says how many of the run's frames were made and what each output holds."""

    def __init__(self, job: str, total: int) -> None:
        self.job, self.total = job, total
        self.streams: list = []
        self.made: list[int] = []

    def open(self, path: str | Path, size: tuple[int, int], fps: Fraction | float, what: str = "--out",
             numbers: list[int] | None = None, alpha: Callable[[int], torch.Tensor] | None = None, **video):
        self.streams.append(open_stream(path, size, fps, what, numbers, alpha, **video))
        return self.streams[-1]

    def put(self, k: int, *images: torch.Tensor) -> None:
        """Frame k: one image per stream, in the order they were opened (images past the last stream opened, outputs
        not asked for, are dropped)."""
        for stream, image in zip(self.streams, images):
            stream.put(k, image)
        self.made.append(k)  # (a frame whose write was stopped is not counted as made)

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind, error, trace) -> None:
        for stream in self.streams:
            stream.close()
        if kind is not None:
            log.warning("%s stopped (%s) after making %d of %d frames; %s.", self.job, kind.__name__, len(self.made),
                        self.total, "; ".join(s.describe() for s in self.streams) or "nothing was written")
