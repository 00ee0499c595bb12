"""Keyframes and chains, shared by every path (flow propagation, FlowRefine, PropDPM, warp, the trainer): which
frames are made from which keyframe, in which order, where two chains meet and how they are blended there, and how
a run's independent chains are batched in lockstep.

A chain is a list of absolute frame indices starting at its keyframe; each frame is made from the one before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .errors import MagicPropError


def check_max_batch(max_batch: int) -> int:
    if int(max_batch) < 0:
        raise MagicPropError(f"max_batch={max_batch}: expected 0 (every ready frame in one call) or a cap of 1 or more "
                             "frames per sampler call (1 = one frame at a time).")
    return int(max_batch)


def rounds(items: Sequence, max_batch: int = 0) -> Iterator[list]:
    """`items` in consecutive batches of at most `max_batch` (0 = all in one)."""
    size = check_max_batch(max_batch) or max(1, len(items))
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def chain_order(reference_index: int, num_frames: int) -> list[list[int]]:
    """The chains a run is made of, each a list of absolute indices starting at the reference.

    Forward [r, r+1, .., K-1] first, then backward [r, r-1, .., 0]; chains of one index are dropped.
    """
    if num_frames < 1:
        raise MagicPropError(f"num_frames={num_frames}: expected at least 1 frame.")
    if not 0 <= reference_index < num_frames:
        raise MagicPropError(
            f"reference_index={reference_index} is out of range for a clip of {num_frames} frames: expected "
            f"0 <= reference_index <= {num_frames - 1} (the index of the frame that was edited)."
        )
    chains = [list(range(reference_index, num_frames)), list(range(reference_index, -1, -1))]
    return [c for c in chains if len(c) > 1]


@dataclass(frozen=True)
class Chain:
    key: int
    """Position of the keyframe it starts from (in the sorted keyframe list)."""
    indices: list[int]
    """Absolute frame indices, starting at the keyframe."""


def check_keyframes(indices: Sequence[int], num_frames: int | None, references: int | None = None,
                    name: str | None = None) -> list[int]:
    """Every check on keyframe indices, in one place (both front ends call it before any model work).

    One index per edited reference (when `references` is given), distinct and increasing, each inside the clip
    (when `num_frames` is known). name: the input the indices came from (a node's `keyframe_indices` widget), named
    by the messages; None for a run's reference indices. Returns the indices as a list.
    """
    indices = [int(i) for i in indices]
    given = f"keyframe indices {indices}" if name is None else f"{name} {indices}"
    if references is not None and len(indices) != references:
        raise MagicPropError(
            f"{given} give {len(indices)} indices for {references} reference images: give one "
            "frame index per edited reference, in the references' order."
        )
    if not indices:
        raise MagicPropError("keyframes: expected at least one edited reference.")
    if indices != sorted(set(indices)):
        raise MagicPropError(f"{given}: expected distinct indices in increasing order.")
    if num_frames is not None:
        for i in indices:
            if name is not None and not 0 <= i < num_frames:
                raise MagicPropError(f"{given}: frame {i} is out of range for a clip of {num_frames} frames: expected "
                                     f"frames 0 to {num_frames - 1} (the frames that were edited, counted from 0).")
            chain_order(i, num_frames)  # range check with its message
    return indices


def keyframe_plan(indices: Sequence[int], num_frames: int, window: int = 8) -> tuple[list[Chain], dict[int, tuple]]:
    """The chains of a run with keyframes at `indices` (sorted, distinct) and the blend of every shared frame.

    Before the first keyframe a chain runs backward to frame 0; after the last one forward to K-1. Between two
    keyframes a < b each runs towards the other up to a `window` of frames around the midpoint, which both chains
    generate; there the result moves linearly from a's chain to b's (no seam). Returns (chains, blends) where
    blends[k] = (key_a, key_b, weight of b).
    """
    _check_window(indices, num_frames, window)
    chains: list[Chain] = []
    blends: dict[int, tuple] = {}
    first, last = indices[0], indices[-1]
    if first > 0:
        chains.append(Chain(0, list(range(first, -1, -1))))
    for n, (a, b) in enumerate(zip(indices[:-1], indices[1:])):
        lo, hi, a_end, b_start = _meeting(a, b, window)
        if a_end > a:
            chains.append(Chain(n, list(range(a, a_end + 1))))
        if b_start < b:
            chains.append(Chain(n + 1, list(range(b, b_start - 1, -1))))
        for k in range(lo, hi + 1):
            blends[k] = (n, n + 1, (k - lo + 1) / (hi - lo + 2))
    if last < num_frames - 1:
        chains.append(Chain(len(indices) - 1, list(range(last, num_frames))))
    return chains, blends


def _check_window(indices: Sequence[int], num_frames: int, window: int) -> None:
    check_keyframes(indices, num_frames)
    if window < 0:
        raise MagicPropError(f"window={window}: expected 0 or more frames.")


def _meeting(a: int, b: int, window: int) -> tuple[int, int, int, int]:
    """Where the chains of keyframes a < b meet: (lo, hi) the shared window (empty when hi < lo), a's chain covering
    a+1 .. a_end and b's b-1 .. b_start when each runs only to the meeting."""
    gap = b - a - 1
    w = min(window, gap)
    lo = a + 1 + (gap - w) // 2  # first frame of the shared window
    hi = lo + w - 1
    a_end = hi if w else a + (gap + 1) // 2
    b_start = lo if w else a_end + 1
    return lo, hi, a_end, b_start


def two_keyframe_plan(indices: Sequence[int], num_frames: int,
                      window: int = 8) -> tuple[list[list[Chain]], dict[int, tuple]]:
    """The chains of a run that makes every frame from its two nearest keyframes (flow propagation: per pixel the
    first's carry where it carries, else the second's): the keyframes on each side of it, before the first keyframe
    the first two, after the last the last two.

    Between two keyframes a < b, a's chain runs forward to b - 1 and b's backward to a + 1; the second keyframe's
    backward chain runs on through the first to frame 0, the one before the last runs forward through the last to
    K - 1 (a chain passing a keyframe makes nothing there: the keyframe is the edit). Returns (groups, sides): the
    chains in groups whose members run over the same frames in the same direction (run them in lockstep, frame by
    frame, and neither waits for the other), and sides[k] = (first, second, t) for every frame k that is not a
    keyframe: t of frame k is the result that prefers `second`, 1 - t the one that prefers `first` (the nearer
    keyframe); t moves from 0 to 1 over `window` frames around the midpoint of two keyframes, where
    `keyframe_plan`'s blend does (0 before the first keyframe and after the last). With one keyframe: its chains,
    one per group, and no sides."""
    _check_window(indices, num_frames, window)
    n = len(indices)
    if n == 1:
        return [[c] for c in keyframe_plan(indices, num_frames, window)[0]], {}
    sides: dict[int, tuple] = {}
    for k in range(indices[0]):
        sides[k] = (0, 1, 0.0)
    for k in range(indices[-1] + 1, num_frames):
        sides[k] = (n - 1, n - 2, 0.0)
    for m, (a, b) in enumerate(zip(indices[:-1], indices[1:])):
        lo, hi, a_end, _ = _meeting(a, b, window)
        for k in range(a + 1, b):
            t = (k - lo + 1) / (hi - lo + 2) if lo <= k <= hi else float(k > (hi if hi >= lo else a_end))
            sides[k] = (m, m + 1, t)
    backward = [Chain(m, list(range(x, -1 if m <= 1 else indices[m - 1], -1))) for m, x in enumerate(indices)]
    forward = [Chain(m, list(range(x, num_frames if m >= n - 2 else indices[m + 1]))) for m, x in enumerate(indices)]
    groups = []
    for m in range(n - 1):  # gap by gap, so what waits for its second chain is at most one gap's frames
        groups.append([backward[1], backward[0]] if m == 0 else [backward[m + 1]])
        groups.append([forward[m], forward[m + 1]] if m == n - 2 else [forward[m]])
    groups = [[c for c in g if len(c.indices) > 1] for g in groups]
    return [g for g in groups if g], sides


def lockstep_order(chains: Sequence[Chain]) -> list[int]:
    """The frames of `chains` in the order a run makes them: round j holds the j-th frame of every chain that has
    one, in chain order."""
    longest = max((len(c.indices) for c in chains), default=0)
    return [c.indices[j] for j in range(1, longest) for c in chains if j < len(c.indices)]


def meet(pending: dict, blends: dict[int, tuple], k: int, key: int, part):
    """Chain `key`'s result for frame k, blended by `keyframe_plan`'s weights where two chains meet there.

    part: a tensor or a tuple of tensors (each blended alike). Returns the part unchanged outside blends, None while
    the other chain's part for k is still to come (kept in `pending`, a dict the caller holds for the whole run).
    """
    if k not in blends:
        return part
    pending.setdefault(k, {})[key] = part
    key_a, key_b, t = blends[k]
    if len(pending[k]) < 2:
        return None
    parts = pending.pop(k)
    if isinstance(part, tuple):
        return tuple((1 - t) * a + t * b for a, b in zip(parts[key_a], parts[key_b]))
    return (1 - t) * parts[key_a] + t * parts[key_b]
