"""ControlNet hints on ComfyUI conditionings, shared by the nodes that sample frame by frame (PropDPM's
ComfyFrameDenoiser, FlowRefine's ComfyFrameRefiner): one hint per video frame is cut to the frames of each batch."""

from __future__ import annotations

from ...magicprop.errors import MagicPropError


def control_chain(control) -> list:
    """The ControlNets of a conditioning's chain, outermost first."""
    chain = []
    while control is not None:
        chain.append(control)
        control = control.previous_controlnet
    return chain


def check_control_hints(conditionings: list, num_frames: int) -> None:
    """Every ControlNet hint must have 1 frame (used for all) or one per video frame; raise before sampling."""
    for conditioning in conditionings:
        for _, d in conditioning:
            for cnet in control_chain(d.get("control")):
                hint = cnet.cond_hint_original
                n = 1 if hint is None else hint.shape[0]
                if n not in (1, num_frames):
                    raise MagicPropError(
                        f"a ControlNet on the conditioning has a hint of {n} frames for a clip of {num_frames}: "
                        "give it one image (used for every frame) or one image per frame."
                    )


def slice_control(control, frames: list[int], num_frames: int, cache: dict):
    """A copy of a ControlNet chain whose K-frame hints are cut to the frames of a batch, in its order (1-frame
    hints stay whole).

    ComfyUI would broadcast hint[0] to a one-frame batch, so frame-by-frame sampling needs per-frame copies.
    `cache` keeps positive and negative sharing one copy, as ControlNetApplyAdvanced made them share one.
    """
    if control is None:
        return None
    if id(control) in cache:
        return cache[id(control)]
    copy = control.copy()
    copy.set_previous_controlnet(slice_control(control.previous_controlnet, frames, num_frames, cache))
    hint = control.cond_hint_original
    if hint is not None and hint.shape[0] == num_frames and num_frames > 1:
        copy.cond_hint_original = hint[frames]
    cache[id(control)] = copy
    return copy


def frame_conditioning(conditioning: list, frames: list[int], num_frames: int, cache: dict,
                       extra: dict | None = None) -> list:
    """The conditioning of a batch of `frames` (one or more): their ControlNet hints selected, `extra` keys (e.g.
    their spatial conditions) added."""
    out = []
    for tokens, d in conditioning:
        d = {**d, **(extra or {})}
        if d.get("control") is not None:
            d["control"] = slice_control(d["control"], frames, num_frames, cache)
        out.append([tokens, d])
    return out
