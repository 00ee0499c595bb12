"""The prepared-shard format, written by `python -m magicprop prepare` and read by the trainer (one owner).

A shard is a plain WebDataset tar (written with webdataset's own `TarWriter`): each clip is one sample, `<key>.npz`
(JPEG frames + 16-bit depth, see `encode_clip_npz`) and `<key>.json` (provenance), so any WebDataset pipeline can
stream it. Beside the shards, `index.json` lists every clip with its shard and the byte range of its npz member, for
random access (deterministic, resumable training reads any clip without scanning), every skipped video with the
reason, and the prepare settings:

    {"version": 1, "config": {...}, "depth_model": name, "clips": [{"key", "shard", "offset", "size", "frames",
     "video"}], "shards": [names], "skipped": [{"video", "reason"}], "processed": [videos]}

Shards are written to a temporary name and renamed when complete; the index is rewritten atomically after each
shard, so an interrupted `prepare` resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import MagicPropError
from ..io.fileio import atomic_path
from .clips import ClipData

INDEX_NAME = "index.json"
INDEX_VERSION = 1


def encode_clip_npz(frames: np.ndarray, depth: np.ndarray, quality: int = 95) -> bytes:
    """(T, H, W, 3) uint8 frames + (T, H, W) depth in [0, 1] -> npz bytes (JPEG frames, 16-bit depth)."""
    from PIL import Image

    jpegs, offsets = [], [0]
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=quality)
        jpegs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets.append(offsets[-1] + len(jpegs[-1]))
    out = io.BytesIO()
    np.savez_compressed(out, jpeg=np.concatenate(jpegs), offsets=np.asarray(offsets, dtype=np.int64),
                        depth=np.round(np.clip(depth, 0, 1) * 65535).astype(np.uint16))
    return out.getvalue()


def decode_clip_npz(data: bytes) -> ClipData:
    """npz bytes of `encode_clip_npz` -> ClipData (uint8 frames, float depth in [0, 1])."""
    from PIL import Image

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        jpeg, offsets, depth = z["jpeg"], z["offsets"], z["depth"]
    frames = [np.asarray(Image.open(io.BytesIO(jpeg[a:b].tobytes())).convert("RGB"))
              for a, b in zip(offsets[:-1], offsets[1:])]
    return ClipData(torch.from_numpy(np.stack(frames)), torch.from_numpy(depth.astype(np.float32) / 65535.0))


def new_index(settings: dict, depth_model: str) -> dict:
    return {"version": INDEX_VERSION, "config": settings, "depth_model": depth_model, "clips": [], "shards": [],
            "skipped": [], "processed": []}


def write_index(out: Path, index: dict) -> None:
    with atomic_path(out / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index, indent=1))


def member_ranges(shard: Path) -> dict[str, tuple[int, int]]:
    """name -> (data offset, size) of every member of a tar file."""
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


class ShardWriter:
    """Clips accumulate until `clips_per_shard`, then become shard-NNNNNN.tar (atomic); the index follows it."""

    def __init__(self, out: Path, index: dict, clips_per_shard: int) -> None:
        self.out, self.index, self.per_shard = out, index, clips_per_shard
        self.pending: list[tuple[str, bytes, dict]] = []

    def add(self, key: str, npz: bytes, meta: dict) -> None:
        """One clip: `npz` from encode_clip_npz, `meta` with at least "video" and "frames"."""
        self.pending.append((key, npz, meta))
        if len(self.pending) >= self.per_shard:
            self.flush()

    def skip(self, video: str, reason: str) -> None:
        self.index["skipped"].append({"video": video, "reason": reason})
        self.index["processed"].append(video)

    def flush(self) -> None:
        if not self.pending:
            return
        import webdataset as wds

        name = f"shard-{len(self.index['shards']):06d}.tar"
        # mtime fixed: the same clips give the same bytes
        with atomic_path(self.out / name) as tmp, open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as tar:
                for key, npz, meta in self.pending:
                    tar.write({"__key__": key, "npz": npz, "json": json.dumps(meta).encode()})
        ranges = member_ranges(self.out / name)
        for key, _, meta in self.pending:
            offset, size = ranges[f"{key}.npz"]
            self.index["clips"].append({"key": key, "shard": name, "offset": offset, "size": size,
                                        "frames": meta["frames"], "video": meta["video"]})
            self.index["processed"].append(meta["video"])
        self.index["shards"].append(name)
        self.pending = []
        write_index(self.out, self.index)


class ShardSource:
    """Clips from prepared shards, read by random access through index.json.

    index.json lists each clip's shard and byte range, so any clip can be read without scanning (local files here;
    any fsspec URL when fsspec is installed, e.g. object storage with range requests).
    """

    def __init__(self, location: str | Path) -> None:
        loc = str(location)
        index_path = loc if loc.endswith(".json") else loc.rstrip("/") + "/" + INDEX_NAME
        self.root = index_path.rsplit("/", 1)[0]
        with _open(index_path) as f:
            self.index = json.load(f)
        version = self.index.get("version")
        if version != INDEX_VERSION:
            raise MagicPropError(
                f"shards {loc!r} have index version {version!r}: this MagicProp reads version {INDEX_VERSION}; "
                "prepare the videos again with this MagicProp."
            )
        self.clips = self.index["clips"]
        if not self.clips:
            raise MagicPropError(f"shards {loc!r} hold no clips: run `python -m magicprop prepare` on some videos.")

    def __len__(self) -> int:
        return len(self.clips)

    def frames_in(self, index: int) -> int:
        return self.clips[index]["frames"]

    def clip(self, index: int) -> ClipData:
        entry = self.clips[index]
        with _open(self.root + "/" + entry["shard"]) as f:
            f.seek(entry["offset"])
            return decode_clip_npz(f.read(entry["size"]))

    def describe(self) -> dict:
        """What the checkpoint records of its data: the shards' frame size and depth model come from their index."""
        settings = self.index.get("config", {})
        return {"source": "shards", "clips": len(self.clips), "location": self.root.rsplit("/", 1)[-1],
                "size": settings.get("size"), "depth_model": self.index.get("depth_model"),
                "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        """The identity of the clips (keys, lengths and encoded sizes, the prepare settings, the depth model), not of
        where they are: the same shards moved elsewhere have the same fingerprint, other clips another one."""
        ident = {"config": self.index.get("config"), "depth_model": self.index.get("depth_model"),
                 "clips": [(c["key"], c["frames"], c["size"]) for c in self.clips]}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _open(location: str):
    if "://" in location:
        import fsspec

        return fsspec.open(location, "rb").open()
    if not Path(location).is_file():
        raise MagicPropError(f"shards: {location!r} does not exist; point data.shards at the prepare output folder.")
    return open(location, "rb")
