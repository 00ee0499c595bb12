"""A clip's frames spooled to a temporary file as uint8 and read back one at a time: any length in flat memory.

Flow propagation visits frames out of order (a backward chain, the keyframe again and again, batches of frames to the
keyframe), which a video decoder cannot seek to cheaply. Decoding once into a raw file makes every later visit one
`pread`: the operating system's page cache, not the process, holds what is hot. The file is unnamed (deleted on
close, and by the kernel if the process dies) and lies in the temporary folder (`TMPDIR`): K x H x W x 3 bytes, about
3.7 GB for 600 frames of 1080p.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import IO

import numpy as np
import torch

from ..errors import MagicPropError


class _TemporaryFile:
    """What owns an unnamed temporary file (`_file`): closed (so deleted) by `close` or at the end of a `with`."""

    _file: IO[bytes]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _TemporaryFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameSpool(_TemporaryFile):
    """(K, H, W, 3) uint8 frames on disk, indexed like a tensor: `spool[k]` is frame k as an (H, W, 3) uint8 tensor."""

    ndim = 4
    dtype = torch.uint8

    def __init__(self, frames: Iterable[np.ndarray | torch.Tensor], what: str = "video") -> None:
        self._file = tempfile.TemporaryFile(prefix="magicprop-frames-")  # noqa: SIM115 (lives as long as the spool)
        count, size = 0, None
        try:
            for frame in frames:
                arr = np.ascontiguousarray(frame.numpy() if isinstance(frame, torch.Tensor) else frame)
                if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
                    raise MagicPropError(f"{what} frame {count}: {arr.dtype} of shape {arr.shape}, expected (H, W, 3) "
                                         "uint8.")
                size = size or arr.shape
                if arr.shape != size:
                    raise MagicPropError(f"{what} frame {count} is {arr.shape[1]}x{arr.shape[0]} but the first frame "
                                         f"is {size[1]}x{size[0]}: every frame of a clip must have one size.")
                self._file.write(memoryview(arr).cast("B"))
                count += 1
            self._file.flush()
        except BaseException:
            self._file.close()
            raise
        if size is None:
            self._file.close()
            raise MagicPropError(f"{what} has no decodable frames.")
        self.shape = (count, *size)
        self._bytes = int(np.prod(size))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> torch.Tensor:
        n = self.shape[0]
        k = int(k)
        if not -n <= k < n:
            raise IndexError(f"frame {k} of a spool of {n} frames")
        data = os.pread(self._file.fileno(), self._bytes, (k % n) * self._bytes)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(*self.shape[1:])


class TensorSlots(_TemporaryFile):
    """Tensors of one shape and dtype kept by slot index in an unnamed temporary file (deleted on close, and by the
    kernel if the process dies): what a run must hold for many frames stays off memory. `slots[k] = x` writes slot
    k, `slots[k]` reads it back (the same values); a slot never written reads as zeros."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.shape, self.dtype = tuple(shape), dtype
        self._bytes = int(np.prod(self.shape)) * torch.empty((), dtype=dtype).element_size()
        self._file = tempfile.TemporaryFile(prefix="magicprop-held-")  # noqa: SIM115 (lives as long as the slots)

    def __setitem__(self, k: int, x: torch.Tensor) -> None:
        if tuple(x.shape) != self.shape:
            raise MagicPropError(f"slot {k}: a tensor of shape {tuple(x.shape)}, expected {self.shape}.")
        data = x.detach().to("cpu", self.dtype).contiguous().view(torch.uint8).numpy()
        os.pwrite(self._file.fileno(), memoryview(data).cast("B"), int(k) * self._bytes)

    def __getitem__(self, k: int) -> torch.Tensor:
        data = os.pread(self._file.fileno(), self._bytes, int(k) * self._bytes)
        data = data + bytes(self._bytes - len(data))  # past the file's end: never written
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(self.dtype).view(self.shape)
