"""Frame previews for the web filmstrip: each finished frame as a small latent-to-RGB JPEG (no VAE decode),
sent over ComfyUI's own server messages to the client that queued the prompt."""

from __future__ import annotations

import base64
import io

import latent_preview
import torch

START_EVENT = "magicprop.start"
FRAME_EVENT = "magicprop.frame"
PIXEL_PREVIEW_HEIGHT = 64
"""Height of a frame preview sent from pixels (the strip shows them 40 px high)."""


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
        self.active = self.server is not None and node_id is not None

    def _send(self, event: str, data: dict) -> None:
        self.server.send_sync(event, {"node": self.node_id, **data}, self.server.client_id)

    def start(self) -> None:
        if self.active:
            self._send(START_EVENT, {"total": self.total, "reference": self.reference})

    def frame(self, index: int, latent: torch.Tensor) -> None:
        """latent: (1, 4, h, w) unscaled VAE latent of frame `index`."""
        if not self.active or self.previewer is None:
            return
        self._send_image(index, self.previewer.decode_latent_to_preview(self.format.process_in(latent.float().cpu())))

    def image(self, index: int, image: torch.Tensor) -> None:
        """image: (H, W, 3) pixels in [0, 1] of frame `index` (nodes that finish frames in pixels)."""
        if not self.active:
            return
        from PIL import Image

        x = image.float().cpu()
        if x.shape[0] > PIXEL_PREVIEW_HEIGHT:  # a thumbnail, like the latent previews' size
            h = PIXEL_PREVIEW_HEIGHT
            w = max(1, round(x.shape[1] * h / x.shape[0]))
            x = torch.nn.functional.interpolate(x.permute(2, 0, 1)[None], size=(h, w), mode="area")[0].permute(1, 2, 0)
        self._send_image(index, Image.fromarray((x.clamp(0, 1) * 255).round().byte().numpy()))

    def _send_image(self, index: int, image) -> None:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=80)
        self._send(FRAME_EVENT, {"index": index, "total": self.total, "reference": self.reference,
                                 "image": base64.b64encode(buf.getvalue()).decode("ascii")})
