"""Progress the user sees, shared by the nodes: a frame-level ComfyUI progress bar that honours cancel, and the
sampler-step reporter with previews of the PropDPM and FlowRefine nodes."""

from __future__ import annotations

import comfy.model_management
import comfy.utils
import latent_preview
import torch

from .preview import FramePreviews


def frame_callback(total: int):
    """A per-item callback: one ComfyUI progress step, and a stop when the user cancels the run."""
    bar = comfy.utils.ProgressBar(max(total, 1))

    def on_item(done: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(min(done, total), total)

    return on_item


def steps_callback():
    """flow_propagate's progress(done, total) -> one ComfyUI progress bar over the run's steps (every frame each chain
    carries: with two keyframes per frame a gap's first chain advances it too), made at the first step, when the
    total is known; and a stop when the user cancels the run."""
    bar: list = []

    def on_step(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if not bar:
            bar.append(comfy.utils.ProgressBar(max(total, 1)))
        bar[0].update_absolute(min(done, total), total)

    return on_step


def counted(on_done):
    """flow_propagate's per-frame callback (a frame index) -> a count of frames done for the progress bar."""
    done = [0]

    def on_frame(_index: int) -> None:
        done[0] += 1
        on_done(done[0])

    return on_frame


class ProgressReporter:
    """One ComfyUI progress bar over every sampler step of every generated frame (a batched round advances all its
    frames at once), with step previews of every frame of the round side by side; finished frames go to the web
    filmstrip (FramePreviews)."""

    def __init__(self, model, generations: int, steps: int, frames: FramePreviews | None = None) -> None:
        self.steps, self.total = steps, max(1, generations * steps)
        self.done = self.current = 0  # frames of finished rounds; frames of the round being sampled
        self.bar = comfy.utils.ProgressBar(self.total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.frames = frames
        if frames is not None:
            frames.start()

    def on_step(self, indices: list[int], step: int, total_steps: int, x0: torch.Tensor) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if step == 1:
            self.done, self.current = self.done + self.current, len(indices)
        preview = None
        if self.previewer is not None:
            tiled = torch.cat(list(x0[: len(indices)]), dim=-1)[None]  # (1, C, h, B*w): the round's frames in a row
            preview = self.previewer.decode_latent_to_preview_image("JPEG", tiled)
        value = self.done * self.steps + self.current * min(step, self.steps)
        self.bar.update_absolute(min(value, self.total), self.total, preview)

    def on_frame(self, index: int, latent: torch.Tensor) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if self.frames is not None:
            self.frames.frame(index, latent)
