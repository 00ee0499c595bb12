"""Frame previews for the web filmstrip: each finished frame as a small latent-to-RGB JPEG (no VAE decode),
sent over ComfyUI's own server messages to the client that queued the prompt."""

from __future__ import annotations

import base64
import io

import latent_preview
import torch

START_EVENT = "magicprop.start"
FRAME_EVENT = "magicprop.frame"


class FramePreviews:
    """Sends magicprop.start once and magicprop.frame per finished frame; silent without a running server."""

    def __init__(self, model, node_id: str | None, num_frames: int, reference_index: int) -> None:
        try:
            from server import PromptServer

            self.server = PromptServer.instance
        except (ImportError, AttributeError):
            self.server = None
        fmt = model.model.latent_format
        self.format = fmt
        self.previewer = (latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)
                          if fmt.latent_rgb_factors is not None else None)
        self.node_id, self.total, self.reference = node_id, num_frames, reference_index
        self.active = self.server is not None and node_id is not None and self.previewer is not None

    def _send(self, event: str, data: dict) -> None:
        self.server.send_sync(event, {"node": self.node_id, **data}, self.server.client_id)

    def start(self) -> None:
        if self.active:
            self._send(START_EVENT, {"total": self.total, "reference": self.reference})

    def frame(self, index: int, latent: torch.Tensor) -> None:
        """latent: (1, 4, h, w) unscaled VAE latent of frame `index`."""
        if not self.active:
            return
        image = self.previewer.decode_latent_to_preview(self.format.process_in(latent.float().cpu()))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=80)
        self._send(FRAME_EVENT, {"index": index, "total": self.total, "reference": self.reference,
                                 "image": base64.b64encode(buf.getvalue()).decode("ascii")})
