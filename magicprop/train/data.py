"""Training data: clip sources (prepared shards, the synthetic domain) and deterministic triplet sampling.

Every training sample is a function of (run seed, global sample index) alone: which clip, which reference, previous
and target frames, the timestep, the noise and the appearance-dropout decision. A step's global batch is samples
step*B .. step*B+B-1, split among processes by rank. So a run resumes exactly where it stopped (the data position is
the step), and N processes see exactly the samples one process would (MagicProp section 3.3.3: random triplets of
one video; the previous->target gap follows the configured distribution, in both directions).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import MagicPropError
from ..propagate import frame_seed


@dataclass
class ClipData:
    frames: torch.Tensor  # (T, H, W, 3) uint8
    depth: torch.Tensor  # (T, H, W) float in [0, 1], near = 1, aligned for the clip


class ClipSource(Protocol):
    def __len__(self) -> int: ...
    def frames_in(self, index: int) -> int: ...
    def clip(self, index: int) -> ClipData: ...
    def describe(self) -> dict: ...


class SyntheticSource:
    """Clips of the synthetic domain (magicprop.synthetic), seeds seed .. seed + n - 1, source appearance."""

    def __init__(self, num_clips: int, seed: int = 0, size: int = 128, frames: int = 30) -> None:
        from ..synthetic import SceneConfig

        self.n, self.seed = num_clips, seed
        self.scene = SceneConfig(size=size, frames=frames)

    def __len__(self) -> int:
        return self.n

    def frames_in(self, index: int) -> int:
        return self.scene.frames

    def clip(self, index: int) -> ClipData:
        from ..synthetic import make_clip

        c = make_clip(self.seed + index, self.scene, edit=False)
        return ClipData((c.frames * 255).round().to(torch.uint8), c.depth)

    def describe(self) -> dict:
        return {"source": "synthetic", "clips": self.n, "seed": self.seed, "size": self.scene.size,
                "frames": self.scene.frames}


# -- prepared shards -----------------------------------------------------------------------------------------------

INDEX_NAME = "index.json"


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
    from PIL import Image

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        jpeg, offsets, depth = z["jpeg"], z["offsets"], z["depth"]
    frames = [np.asarray(Image.open(io.BytesIO(jpeg[a:b].tobytes())).convert("RGB"))
              for a, b in zip(offsets[:-1], offsets[1:])]
    return ClipData(torch.from_numpy(np.stack(frames)), torch.from_numpy(depth.astype(np.float32) / 65535.0))


class ShardSource:
    """Clips from WebDataset-style tar shards made by `python -m magicprop prepare`, read by random access.

    index.json lists each clip's shard and byte range, so any clip can be read without scanning (local files here;
    any fsspec URL when fsspec is installed, e.g. object storage with range requests).
    """

    def __init__(self, location: str | Path) -> None:
        loc = str(location)
        index_path = loc if loc.endswith(".json") else loc.rstrip("/") + "/" + INDEX_NAME
        self.root = index_path.rsplit("/", 1)[0]
        with _open(index_path) as f:
            self.index = json.load(f)
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
        return {"source": "shards", "clips": len(self.clips), "location": self.root.rsplit("/", 1)[-1]}


def _open(location: str):
    if "://" in location:
        import fsspec

        return fsspec.open(location, "rb").open()
    if not Path(location).is_file():
        raise MagicPropError(f"shards: {location!r} does not exist; point data.shards at the prepare output folder.")
    return open(location, "rb")


def member_ranges(shard: Path) -> dict[str, tuple[int, int]]:
    """name -> (data offset, size) of every member of a tar file."""
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


# -- deterministic triplets ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleSpec:
    clip: int
    ref: int
    prev: int
    target: int
    timestep: int
    drop_appearance: bool
    noise_seed: int
    rollout: bool = False
    """Replace the true previous frame by the model's own rollout towards it (drift control)."""


def sample_spec(seed: int, index: int, source: ClipSource, gaps, gap_weights, backward: float,
                num_timesteps: int, appearance_dropout: float, rollout_probability: float = 0.0) -> SampleSpec:
    """The triplet, timestep, noise seed, dropout and rollout decisions of global sample `index`."""
    g = torch.Generator().manual_seed(frame_seed(seed, index))
    clip = int(torch.randint(len(source), (1,), generator=g))
    frames = source.frames_in(clip)
    w = torch.tensor(gap_weights, dtype=torch.float64)
    gap = min(int(gaps[int(torch.multinomial(w, 1, generator=g))]), frames - 1)
    back = bool(torch.rand((), generator=g) < backward)
    start = int(torch.randint(frames - gap, (1,), generator=g))
    target, prev = (start, start + gap) if back else (start + gap, start)
    ref = int(torch.randint(frames, (1,), generator=g))
    timestep = int(torch.randint(num_timesteps, (1,), generator=g))
    drop = bool(torch.rand((), generator=g) < appearance_dropout)
    noise_seed = int(torch.randint(2**62, (1,), generator=g))
    rollout = bool(torch.rand((), generator=g) < rollout_probability)
    return SampleSpec(clip, ref, prev, target, timestep, drop, noise_seed, rollout)


def make_source(data_cfg) -> ClipSource:
    if data_cfg.source == "synthetic":
        return SyntheticSource(data_cfg.synthetic_clips, data_cfg.synthetic_seed, data_cfg.synthetic_size,
                               data_cfg.synthetic_frames)
    if data_cfg.source == "shards":
        if not data_cfg.shards:
            raise MagicPropError("data.source = \"shards\" needs data.shards = the folder written by prepare.")
        return ShardSource(data_cfg.shards)
    raise MagicPropError(f"data.source={data_cfg.source!r}: expected \"shards\" or \"synthetic\".")
