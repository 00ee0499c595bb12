"""Video in, the edit carried along the video's optical flow out, no model: the `python -m magicprop warp` job.

EbSynth-style propagation without weights: the engine (magicprop.motion.engine) estimates the clip's flow once and
flow propagation (magicprop.motion.propagate) carries the edited reference(s) to every frame. Video in and out may be
a video file or a folder of numbered PNG frames (magicprop.io.video).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from ..composite import over_frames, premultiplied
from ..errors import MagicPropError
from ..io.fileio import not_a_file
from ..io.images import check_reference_count, load_image, resize_width
from ..io.spool import FrameSpool
from ..io.stream import Outputs
from ..io.video import (
    check_out_path,
    check_outputs_apart,
    has_alpha,
    is_frame_folder,
    iter_frames,
    kept_times,
    list_frames,
    probe,
    read_png,
    selected_numbers,
    to_uint8,
    warn_missing,
)
from ..log import get_logger
from .options import FlowOptions

log = get_logger(__name__)


@dataclass(kw_only=True)
class WarpJob(FlowOptions):
    """Inputs of one flow-propagation run (the CLI's arguments)."""

    video: str | Path
    """A video file, or a folder of numbered PNG frames."""
    reference: list[Path]
    """The edited frame(s), at the video's size; several for keyframes."""
    reference_index: list[int]
    """Index of each edited frame among the selected frames (after stride)."""
    out: str | Path
    """An mp4 (with the source audio), or a folder for PNG frames (an existing folder, or a path ending in '/')."""
    strategy: str | None = None
    """A name in magicprop.motion.propagate.STRATEGIES; None = its default."""
    carry: str | None = None
    """A name in magicprop.motion.propagate.CARRIES; None = its default."""
    fill: str | None = None
    """A name in magicprop.motion.propagate.FILLS (what the flow cannot see gets); None = its default."""
    keyframe_window: int = 8
    keyframes_per_frame: int | None = None
    """With several keyframes, what each frame is made from (magicprop.motion.propagate.KEYFRAMES_PER_FRAME); None =
    its default."""
    mask: Path | None = None
    """Where the edit applies: one image for every frame, or a folder with one per source frame."""
    mask_out: str | Path | None = None
    """Where the masks of filled pixels (not carried by flow) go: an mp4 or a PNG folder."""
    fps: float | None = None
    """Frame rate of a PNG-folder video (which does not record one)."""


def _strategy(job: WarpJob) -> str:
    from ..motion.propagate import (
        CARRIES,
        DEFAULT_CARRY,
        DEFAULT_FILL,
        DEFAULT_KEYFRAMES_PER_FRAME,
        DEFAULT_STRATEGY,
        FILLS,
        KEYFRAMES_PER_FRAME,
        STRATEGIES,
    )

    name = DEFAULT_STRATEGY if job.strategy is None else job.strategy
    if name not in STRATEGIES:
        raise MagicPropError(f"--strategy {name!r}: expected one of {sorted(STRATEGIES)} (default {DEFAULT_STRATEGY}).")
    if job.carry is not None and job.carry not in CARRIES:
        raise MagicPropError(f"--carry {job.carry!r}: expected one of {list(CARRIES)} (default {DEFAULT_CARRY}).")
    if job.fill is not None and job.fill not in FILLS:
        raise MagicPropError(f"--fill {job.fill!r}: expected one of {list(FILLS)} (default {DEFAULT_FILL}).")
    if job.keyframes_per_frame is not None and job.keyframes_per_frame not in KEYFRAMES_PER_FRAME:
        raise MagicPropError(f"--keyframes-per-frame {job.keyframes_per_frame!r}: expected one of "
                             f"{list(KEYFRAMES_PER_FRAME)} (default {DEFAULT_KEYFRAMES_PER_FRAME}).")
    return name


def _check_paths(job: WarpJob) -> None:
    video = Path(job.video)
    if is_frame_folder(job.video):
        warn_missing(list_frames(job.video, "--video"), "--video")
    elif not video.is_file():
        raise MagicPropError(f"--video {str(video)!r} does not exist; pass a video file or a folder of PNG frames.")
    check_reference_count(len(job.reference), len(job.reference_index))
    for p in job.reference:
        if not Path(p).is_file():
            raise MagicPropError(f"--reference {str(p)!r} {not_a_file(p)}; pass the edited frame as an image file.")
    if job.mask is not None and not Path(job.mask).exists():
        raise MagicPropError(f"--mask {str(job.mask)!r} does not exist; pass a mask image or a folder of masks.")
    job.check_video()
    for name, path in (("--out", job.out), ("--mask-out", job.mask_out)):
        if path is not None:
            check_out_path(path, name)
    check_outputs_apart([("--out", job.out), ("--mask-out", job.mask_out)],
                        [("--video", job.video), ("--mask", job.mask), *(("--reference", p) for p in job.reference)])


def _check_keyframes(job: WarpJob, count: int) -> None:
    """--reference-index against the `count` selected frames (its messages naming the option) and --keyframe-window."""
    from ..keyframes import check_keyframes, keyframe_plan

    check_keyframes(job.reference_index, count, name="--reference-index")
    keyframe_plan(list(job.reference_index), count, job.keyframe_window)


def selected_count(job: WarpJob, container_frames: int | None) -> int | None:
    """How many frames the job selects, when the container says how many it has."""
    if container_frames is None:
        return None
    n = -(-container_frames // job.stride)
    return n if job.max_frames is None else min(n, job.max_frames)


def _load_references(job: WarpJob, size: tuple[int, int]) -> torch.Tensor:
    """(N, H', W', 4): the edited references at the output size, RGB premultiplied by alpha, and alpha (1 where the
    file has none: a paint layer's transparent pixels are laid over their frame by `composite.over_frames`).
    Premultiplied before --width resamples them, so the colour of transparent pixels does not bleed into the layer's
    edges."""
    images = []
    for path in job.reference:
        image = load_image(path, "--reference", alpha=True)
        if image.shape[1:3] != size:
            raise MagicPropError(
                f"--reference {Path(path).name} is {image.shape[2]}x{image.shape[1]} but the video is {size[1]}x"
                f"{size[0]}: the edited reference must be a frame of this video at the video's size (edit the frame "
                "exported from the video, before --width)."
            )
        images.append(premultiplied(image))
    # at 8 bits, like the frames and the output: the edited frames come out exactly as given (after --width)
    return resize_width(torch.cat(images), job.width).mul(255).round().div(255)


def _mask(image: torch.Tensor, width: int | None) -> torch.Tensor:
    """(N, H, W, 4) RGB and alpha -> (N, H', W') at `width`: a mask drawn in any colour on black, times its alpha (a
    matte exported as white with the mask in its alpha gives that alpha; an opaque mask its colour)."""
    if bool((image[..., 3] >= 1).all()):
        return resize_width(image[..., :3], width).amax(-1).clamp(0, 1)
    return resize_width((image[..., :3].amax(-1) * image[..., 3])[..., None], width)[..., 0].clamp(0, 1)


class MaskFolder:
    """A --mask folder as (K, H', W') float masks at the output size, read one at a time when indexed (what stacking
    them all would give, without holding the clip's masks: 2.2 GB as float for 600 frames of 720p)."""

    ndim = 3

    def __init__(self, files: list[Path], width: int | None, size: tuple[int, int]) -> None:
        self.files, self.width = list(files), width
        self.shape = (len(self.files), *size)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return MaskFolder(self.files[k], self.width, self.shape[1:])
        return _mask(read_png(self.files[k], alpha=True)[None], self.width)[0]


def _load_mask(job: WarpJob, size: tuple[int, int], count: int | None) -> torch.Tensor | MaskFolder | None:
    """(1 or K, H', W') float mask at the output size (a folder: a MaskFolder, each mask checked here), or None."""
    if job.mask is None:
        return None
    what = "--mask"
    if Path(job.mask).is_dir():
        files = list_frames(job.mask, what)
        warn_missing(files, what)
        files = files[:: job.stride]
        if count is not None and len(files) < count:
            raise MagicPropError(f"--mask folder has {len(files)} masks for the {count} selected frames (stride "
                                 f"{job.stride}): expected one mask per source frame, in name order.")
        files = files[:count] if count is not None else files
        for f in files:  # every size checked before any work; read again, one at a time, when used
            m = read_png(f)
            if m.shape[:2] != size:
                raise MagicPropError(f"--mask {f.name} is {m.shape[1]}x{m.shape[0]} but the video is {size[1]}x"
                                     f"{size[0]}: expected masks at the video's size.")
        out = resize_width(torch.zeros(1, *size, 1), job.width).shape[1:3]
        return MaskFolder(files, job.width, tuple(out))
    image = load_image(job.mask, what, alpha=True)
    if image.shape[1:3] != size:
        raise MagicPropError(f"--mask {Path(job.mask).name} is {image.shape[2]}x{image.shape[1]} but the video is "
                             f"{size[1]}x{size[0]}: "
                             "expected a mask at the video's size (white = edit, black = keep the source).")
    return _mask(image, job.width)


def check_job(job: WarpJob):
    """Every input error the job can see, before any frame is decoded or any flow estimated.

    Returns (engine, strategy, info, references, mask): the flow engine (its checks done: cv2 importable, estimator
    known, RAFT weights present), the strategy's name, the video's info, the references at the output size and the
    mask (or None).
    """
    from ..motion.engine import FlowEngine, check_device

    _check_paths(job)
    check_device(job.device, "--device")
    engine = FlowEngine(job.flow_settings())
    strategy = _strategy(job)
    info = probe(job.video, job.fps)
    size = (info.height, info.width)
    references = _load_references(job, size)
    engine.check_frames(*references.shape[1:3])
    expected = selected_count(job, info.frames)
    if expected is not None:
        _check_keyframes(job, expected)
    mask = _load_mask(job, size, expected)
    return engine, strategy, info, references, mask


def read_selected(job, count: int | None = None, times: list[float] | None = None) -> FrameSpool:
    """(K, H', W', 3) uint8 frames of `job.video` the job works on: every stride-th, at most max_frames (and at most
    `count`), resized to `width` (the `VideoOptions` fields); `times` gets their times (`iter_frames`).

    Decoded once into a `FrameSpool` (a temporary file read a frame at a time: flat memory whatever the clip's length;
    8 bits, like the output); close it when done."""
    limits = [n for n in (job.max_frames, count) if n is not None]
    frames = (to_uint8(resize_width(f[None], job.width)[0])
              for f in iter_frames(job.video, min(limits) if limits else None, job.stride, times))
    return FrameSpool(frames, f"--video {str(job.video)!r}")


def source_alpha(job, count: int):
    """The matte of each of the `count` selected frames of a frame-folder --video whose PNGs hold an alpha channel
    (a keyed plate), at --width, for a PNG-folder --out to keep: a function of the frame's index; None otherwise (an
    mp4 keeps no alpha: said once)."""
    if not is_frame_folder(job.video):
        return None
    files = list_frames(job.video)[:: job.stride][:count]
    if not has_alpha(files[0]):
        return None
    if not is_frame_folder(job.out):
        log.info("--video %s holds an alpha channel, which an mp4 --out cannot keep: pass a folder (a path ending in "
                 "'/') to get PNG frames with it.", os.fspath(job.video))
        return None
    return lambda k: resize_width(read_png(files[k], "--video frame", alpha=True)[None, ..., 3:], job.width)[0]


def run_warp(job: WarpJob, progress: bool = True) -> Path:
    """Run the job; returns the written video's path (mp4 or PNG folder). Inputs are checked before any work.

    Streamed: the selected frames are spooled to a temporary file (`read_selected`) and each output frame is written
    as soon as it is final (`flow_propagate`'s `on_frame`): a PNG folder at once, an mp4 in frame order (the frames
    before a mid-clip keyframe, made by its backward chain first, wait as uint8 in a temporary file until that chain
    reaches frame 0: `io.stream.VideoStream`). What memory holds does not grow with the clip: the chains' carried
    state, a few flow pairs, and the blend window between two keyframes (at most --keyframe-window frames) or, with
    two keyframes per frame, the first chain's part of a gap's frames in a temporary file. An
    interrupted run (Ctrl-C, an error) still closes its outputs, a valid partial PNG folder or mp4, and logs which
    frames they hold.
    """
    from tqdm.auto import tqdm

    from ..motion.propagate import DEFAULT_CARRY, DEFAULT_FILL, DEFAULT_KEYFRAMES_PER_FRAME, flow_propagate

    engine, strategy, info, references, mask = check_job(job)
    times: list[float] = []
    with read_selected(job, times=times) as frames:
        k = frames.shape[0]
        indices = list(job.reference_index)
        _check_keyframes(job, k)  # for containers that do not say how many frames they hold
        references = over_frames(references, frames, indices).mul(255).round().div(255)  # 8 bits, as the frames
        if mask is not None and mask.shape[0] > 1:
            if mask.shape[0] < k:
                raise MagicPropError(f"--mask folder has {mask.shape[0]} masks for the {k} selected frames: expected "
                                     "one mask per source frame, in name order.")
            mask = mask[:k]
        fps = Fraction(info.fps) / job.stride
        audio = job.video if job.audio and info.has_audio else None
        size = tuple(frames.shape[1:3])
        codec = {"crf": job.crf, "pix_fmt": job.pix_fmt, "tags": info.tags,
                 "times": kept_times(times, fps, f"--video {str(job.video)!r}"),
                 "numbers": selected_numbers(job.video, job.stride, k)}
        with Outputs("warp", k) as outputs:  # closed also when the run stops: valid partial outputs, logged
            outputs.open(job.out, size, fps, "--out", audio_from=audio, alpha=source_alpha(job, k), **codec)
            if job.mask_out is not None:
                outputs.open(job.mask_out, size, fps, "--mask-out", **codec)
            # one step per frame each chain carries (with two keyframes per frame, two a frame)
            with tqdm(total=k, desc=f"flow + propagate ({job.flow}, {strategy})", unit="step",
                      disable=not progress) as bar:

                def step(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                flow_propagate(frames, references, indices, engine, strategy=strategy, window=job.keyframe_window,
                               mask=mask, progress=step, carry=job.carry or DEFAULT_CARRY,
                               fill=job.fill or DEFAULT_FILL, dtype=torch.float16, on_frame=outputs.put,
                               device=job.device, keyframes_per_frame=job.keyframes_per_frame or
                               DEFAULT_KEYFRAMES_PER_FRAME)
    return Path(job.out)
