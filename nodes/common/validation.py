"""What the nodes' `validate_inputs` share, and the keyframe_indices widget's syntax.

ComfyUI calls a v3 node's `validate_inputs` when the prompt is queued, before any node of it runs (v0.8
`execution.validate_inputs`), so every check that a widget value, or whether a socket is connected, decides alone
belongs there and not in `execute`; checks of tensors stay in `execute` and the core.

How the host calls it: only the inputs named in its signature are passed. A widget comes with its value; a connected
socket comes as None (its value does not exist yet); an optional socket left unconnected is not passed at all, so
its parameter keeps the default UNCONNECTED. A widget turned into a socket also comes as None: its check then happens
in `execute`, through the same function. The host skips its own min/max/options check of every input the signature
names, so a named widget is checked here in full. A returned string refuses the prompt: the host shows it once per
named input that the prompt holds (so signatures name only what their checks need) and drops it when the prompt holds
none of them (so a check about unconnected sockets also names a required input).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ...magicprop.errors import MagicPropError
from ...magicprop.io.images import GRID
from ...magicprop.keyframes import check_keyframes

UNCONNECTED = object()
"""Default of an optional socket in a `validate_inputs` signature: the host leaves it out when nothing is connected
(and passes None when something is)."""

KEYFRAME_FORMAT = ('write one frame number (0 = the first frame) per reference image, separated by commas, e.g. '
                   '"0, 60, 119"')
_FRAME_NUMBER = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")


def refusal(check: Callable[[], object]) -> bool | str:
    """`validate_inputs`' answer: True, or the one-line message of the MagicPropError that `check` raised."""
    try:
        check()
    except MagicPropError as e:
        return str(e)
    return True


def parse_keyframe_indices(text: str) -> list[int]:
    """The frame numbers the keyframe_indices widget gives: separated by commas (or semicolons), each 0 or more,
    distinct and increasing; [] for an empty widget. Raises MagicPropError naming the widget and the fix."""
    if not text.strip():
        return []
    items = [item.strip() for item in text.replace(";", ",").split(",")]
    if len(items) > 1 and not items[-1]:  # a trailing separator ("0, 60,"), as lists are often typed
        items.pop()
    for n, item in enumerate(items, 1):
        if not item:
            raise MagicPropError(f"keyframe_indices {text!r}: item {n} is empty: {KEYFRAME_FORMAT}.")
        if _NEGATIVE.fullmatch(item):
            raise MagicPropError(f"keyframe_indices {text!r}: {item} is negative (frames count from 0): "
                                 f"{KEYFRAME_FORMAT}.")
        if not _FRAME_NUMBER.fullmatch(item):
            raise MagicPropError(f"keyframe_indices {text!r}: {item!r} is not a frame number: {KEYFRAME_FORMAT}.")
    indices = [int(item) for item in items]
    for a, b in zip(indices, indices[1:]):
        if b <= a:
            problem = f"{b} comes twice" if a == b else f"{b} comes after {a}"
            raise MagicPropError(f"keyframe_indices {text!r}: {problem}: give each edited frame once, in increasing "
                                 "order (the order of the reference images in the batch).")
    return indices


def keyframes(reference_index: int, keyframe_indices: str, references: int, num_frames: int,
              one_per_reference: bool = True) -> list[int]:
    """Frame numbers of a run's references, checked against the clip (the core's check_keyframes, its messages naming
    the widget when the numbers came from it): `reference_index` for one reference and an empty keyframe_indices, else
    the widget's list, one per reference when `one_per_reference`. reference_index set (not its default 0) to another
    frame than the widget's one index is refused: which frame was edited would be a guess (left at 0, the widget
    names it, as it always has)."""
    indices = parse_keyframe_indices(keyframe_indices)
    if references > 1 and not indices and one_per_reference:
        example = ", ".join(str(n * (num_frames - 1) // (references - 1)) for n in range(references))
        raise MagicPropError(f"reference holds {references} images but keyframe_indices is empty: set keyframe_indices "
                             f"to the frame each one edits, in order (e.g. \"{example}\"), or pick one image of the "
                             "batch with ImageFromBatch.")
    if references == 1 and len(indices) == 1 and reference_index not in (0, indices[0]):
        raise MagicPropError(f"reference_index={reference_index} and keyframe_indices {keyframe_indices!r} name "
                             f"different edited frames: set reference_index to {indices[0]} (or 0), or clear "
                             "keyframe_indices to use reference_index.")
    return check_keyframes([reference_index] if references == 1 and not indices else indices, num_frames,
                           references if one_per_reference else None, name="keyframe_indices" if indices else None)


def check_reference(reference: torch.Tensor, name: str = "reference", batch: bool = True) -> None:
    """The edited frame(s): (N, H, W, 3), N = 1 unless `batch` (several keyframes), sides multiples of 16; an alpha
    channel only if opaque (a paint layer is laid over its frame by FlowPropagate, not here)."""
    if reference.ndim != 4 or reference.shape[0] == 0 or (not batch and reference.shape[0] != 1):
        expected = "images (N, H, W, 3)" if batch else "one image (1, H, W, 3)"
        raise MagicPropError(
            f"{name} has shape {tuple(reference.shape)}: expected {expected}, "
            "the edited frame(s); pick images of a batch with ImageFromBatch."
        )
    if reference.shape[-1] == 4 and bool((reference[..., 3] < 1).any()):
        raise MagicPropError(
            f"{name} has an alpha channel with transparent pixels (a paint layer): PropDPM takes the edited frame "
            "itself; lay the layer over its frame first (ImageCompositeMasked, its mask from the layer's alpha), or "
            "use FlowPropagate, which lays it over the frame it edits."
        )
    h, w = reference.shape[1:3]
    if h % GRID or w % GRID:
        raise MagicPropError(
            f"{name} is {w}x{h}: PropDPM needs sides that are multiples of {GRID}. Resize or crop the video frames "
            f"first (e.g. to {w // GRID * GRID}x{h // GRID * GRID}) and edit the frame at that size."
        )
