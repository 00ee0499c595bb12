"""`python -m magicprop prepare`: videos -> WebDataset-style tar shards of training clips with aligned depth.

Per video (MagicProp section 3.3.3): up to `frames` frames at `stride`, centre-cropped to a square and resized to
`size`; depth from a local transformers model, aligned with the core's clip alignment. Each clip is one sample
`<key>.npz` (JPEG frames, 16-bit depth) + `<key>.json` (provenance) in a tar shard; `index.json` lists every clip
with its byte range (random access for deterministic, resumable training) and every skipped video with the reason.
Shards are written to a temporary name and renamed when complete, and the index is rewritten atomically after each
shard, so an interrupted run resumes where it stopped: finished videos are not read again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .depth import DepthEstimator, align_clip_depth
from .errors import MagicPropError
from .fileio import atomic_path
from .train.data import INDEX_NAME, encode_clip_npz, member_ranges

log = logging.getLogger(__name__)

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
        return [Path(line) if Path(line).is_absolute() else base / line for line in lines if line and not line.startswith("#")]
    raise MagicPropError(f"--videos {str(p)!r} is neither a folder of videos nor a text file listing them.")


def clip_key(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]


def square_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, H, W, 3) -> (T, size, size, 3): centre square crop, antialiased resize."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = frames[:, top : top + s, left : left + s].movedim(-1, 1)
    if s != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
    return x.movedim(1, -1).clamp(0, 1)


class ShardWriter:
    """Clips accumulate in a temporary tar that becomes shard-NNNNNN.tar when full; the index follows it."""

    def __init__(self, out: Path, index: dict, clips_per_shard: int) -> None:
        self.out, self.index, self.per_shard = out, index, clips_per_shard
        self.pending: list[tuple[str, bytes, dict]] = []

    def add(self, key: str, npz: bytes, meta: dict) -> None:
        self.pending.append((key, npz, meta))
        if len(self.pending) >= self.per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"shard-{len(self.index['shards']):06d}.tar"
        with atomic_path(self.out / name) as tmp:
            with tarfile.open(tmp, "w") as tar:
                for key, npz, meta in self.pending:
                    for member, data in ((f"{key}.npz", npz), (f"{key}.json", json.dumps(meta).encode())):
                        info = tarfile.TarInfo(member)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        ranges = member_ranges(self.out / name)
        for key, _, meta in self.pending:
            offset, size = ranges[f"{key}.npz"]
            self.index["clips"].append({"key": key, "shard": name, "offset": offset, "size": size,
                                        "frames": meta["frames"], "video": meta["video"]})
            self.index["processed"].append(meta["video"])
        self.index["shards"].append(name)
        self.pending = []
        write_index(self.out, self.index)


def write_index(out: Path, index: dict) -> None:
    with atomic_path(out / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index, indent=1))


def prepare(videos: str | Path, depth_model: str | Path, out: str | Path, cfg: PrepareConfig = PrepareConfig(),
            device: str = "cpu", progress: bool = True) -> dict:
    """Prepare (or resume preparing) shards; returns the index (clips, shards, skipped videos with reasons)."""
    from tqdm.auto import tqdm

    from .video import read_frames

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
        index = {"version": 1, "config": settings, "depth_model": Path(depth_model).name, "clips": [],
                 "shards": [], "skipped": [], "processed": []}
    done = set(index["processed"])
    todo = [v for v in list_videos(videos) if str(v) not in done]
    estimator = DepthEstimator.from_folder(depth_model, device)
    writer = ShardWriter(out, index, cfg.clips_per_shard)
    for video in tqdm(todo, desc="prepare", unit="video", disable=not progress):
        try:
            frames = read_frames(video, cfg.frames, cfg.stride)
            if frames.shape[0] < cfg.min_frames:
                raise MagicPropError(f"too short: {frames.shape[0]} frames at stride {cfg.stride}, need {cfg.min_frames}")
        except MagicPropError as e:
            index["skipped"].append({"video": str(video), "reason": str(e)})
            index["processed"].append(str(video))
            log.warning("skipped %s: %s", video, e)
            continue
        frames = square_frames(frames, cfg.size)
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
