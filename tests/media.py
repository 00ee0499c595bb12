"""Test media written the way cameras and phones write them."""

from __future__ import annotations

import numpy as np
import torch


def write_turned(path, frames: torch.Tensor, degrees: int, pix_fmt: str = "yuv444p") -> None:
    """(K, H, W, 3) frames stored turned and tagged with the display rotation (`degrees`, counter-clockwise) that
    shows them upright again, as a phone stores a portrait video; x264 lossless (crf 0)."""
    import av

    stored = [np.ascontiguousarray(np.rot90(f, -(degrees // 90))) for f in (frames * 255).round().byte().numpy()]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = pix_fmt
        stream.set_display_rotation(degrees)
        for f in stored:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
