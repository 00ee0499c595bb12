"""The options the command line's jobs share (`propagate`, `warp`, `refine`), written once: the job fields (which
frames are read, how the result is written, where it runs, the flow) and their argparse options.

Each job is a dataclass built on ``VideoOptions`` (and ``FlowOptions`` where it estimates flow); the CLI adds the
options with the ``add_*`` functions below and gets the shared fields back with ``shared_fields``. A missing RAFT
weights file is refused naming the flag, before any frame is read.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..io.video import check_encoder
from ..motion.engine import DIS_PRESETS, ESTIMATORS, FlowSettings
from ..motion.raft import WEIGHTS_FILE

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str) -> str:
    """'auto' -> the current accelerator if torch has one, else 'cpu'."""
    if name != "auto":
        return name
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return acc.type if acc is not None else "cpu"


@dataclass(kw_only=True)
class VideoOptions:
    """Which frames of the source are read, how the result is written, and where the job runs."""

    max_frames: int | None = None
    stride: int = 1
    width: int | None = None
    audio: bool = True
    crf: int = 18
    pix_fmt: str = "yuv420p"
    device: str = "cpu"

    def check_video(self) -> None:
        """The frame selection and the mp4's settings, in one line each before any work (the encoder is opened in
        memory with them; the frames' size is checked when the output opens: `io.video.video_stream`)."""
        if self.max_frames is not None and self.max_frames < 1:
            raise MagicPropError(f"--frames {self.max_frames}: expected 1 or more frames.")
        if self.stride < 1:
            raise MagicPropError(f"--stride {self.stride}: expected 1 or more (take every stride-th frame).")
        if not 0 <= self.crf <= 51:
            raise MagicPropError(f"--crf {self.crf}: expected 0 (lossless) to 51 (smallest), x264's range; 18 is "
                                 "visually lossless.")
        fps = getattr(self, "fps", None)
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise MagicPropError(f"--fps {fps}: expected a frame rate above 0, e.g. 24 or 29.97.")
        check_encoder(self.pix_fmt, self.crf)


@dataclass(kw_only=True)
class FlowOptions(VideoOptions):
    """The flow a job estimates on the source frames (`warp`, `refine`)."""

    flow: str = "dis"
    flow_weights: Path | None = None
    """A `raft.WEIGHTS_FILE`; only for flow='raft'."""
    flow_preset: str = "medium"
    flow_size: int = 512
    """Long side of the working resolution of the flow (frames larger than it are downscaled for estimation)."""

    def flow_settings(self) -> FlowSettings:
        return flow_settings(self.flow, self.flow_preset, self.flow_weights, self.flow_size, self.device)


def flow_settings(flow: str, preset: str, weights: str | Path | None, size: int, device: str) -> FlowSettings:
    if flow == "raft" and (weights is None or not Path(weights).is_file()):
        given = "not given" if weights is None else f"{str(weights)!r} is not a file"
        raise MagicPropError(f"--flow-weights {given}: --flow raft needs a {WEIGHTS_FILE}; nothing is "
                             "downloaded. Or use --flow dis.")
    return FlowSettings(estimator=flow, preset=preset, weights=None if weights is None else str(weights),
                        work_size=size, device=device)


# -- argparse ---------------------------------------------------------------------------------------------------


def add_frame_options(p: argparse.ArgumentParser, *, png_folders: bool, note: str = "") -> None:
    """--frames, --stride, --width (`note` says where they must match), --fps for a PNG-folder --video."""
    also = f" ({note})" if note else ""
    p.add_argument("--frames", type=int, default=None, help=f"use at most this many frames{also}")
    p.add_argument("--stride", type=int, default=1, help=f"take every stride-th frame{also}")
    p.add_argument("--width", type=int, default=None,
                   help=f"resize frames to this width first (aspect kept{'; ' + note if note else ''})")
    if png_folders:
        p.add_argument("--fps", type=float, default=None, help="frame rate of a PNG-folder --video (default 25)")


def add_output_options(p: argparse.ArgumentParser) -> None:
    """--no-audio, --crf, --pix-fmt: how the mp4 is written."""
    p.add_argument("--no-audio", action="store_true", help="do not copy the source audio")
    p.add_argument("--crf", type=int, default=18, help="x264 quality of an mp4 --out (0 = lossless)")
    p.add_argument("--pix-fmt", default="yuv420p", help="yuv420p (players) or yuv444p")


def add_device_options(p: argparse.ArgumentParser, *, dtype: bool, device_help: str | None = None) -> None:
    """--device (and --dtype for the jobs that run a model)."""
    p.add_argument("--device", default="auto", help=device_help)
    if dtype:
        p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")


def add_flow_options(p, *, from_checkpoint: bool = False, note: str = "") -> None:
    """--flow, --flow-weights, --flow-preset, --flow-size. `from_checkpoint`: a flow-guided PropDPM's, whose
    defaults are the settings the checkpoint records (another estimator is refused)."""
    if from_checkpoint:
        p.add_argument("--flow", default=None, metavar="|".join(ESTIMATORS),
                       help="optical flow estimator (default: the one the checkpoint records; another is refused)")
        p.add_argument("--flow-weights", type=Path, help="RAFT weights file, when the checkpoint's estimator is raft")
        p.add_argument("--flow-preset", choices=DIS_PRESETS, default=None,
                       help="DIS preset (default: the checkpoint's)")
        p.add_argument("--flow-size", type=int, default=None, help="flow working size (default: the checkpoint's)")
        return
    # names are checked by the engine (one-line error listing the registry), not by argparse (usage dump)
    p.add_argument("--flow", default="dis", metavar="|".join(ESTIMATORS),
                   help="optical flow estimator" + (f" ({note})" if note else ""))
    p.add_argument("--flow-weights", type=Path,
                   help=f"a {WEIGHTS_FILE}, for --flow raft")
    p.add_argument("--flow-preset", choices=DIS_PRESETS, default="medium", help="DIS preset (faster to better)")
    p.add_argument("--flow-size", type=int, default=512, help="long side of the resolution flow is estimated at")


def shared_fields(args: argparse.Namespace) -> dict:
    """The job fields of the options above, from parsed arguments (only those the command has)."""
    out = {"max_frames": args.frames, "stride": args.stride, "width": args.width, "audio": not args.no_audio,
           "crf": args.crf, "pix_fmt": args.pix_fmt, "device": pick_device(args.device)}
    for name in ("fps", "flow", "flow_weights", "flow_preset", "flow_size"):
        if hasattr(args, name):
            out[name] = getattr(args, name)
    if hasattr(args, "dtype"):
        out["dtype"] = DTYPES[args.dtype]
    return out
