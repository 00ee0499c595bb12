"""`python -m magicprop prepare`: videos -> WebDataset tar shards of training clips with aligned depth.

Per video (MagicProp section 3.3.3): up to `frames` frames at `stride`, centre-cropped to a square and resized to
`size` (`frames.square`); depth from a local transformers model, aligned with the core's clip alignment. The shard
format (one sample per clip, index.json for random access, atomic writes) is `magicprop.train.shards`'s. An
interrupted run resumes where it stopped: finished videos are not read again (the clips made before the interrupt
are written as a last, smaller shard), videos skipped before are tried again (a file replaced since may be whole
now), and a video is known by its resolved path, however the folder is spelled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..io.images import square
from ..log import get_logger
from ..propdpm.depth import DepthEstimator, align_clip_depth
from .shards import INDEX_NAME, ShardWriter, encode_clip_npz, new_index, write_index

log = get_logger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mts", ".m2ts", ".3gp", ".mpg", ".mpeg",
                  ".wmv", ".flv", ".mxf")
"""What a folder of videos is searched for (besides folders of PNG frames)."""


@dataclass(frozen=True)
class PrepareConfig:
    frames: int = 30
    stride: int = 4
    size: int = 256
    min_frames: int = 8
    clips_per_shard: int = 64
    jpeg_quality: int = 95

    def check(self) -> None:
        """Each setting in one line before any work (a bad one would otherwise skip every video, for good)."""
        for name, value in (("--frames", self.frames), ("--stride", self.stride), ("--min-frames", self.min_frames),
                            ("--clips-per-shard", self.clips_per_shard)):
            if value < 1:
                raise MagicPropError(f"{name} {value}: expected 1 or more.")
        if self.size < 32 or self.size % 8:
            raise MagicPropError(f"--size {self.size}: expected a multiple of 8 of at least 32 (the VAE works on 8x8 "
                                 "blocks), e.g. 256.")
        if self.min_frames > self.frames:
            raise MagicPropError(f"--min-frames {self.min_frames} is more than --frames {self.frames} (the most a clip "
                                 "takes): every video would be skipped; lower --min-frames or raise --frames.")
        if not 1 <= self.jpeg_quality <= 100:
            raise MagicPropError(f"jpeg_quality {self.jpeg_quality}: expected 1 to 100.")


def list_videos(videos: str | Path) -> list[Path]:
    """A folder (searched recursively for video files and folders of PNG frames), one video file, or a text file
    with one path per line."""
    from ..io.video import FRAME_SUFFIXES

    p = Path(videos)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
        frame_folders = {f.parent for f in files if f.suffix.lower() in FRAME_SUFFIXES}
        return sorted([f for f in files if f.suffix.lower() in VIDEO_SUFFIXES] + list(frame_folders))
    if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
        return [p]
    if p.is_file():
        try:
            lines = [line.strip() for line in p.read_text().splitlines()]
        except UnicodeDecodeError:
            raise MagicPropError(f"--videos {str(p)!r} is neither a video ({', '.join(VIDEO_SUFFIXES)}) nor a text "
                                 "file listing videos; pass a folder of videos, one video, or such a list.") from None
        return [Path(line) if Path(line).is_absolute() else p.parent / line
                for line in lines if line and not line.startswith("#")]
    raise MagicPropError(f"--videos {str(p)!r} is neither a folder of videos nor a text file listing them.")


def clip_key(path: Path) -> str:
    return hashlib.sha1(_known(path).encode()).hexdigest()[:16]


def _known(video: str | Path) -> str:
    """Which video an index entry (the path as given) is: its resolved path (vids/a.mp4 and /data/vids/a.mp4 are one
    video)."""
    return str(Path(video).resolve())


def _retry_skipped(index: dict) -> None:
    """Forget the videos an earlier run skipped, so that this run tries them again (a truncated file may have been
    replaced, a listed path may exist now); the reasons are logged again if they still hold."""
    skipped = {_known(s["video"]) for s in index["skipped"]}
    if skipped:
        log.info("trying again %d video(s) skipped before", len(skipped))
        index["skipped"] = []
        index["processed"] = [v for v in index["processed"] if _known(v) not in skipped]


def prepare(videos: str | Path, depth_model: str | Path, out: str | Path, cfg: PrepareConfig = PrepareConfig(),
            device: str = "cpu", progress: bool = True) -> dict:
    """Prepare (or resume preparing) shards; returns the index (clips, shards, skipped videos with reasons)."""
    from tqdm.auto import tqdm

    from ..io.video import read_frames

    cfg.check()
    videos_found = list_videos(videos)
    if not videos_found:
        raise MagicPropError(f"--videos {str(videos)!r} holds no videos ({', '.join(VIDEO_SUFFIXES)}) and no folder of "
                             "PNG frames; pass the folder that holds them.")
    out = Path(out)
    index_path = out / INDEX_NAME
    settings = asdict(cfg)
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("config") != settings:
            raise MagicPropError(
                f"--out {str(out)!r} holds shards prepared with {index.get('config')}, not {settings}: use another "
                "folder or the same settings."
            )
        _retry_skipped(index)
    else:
        index = new_index(settings, Path(depth_model).name)
    done = {_known(v) for v in index["processed"]}
    todo = [v for v in videos_found if _known(v) not in done]
    estimator = DepthEstimator.from_folder(depth_model, device)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, index, cfg.clips_per_shard)
    try:
        for video in tqdm(todo, desc="prepare", unit="video", disable=not progress):
            try:
                frames = read_frames(video, cfg.frames, cfg.stride)
                if frames.shape[0] < cfg.min_frames:
                    raise MagicPropError(f"too short: {frames.shape[0]} frames at stride {cfg.stride} (at most "
                                         f"--frames {cfg.frames}), need {cfg.min_frames}")
            except MagicPropError as e:
                writer.skip(str(video), str(e))
                log.warning("skipped %s: %s", video, e)
                continue
            frames = square(frames, cfg.size)
            depth = align_clip_depth(estimator(frames))[:, 0]
            npz = encode_clip_npz((frames * 255).round().to(torch.uint8).numpy(), depth.numpy(), cfg.jpeg_quality)
            writer.add(clip_key(video), npz, {"video": str(video), "frames": int(frames.shape[0]),
                                               "stride": cfg.stride, "size": cfg.size})
    finally:  # also on Ctrl-C or SIGTERM: the clips made so far become a last, smaller shard
        writer.flush()
        write_index(out, index)
    log.info("prepared %d clips in %d shards; skipped %d videos", len(index["clips"]), len(index["shards"]),
             len(index["skipped"]))
    for s in index["skipped"]:
        log.info("  skipped %s: %s", s["video"], s["reason"])
    return index
