"""`python -m magicprop prepare`: videos -> WebDataset tar shards of training clips with aligned depth.

Per video (MagicProp section 3.3.3): up to `frames` frames at `stride`, centre-cropped to a square and resized to
`size` (`frames.square`); depth from a local transformers model, aligned with the core's clip alignment. The shard
format (one sample per clip, index.json for random access, atomic writes) is `magicprop.train.shards`'s. An
interrupted run resumes where it stopped: finished videos are not read again.
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

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclass(frozen=True)
class PrepareConfig:
    frames: int = 30
    stride: int = 4
    size: int = 256
    min_frames: int = 8
    clips_per_shard: int = 64
    jpeg_quality: int = 95


def list_videos(videos: str | Path) -> list[Path]:
    """A folder (searched recursively for video files) or a text file with one path per line."""
    p = Path(videos)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
    if p.is_file():
        base = p.parent
        lines = [line.strip() for line in p.read_text().splitlines()]
        return [Path(line) if Path(line).is_absolute() else base / line
                for line in lines if line and not line.startswith("#")]
    raise MagicPropError(f"--videos {str(p)!r} is neither a folder of videos nor a text file listing them.")


def clip_key(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]


def prepare(videos: str | Path, depth_model: str | Path, out: str | Path, cfg: PrepareConfig = PrepareConfig(),
            device: str = "cpu", progress: bool = True) -> dict:
    """Prepare (or resume preparing) shards; returns the index (clips, shards, skipped videos with reasons)."""
    from tqdm.auto import tqdm

    from ..io.video import read_frames

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_NAME
    settings = asdict(cfg)
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("config") != settings:
            raise MagicPropError(
                f"--out {str(out)!r} holds shards prepared with {index.get('config')}, not {settings}: use another "
                "folder or the same settings."
            )
    else:
        index = new_index(settings, Path(depth_model).name)
    done = set(index["processed"])
    todo = [v for v in list_videos(videos) if str(v) not in done]
    estimator = DepthEstimator.from_folder(depth_model, device)
    writer = ShardWriter(out, index, cfg.clips_per_shard)
    for video in tqdm(todo, desc="prepare", unit="video", disable=not progress):
        try:
            frames = read_frames(video, cfg.frames, cfg.stride)
            if frames.shape[0] < cfg.min_frames:
                raise MagicPropError(
                    f"too short: {frames.shape[0]} frames at stride {cfg.stride}, need {cfg.min_frames}"
                )
        except MagicPropError as e:
            writer.skip(str(video), str(e))
            log.warning("skipped %s: %s", video, e)
            continue
        frames = square(frames, cfg.size)
        depth = align_clip_depth(estimator(frames))[:, 0]
        npz = encode_clip_npz((frames * 255).round().to(torch.uint8).numpy(), depth.numpy(), cfg.jpeg_quality)
        writer.add(clip_key(video), npz, {"video": str(video), "frames": int(frames.shape[0]), "stride": cfg.stride,
                                           "size": cfg.size})
    writer.flush()
    write_index(out, index)
    log.info("prepared %d clips in %d shards; skipped %d videos", len(index["clips"]), len(index["shards"]),
             len(index["skipped"]))
    for s in index["skipped"]:
        log.info("  skipped %s: %s", s["video"], s["reason"])
    return index
