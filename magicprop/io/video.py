"""Video with PyAV: decode frames as players show them, and what an mp4 made from a source keeps of it (its colour
tags, pixel aspect, frame times and audio: `VideoTags`, `kept_times`, `_AudioCopy`; written by `stream.write_video`
and `stream.VideoStream`).

A video may also be a folder of numbered PNG frames (what compositing tools and EbSynth exchange; lossless): a path
that is an existing folder, or that ends in a slash, is read and written as one. Frames are read in natural name
order (frame2 before frame10), 8-bit or 16-bit; written atomically as zero-padded names (00000.png ...).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import MagicPropError
from ..log import get_logger

log = get_logger(__name__)


MATRICES = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
"""FFmpeg's YUV matrices (AVColorSpace numbers) that PyAV's converter (swscale) writes, by its names."""


@dataclass(frozen=True)
class VideoTags:
    """How a video's pictures are meant to be shown, copied to the videos made from it so that players show the
    result as they show the source: the YUV matrix, range, primaries and transfer (FFmpeg's AVColorSpace,
    AVColorRange, AVColorPrimaries, AVColorTransferCharacteristic numbers; 2 / 0 = not said), the pixel aspect
    (anamorphic footage) and the time of the first frame (the audio is placed against it).

    The default is what a PNG folder (sRGB) becomes: BT.709, limited range, square pixels, starting at 0; a source
    stored as RGB (PNG in a mov, x264's RGB mode) or in a matrix that is not written (`MATRICES`) becomes the same
    (`of`)."""

    colorspace: int = 1
    color_range: int = 1
    primaries: int = 1
    trc: int = 1
    sample_aspect: Fraction | None = None
    start: float = 0.0

    @classmethod
    def of(cls, frame, sample_aspect: Fraction | None) -> VideoTags:
        """The tags of a source whose first decoded frame is `frame`."""
        start = float(frame.time or 0.0)
        if frame.colorspace != 2 and frame.colorspace not in MATRICES:  # RGB, or a matrix not written: as a PNG's
            return cls(sample_aspect=sample_aspect, start=start)
        return cls(frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc, sample_aspect, start)

    def frame(self, rgb: np.ndarray, pix_fmt: str):
        """An (H, W, 3) uint8 RGB picture as a video frame in `pix_fmt`, converted by this matrix and range (the
        inverse of how the source was decoded: an untagged source is decoded and written with FFmpeg's default) and
        tagged with them."""
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format=pix_fmt, dst_colorspace=MATRICES.get(self.colorspace), dst_color_range=self.color_range or None)
        frame.colorspace, frame.color_range = self.colorspace, self.color_range
        return frame

    def tag(self, stream) -> None:
        """Tag an output video stream (before its encoder opens) with these."""
        cc = stream.codec_context
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = (
            self.colorspace, self.color_range, self.primaries, self.trc)
        if self.sample_aspect is not None:
            cc.sample_aspect_ratio = self.sample_aspect


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int | None
    """Frame count from the container (None when it does not say)."""
    has_audio: bool
    tags: VideoTags = VideoTags()


FRAME_SUFFIXES = (".png",)
FRAME_DIGITS = 5
"""Zero-padded width of written frame names; longer clips keep counting (natural order still sorts them)."""
DEFAULT_FOLDER_FPS = Fraction(25)
_FRAME_NAME = re.compile(r"^\d+\.png$")


def is_frame_folder(path: str | Path) -> bool:
    """True when `path` names a folder of frames: an existing folder, or a path ending in a slash."""
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: str | Path, what: str = "video") -> list[Path]:
    """The PNG frames of a folder in natural name order (frame2.png before frame10.png)."""
    p = Path(folder)
    if not p.is_dir():
        raise MagicPropError(f"{what} {os.fspath(folder)!r} is not an existing folder; pass a folder of numbered PNG "
                             "frames (or a video file).")
    files = sorted((f for f in p.iterdir() if f.suffix.lower() in FRAME_SUFFIXES and not f.name.startswith(".")),
                   key=lambda f: _natural_key(f.name))
    if not files:
        others = sorted({f.suffix.lower() for f in p.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".tif",
                                                                                         ".tiff", ".exr", ".dpx")})
        found = f" (it holds {', '.join(others)} files: export the frames as PNG)" if others else ""
        raise MagicPropError(f"{what} {os.fspath(folder)!r} has no PNG frames{found}; expected numbered PNG files "
                             "(00000.png, 00001.png ...).")
    return files


def _sequence(files: list[Path]) -> tuple[str, int, str, list[int]] | None:
    """(head, digits, tail, numbers) of files that differ only in their last number (shot_1001.png, shot_1002.png
    ...: a numbered sequence), in their order; None for names of other shapes or a number given twice."""
    parts = [re.fullmatch(r"(.*?)(\d+)(\.\w+)", f.name) for f in files]
    if not parts or None in parts or len({(m[1], m[3]) for m in parts}) != 1:
        return None
    numbers = [int(m[2]) for m in parts]
    if len(set(numbers)) != len(numbers):
        return None
    return parts[0][1], len(parts[0][2]), parts[0][3], numbers


def frame_numbers(files: list[Path]) -> list[int] | None:
    """The numbers of a numbered sequence's frames (`_sequence`): what frames written from them are named after, so a
    compositor's plate.1001.png ... comes back as 01001.png ... (None: not a numbered sequence)."""
    sequence = _sequence(files)
    return None if sequence is None else sequence[3]


def selected_numbers(path: str | Path, stride: int, count: int) -> list[int] | None:
    """`frame_numbers` of the `count` frames a job takes from a frame folder (every stride-th); None for a video file
    or a folder that is not a numbered sequence."""
    numbers = frame_numbers(list_frames(path)) if is_frame_folder(path) else None
    return None if numbers is None else numbers[::stride][:count]


def missing_frames(files: list[Path], shown: int = 5) -> tuple[int, list[str]]:
    """How many frames a numbered sequence (`_sequence`: shot_1001.png, shot_1002.png ...) lacks between its first
    and last, and the names of the first `shown`: a gap shifts every later frame's index, so callers warn of it.
    (0, []) for names of other shapes and for sequences numbered in steps of more than 1 (every other frame,
    timestamps), whose gaps are deliberate."""
    sequence = _sequence(files)
    if sequence is None or len(files) < 2:
        return 0, []
    head, width, tail, numbers = sequence
    numbers = sorted(numbers)
    steps = [b - a for a, b in zip(numbers, numbers[1:])]
    if min(steps) != 1:
        return 0, []
    names = []
    for a, b in zip(numbers, numbers[1:]):
        names += [f"{head}{n:0{width}d}{tail}" for n in range(a + 1, min(b, a + 1 + shown - len(names)))]
    return sum(s - 1 for s in steps), names


def warn_missing(files: list[Path], what: str) -> None:
    """One warning when a numbered frame sequence has gaps (`missing_frames`): every later frame's index moves."""
    count, names = missing_frames(files)
    if count:
        log.warning("%s lacks %d frame(s) of its numbered sequence (%s%s): frames are taken in name order, so every "
                    "frame after a gap moves earlier by the frames missing before it (and --reference-index counts "
                    "files from the first).", what, count, ", ".join(names), " ..." if count > len(names) else "")


def read_png(path: str | Path, what: str = "frame", alpha: bool = False) -> torch.Tensor:
    """One PNG (8 or 16 bits, grey, RGB or RGBA) -> (H, W, 3) float32 in [0, 1], decoded by FFmpeg's PNG decoder;
    with `alpha` (H, W, 4), the fourth channel its alpha (1 where the PNG has none). The one PNG reader: frame
    folders, masks and single images (`frames.load_image`) keep their bit depth alike."""
    import av

    try:
        with av.open(str(path)) as c:
            frame = next(c.decode(video=0))
    except (av.error.FFmpegError, StopIteration) as e:
        raise MagicPropError(f"{what} {str(path)!r} is not a readable PNG ({e}); re-export it.") from None
    deep = frame.format.name.startswith(("rgb48", "rgba64", "gray16", "ya16"))
    if alpha:
        fmt, top = ("rgba64le", 65535.0) if deep else ("rgba", 255.0)
    else:
        fmt, top = ("rgb48le", 65535.0) if deep else ("rgb24", 255.0)
    return torch.from_numpy(frame.to_ndarray(format=fmt).astype(np.float32) / top)


ALPHA_FORMATS = ("rgba", "rgba64be", "rgba64le", "ya8", "ya16be", "ya16le")
"""FFmpeg's names of the PNG pixel formats that hold an alpha channel."""


def has_alpha(path: str | Path) -> bool:
    """Whether a PNG holds an alpha channel (a keyed plate's matte): an RGBA or grey-and-alpha PNG, or a palette PNG
    with a transparent colour."""
    import av

    try:
        with av.open(str(path)) as c:
            fmt = c.streams.video[0].codec_context.pix_fmt
    except av.error.FFmpegError:
        return False
    return fmt in ALPHA_FORMATS or (fmt == "pal8" and bool((read_png(path, alpha=True)[..., 3] < 1).any()))


def write_png(path: str | Path, image: torch.Tensor, bits: int = 8) -> None:
    """(H, W, 4), (H, W, 3) or (H, W) float in [0, 1] -> an RGBA (straight alpha), RGB or grey PNG of 8 or 16 bits
    (rounded, not truncated)."""
    import av

    grey, rgba = image.ndim == 2, image.ndim == 3 and image.shape[-1] == 4
    if bits == 8:
        fmt = "gray" if grey else "rgba" if rgba else "rgb24"
        arr, out_fmt = to_uint8(image), fmt
    elif bits == 16:
        arr = (image.clamp(0, 1) * 65535).round().to(torch.int32).cpu().numpy().astype(np.uint16)
        fmt, out_fmt = (("gray16le", "gray16be") if grey else ("rgba64le", "rgba64be") if rgba
                        else ("rgb48le", "rgb48be"))
    else:
        raise MagicPropError(f"PNG bits={bits}: expected 8 or 16.")
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = arr.shape[1], arr.shape[0], out_fmt
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt)) + codec.encode(None)
    Path(path).write_bytes(b"".join(bytes(p) for p in packets))


def check_frame_folder_out(path: str | Path, what: str = "--out") -> None:
    """Refuse, before any work, an output folder that holds files other than frames this module writes."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MagicPropError(f"{what} {os.fspath(path)!r} is a file; pass a folder path ending in '/' for PNG frames.")
    if p.is_dir():
        other = [f.name for f in p.iterdir() if not _FRAME_NAME.match(f.name)]
        if other:
            raise MagicPropError(
                f"{what} {os.fspath(path)!r} holds other files ({', '.join(sorted(other)[:3])}); frames would replace "
                "the folder: pass a new or empty folder, or one holding only frames written here."
            )


def check_outputs_apart(outputs: Iterable[tuple[str, str | Path | None]],
                        inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """Refuse, before any work, an output that is one of the inputs or a folder holding one: writing it would remove
    or overwrite the input (a PNG output folder is cleared when it is opened). outputs, inputs: (option name, path)
    pairs (path None: not given); two outputs may neither be one path nor hold one another. The same file under
    another name (a case-insensitive file system, a link) counts as the same."""

    def same(a: Path, b: Path) -> bool:
        return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))

    seen = [(name, Path(p).resolve(), False) for name, p in inputs if p is not None]  # (name, path, an output)
    for name, p in outputs:
        if p is None:
            continue
        out = Path(p).resolve()
        for other, path, output in seen:
            if same(path, out):
                held = "is also"
            elif out in path.parents:
                held = "holds"
            elif output and path in out.parents:
                held = "lies inside"
            else:
                continue
            raise MagicPropError(f"{name} {os.fspath(p)!r} {held} {other} {os.fspath(path)!r}: writing there would "
                                 f"remove or overwrite it; give {name} a path of its own.")
        seen.append((name, out, True))


VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")
"""What an output file may be named: the mp4 container is written (H.264)."""


def check_out_path(path: str | Path, what: str = "--out") -> None:
    """Refuse, before any work, an output that names neither a frame folder this module may write
    (`check_frame_folder_out`) nor an mp4 file: an image name or a printf pattern (frame_%04d.png) would become one
    mp4 file under that name, or one under a file (a path that goes through an existing file)."""
    p = Path(path)
    above = next((a for a in p.absolute().parents if a.exists()), None)
    if above is not None and not above.is_dir():
        raise MagicPropError(f"{what} {os.fspath(path)!r} lies under {os.fspath(above)!r}, which is a file, not a "
                             "folder: pass a path in a folder (missing folders are made).")
    if is_frame_folder(path):
        check_frame_folder_out(path, what)
        return
    if p.suffix.lower() not in VIDEO_SUFFIXES or "%" in p.name:
        raise MagicPropError(f"{what} {os.fspath(path)!r} is not an mp4 name: pass a file ending in "
                             f"{' / '.join(VIDEO_SUFFIXES)}, or a folder path ending in '/' for PNG frames "
                             "(00000.png, 00001.png ...).")


def write_frames(path: str | Path, frames: Iterable[torch.Tensor], bits: int = 8) -> Path:
    """Write (H, W, 3) or (H, W) frames in [0, 1] as 00000.png, 00001.png ... into the folder `path`, atomically.

    The frames go into a hidden sibling folder first; only a complete set replaces `path` (an existing folder of
    frames written here is swapped out as a whole, so no stale frame of a longer earlier run stays behind).
    Frames may be a generator (streamed, flat memory).
    """
    target = Path(path)
    check_frame_folder_out(target, "frame folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
    tmp.mkdir()
    old = None
    try:
        n = 0
        for frame in frames:
            write_png(tmp / f"{n:0{FRAME_DIGITS}d}.png", frame, bits)
            n += 1
        if n == 0:
            raise MagicPropError("no frames to write: the frame folder would be empty.")
        if target.exists():
            old = target.parent / f".{target.name}.{secrets.token_hex(6)}.old"
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None and old.exists():
            shutil.rmtree(old)
    return target


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


def _turns(frame) -> int:
    """Quarter turns counter-clockwise that show a decoded frame upright: its display rotation (a phone's portrait
    video is stored landscape with one), as players and FFmpeg's own tools apply it."""
    return round((getattr(frame, "rotation", 0) or 0) / 90) % 4


def _shown(frame) -> np.ndarray:
    """A decoded video frame as an (H, W, 3) uint8 array, turned as players show it (`_turns`)."""
    arr = frame.to_ndarray(format="rgb24")
    turns = _turns(frame)
    return np.ascontiguousarray(np.rot90(arr, turns)) if turns else arr


def frame_rate(fps: float | Fraction) -> Fraction:
    """A frame rate as given (e.g. --fps 29.97) as the exact rate it stands for: the NTSC rates n * 1000 / 1001
    (23.976, 29.97, 59.94 ...) when it is one to 0.01 frames per second, else the rate itself."""
    n = round(float(fps) * 1.001)
    if float(fps) != int(fps) and abs(float(fps) * 1.001 - n) < 0.01:
        return Fraction(n * 1000, 1001)
    return Fraction(fps).limit_denominator(100000)


def probe(path: str | Path, fps: float | Fraction | None = None) -> VideoInfo:
    """Size, frame rate, frame count and audio of a video file or frame folder.

    A file's size is the one players show: a display rotation of a quarter turn swaps its stored width and height
    (the frames are read turned: `iter_frames`).

    `fps` is the rate of a frame folder (which does not record one; default 25, with a notice); a video file's own
    rate is used for files (a given `fps` is then ignored, with a warning).
    """
    if is_frame_folder(path):
        files = list_frames(path)
        first = read_png(files[0])
        if fps is None:
            log.info("video %s is a frame folder without a frame rate; using %s fps (pass --fps to set it).",
                     os.fspath(path), DEFAULT_FOLDER_FPS)
        rate = DEFAULT_FOLDER_FPS if fps is None else frame_rate(fps)
        return VideoInfo(first.shape[1], first.shape[0], rate, len(files), False)
    with _open(path) as c:
        s = c.streams.video[0]
        rate = Fraction(s.average_rate or s.guessed_rate or 25)
        if fps is not None and frame_rate(fps) != rate:
            log.warning("--fps %s ignored: video %s is a file with its own frame rate (%s fps); --fps sets the rate "
                        "of a folder of PNG frames.", fps, os.fspath(path), f"{float(rate):g}")
        width, height, frames = s.codec_context.width, s.codec_context.height, s.frames or None
        has_audio, aspect = bool(c.streams.audio), s.codec_context.sample_aspect_ratio
        first = _first_frame(c, path)
    turns = 0 if first is None else _turns(first)
    stored = (width, height)
    if turns % 2:
        width, height = height, width
        aspect = 1 / aspect if aspect else aspect
    tags = VideoTags() if first is None else VideoTags.of(first, Fraction(aspect) if aspect and aspect != 1 else None)
    if turns:
        log.info("video %s is stored %dx%d and shown %dx%d (its display rotation, %d degrees counter-clockwise): its "
                 "frames are read and written upright, as players show them.", os.fspath(path), *stored, width,
                 height, 90 * turns)
    return VideoInfo(width, height, rate, frames, has_audio, tags)


def _first_frame(container, path):
    """The first frame of an open video (None when it has none to decode)."""
    import av

    try:
        return next(container.decode(video=0), None)
    except av.error.FFmpegError as e:
        raise MagicPropError(f"video {os.fspath(path)!r} cannot be decoded ({e}); is the file complete?") from None


def iter_frames(path: str | Path, max_frames: int | None = None, stride: int = 1,
                times: list[float] | None = None) -> Iterator[torch.Tensor]:
    """Yield (H, W, 3) float32 frames in [0, 1]: every `stride`-th frame, at most `max_frames` of them.

    A frame folder's frames must all have the first one's size. `times`, a list, gets each yielded frame's time in
    seconds of a video file (what `kept_times` reads)."""
    import av

    if stride < 1:
        raise MagicPropError(f"stride={stride}: expected 1 or more (take every stride-th frame).")
    if is_frame_folder(path):
        files = list_frames(path)[::stride][:max_frames]
        size = None
        for f in files:
            frame = read_png(f)
            size = size or frame.shape
            if frame.shape != size:
                raise MagicPropError(f"video frame {f.name} is {frame.shape[1]}x{frame.shape[0]} but the first frame "
                                     f"is {size[1]}x{size[0]}: every frame of a folder must have one size.")
            yield frame
        return
    c = _open(path)
    n = 0
    try:
        for i, frame in enumerate(c.decode(video=0)):
            if i % stride:
                continue
            if max_frames is not None and n >= max_frames:
                break
            if times is not None:
                times.append(float("nan") if frame.time is None else float(frame.time))
            yield torch.from_numpy(_shown(frame)).float() / 255.0
            n += 1
    except av.error.FFmpegError as e:
        raise MagicPropError(f"video {str(path)!r} could not be decoded after {n} frames ({e}).") from None
    finally:
        c.close()


VFR_TIME_BASE = Fraction(1, 90000)
"""Time base of a video written at its source's own frame times (`kept_times`): MPEG's 90 kHz clock."""


def kept_times(times: list[float], fps: Fraction | float, what: str = "video") -> list[float] | None:
    """The frame times (seconds from the first frame) a video made from these source frames keeps: None when they are
    evenly spaced at `fps` (within half a frame: written at that constant rate), else the source's own, so that a
    variable-frame-rate clip (what phones record) keeps each frame at its time against the audio."""
    if len(times) < 2 or any(t != t for t in times):  # (a frame without a time: NaN)
        return None
    step = 1 / float(fps)
    kept = [t - times[0] for t in times]
    if max(abs(t - k * step) for k, t in enumerate(kept)) <= step / 2:
        return None
    gaps = [b - a for a, b in zip(kept, kept[1:])]
    back = next((k + 1 for k, gap in enumerate(gaps) if gap < float(VFR_TIME_BASE)), None)
    if back is not None:  # clips joined end to end, a clock reset: no time line to keep
        log.warning("%s: its frame times go backwards (or repeat) at frame %d (%.3f s after %.3f s): written at a "
                    "constant %s fps instead.", what, back, times[back], times[back - 1], f"{float(fps):g}")
        return None
    log.info("%s has a variable frame rate (frames %.0f to %.0f ms apart): the result keeps each frame's time.", what,
             1000 * min(gaps), 1000 * max(gaps))
    return kept


@dataclass(frozen=True)
class Clock:
    """When a written video's frames play: one per 1/fps, or at `kept_times` (seconds from the first)."""

    fps: Fraction
    times: list[float] | None = None

    def stamp(self, frame, k: int):
        """Frame k of the output, its time set (left to the encoder's count at a constant rate)."""
        if self.times is not None:
            frame.pts, frame.time_base = round(Fraction(self.times[k]).limit_denominator(10**9) / VFR_TIME_BASE), \
                VFR_TIME_BASE
        return frame

    def duration(self, n: int) -> float:
        """Seconds that n frames play (the audio copied is cut to it)."""
        if self.times is None:
            return n / float(self.fps)
        return self.times[n] if n < len(self.times) else self.times[n - 1] + 1 / float(self.fps)


def read_frames(path: str | Path, max_frames: int | None = None, stride: int = 1) -> torch.Tensor:
    """(K, H, W, 3) float32 frames in [0, 1]."""
    frames = list(iter_frames(path, max_frames, stride))
    if not frames:
        raise MagicPropError(f"video {str(path)!r} has no decodable frames.")
    return torch.stack(frames)


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8 array."""
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


SUBSAMPLED = ("420", "422", "411", "410", "nv12", "nv21", "nv16")
"""Pixel formats whose chroma is subsampled across the width or height: x264 wants even sides for them."""


def video_stream(out, size: tuple[int, int], fps: Fraction, crf: int, pix_fmt: str, codec: str, where: str,
                 tags: VideoTags | None = None, timed: bool = False):
    """The video stream of the open mp4 `out` for (H, W) frames, tagged as `tags` says (`VideoTags`), its encoder
    opened now, so that a size, pixel format or rate it refuses is one line before any frame is made (an encoder
    opened at the first frame fails after the run's work: flow propagation from the last keyframe makes frame 0
    last). `timed`: frames come with their own times (`VFR_TIME_BASE`), not one per 1/fps."""
    import av

    h, w = size
    try:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width, stream.pix_fmt = h, w, pix_fmt
        stream.options = {"crf": str(crf)}
        (tags or VideoTags()).tag(stream)
        if timed:
            stream.codec_context.time_base = stream.time_base = VFR_TIME_BASE
        stream.codec_context.open()
    except (ValueError, av.error.FFmpegError) as e:
        if (h % 2 or w % 2) and any(tag in pix_fmt for tag in SUBSAMPLED):
            fix = (f"{pix_fmt} needs an even width and height: pass a --width that gives both, --pix-fmt yuv444p, "
                   "or a PNG folder (a path ending in '/')")
        else:
            fix = "use --pix-fmt yuv420p (players) or yuv444p and a --crf from 0 to 51"
        raise MagicPropError(f"{where}: the {codec} encoder refuses {w}x{h} frames as {pix_fmt} at crf {crf}, "
                             f"{float(fps):g} fps ({str(e).splitlines()[0]}); {fix}.") from None
    return stream


def check_encoder(pix_fmt: str, crf: int, codec: str = "libx264") -> None:
    """One line before any work when the mp4 encoder refuses `pix_fmt` or `crf` (an encoder opened in memory on a
    small even frame; the frames' own size is checked when the output opens, `video_stream`)."""
    import io

    import av

    out = av.open(io.BytesIO(), mode="w", format="mp4")
    try:
        video_stream(out, (64, 64), Fraction(25), crf, pix_fmt, codec, "--pix-fmt")
    except MagicPropError:
        raise MagicPropError(f"--pix-fmt {pix_fmt!r} with --crf {crf}: the {codec} encoder refuses them; use --pix-fmt "
                             "yuv420p (players) or yuv444p and a --crf from 0 to 51.") from None
    finally:
        out.close()


MP4_AUDIO = ("aac", "mp3", "ac3", "eac3", "alac")
"""Audio codecs copied into an mp4 as they are: those that players and browsers play from mp4 (others, a camera's
PCM or a webm's Opus, which FFmpeg would also put in an mp4, are transcoded to AAC)."""


class _AudioCopy:
    """The first audio stream of `src` copied into `out` (remuxed, or transcoded to AAC: `MP4_AUDIO`)."""

    def __init__(self, src, out) -> None:
        import av

        self.src, self.out, self.a_in = src, out, src.streams.audio[0]
        self.remux = self.a_in.codec_context.codec.canonical_name in MP4_AUDIO  # (mp3, not its decoder mp3float)
        if self.remux:
            try:
                self.a_out = out.add_stream_from_template(self.a_in)
            except (ValueError, av.error.FFmpegError):
                self.remux = False
        if not self.remux:
            self.a_out = out.add_stream("aac", rate=self.a_in.codec_context.sample_rate,
                                        layout=self.a_in.codec_context.layout.name)

    def copy(self, start: float, duration: float) -> None:
        """The audio from `start` (seconds of the source: the time of the video's first frame written) for
        `duration`, each packet at its own time against the picture (a track that begins later than the video
        begins as late in the copy; streams whose times do not begin at 0 keep their sync)."""
        from fractions import Fraction

        end, tb = start + duration, self.a_in.time_base
        shift = round(Fraction(start).limit_denominator(10**9) / tb)  # the start, in the audio's time base
        rate = self.a_out.codec_context.sample_rate
        for packet in self.src.demux(self.a_in):
            if packet.pts is None:
                continue
            t = float(packet.pts * tb)
            if t < start:
                continue
            if t >= end:
                break
            if self.remux:
                packet.pts -= shift
                packet.dts = packet.pts if packet.dts is None else packet.dts - shift
                packet.stream = self.a_out
                self.out.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = round((float(frame.time) - start) * rate) if frame.time is not None else None
                    frame.time_base = Fraction(1, rate)
                    for p in self.a_out.encode(frame):
                        self.out.mux(p)
        if not self.remux:
            for p in self.a_out.encode(None):
                self.out.mux(p)
