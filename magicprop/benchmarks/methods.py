"""The one method registry: what each row of the demo's and `bench quality`'s tables runs on a clip pair.

Each method propagates the edited frame 0 of a synthetic clip pair (magicprop.synthetic.ClipPair) through the
clip. Kinds: copying the reference; copying the TRUE previous edited frame (an oracle, not a method: the
teacher-forced model's own baseline); colour transfer without flow (the edit's colour mapping applied to every
source frame: the ceiling of flow propagation's fill, `bench real`'s `colour transfer (no flow)` row); flow-warp
propagation without diffusion (the synthetic domain's exact flow, or a Horn & Schunck estimate from the source
frames); flow propagation (magicprop.motion: an engine estimator, a strategy, the fill from the edit's colour
mapping: what EbSynth-style tools do); a shipped PropDPM run autoregressively (optionally with statistics anchoring)
or teacher-forced from the true previous frames."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import MagicPropError
from ..motion.engine import FlowEngine, FlowSettings
from ..motion.propagate import CARRIES, DEFAULT_CARRY, DEFAULT_STRATEGY, STRATEGIES, flow_propagate
from ..propdpm.diffusers_backend import StandaloneModels
from ..propdpm.loop import FrameCallback
from ..propdpm.run import propagate_images, teacher_forced
from .flow_baseline import horn_schunck, propagate_by_flow
from .models import DRIFT, MAIN, NO_PREV, NOISE_AUG, ROLLOUT

ANCHOR_STRENGTH = 0.5


@dataclass(frozen=True)
class Method:
    name: str  # the row name in the tables and the key in the JSON
    kind: str  # copy | copy-previous | colour-transfer | flow-exact | flow-estimated | flow-propagation | model
    #            | teacher-forced
    checkpoint: str | None = None  # shipped PropDPM file (model kinds)
    anchor: float = 0.0  # statistics anchoring strength (model kind), 0 = off
    estimator: str | None = None  # flow-propagation: the engine's estimator
    strategy: str | None = None  # flow-propagation: the propagation strategy
    carry: str = DEFAULT_CARRY  # flow-propagation: what the flow carries (edit | residual)


def flow_row_name(estimator: str, strategy: str = DEFAULT_STRATEGY, carry: str = DEFAULT_CARRY) -> str:
    """`flow propagation (<estimator>)` for the default strategy and carry; otherwise the strategy and, when it is not
    the default, `carry <carry>` follow: `flow propagation (dis, direct)`, `flow propagation (dis, direct, carry edit)`.
    """
    parts = [estimator] + ([strategy] if strategy != DEFAULT_STRATEGY or carry != DEFAULT_CARRY else []) + \
        ([f"carry {carry}"] if carry != DEFAULT_CARRY else [])
    return f"flow propagation ({', '.join(parts)})"


def flow_variants(estimator: str, default_estimator: str = "dis") -> list[tuple[str, str]]:
    """(strategy, carry) pairs measured for an estimator: every strategy; both carries for the default estimator."""
    strategies = [DEFAULT_STRATEGY, *(s for s in STRATEGIES if s != DEFAULT_STRATEGY)]
    carries = [DEFAULT_CARRY, *(c for c in CARRIES if c != DEFAULT_CARRY)] if estimator == default_estimator \
        else [DEFAULT_CARRY]
    return [(s, c) for c in carries for s in strategies]


FLOW_ESTIMATORS = ("dis", "farneback", "dualtvl1")
"""Estimators of the flow-propagation rows (RAFT needs a local weights file: `bench real --flow-weights`). DualTVL1
costs seconds per pair, so only its default-strategy row is run."""
FLOW_METHODS = tuple(
    Method(flow_row_name(e, s, c), "flow-propagation", estimator=e, strategy=s, carry=c)
    for e in FLOW_ESTIMATORS
    for s, c in flow_variants(e)
    if e != "dualtvl1" or (s == DEFAULT_STRATEGY and c == DEFAULT_CARRY)
)
DEFAULT_FLOW = next(m for m in FLOW_METHODS if m.name == flow_row_name(FlowSettings().estimator))
"""Flow propagation at its default settings (estimator, strategy, carry): what `warp` and the nodes do unless told."""
UNMEASURED = {flow_row_name("raft"): "needs a local RAFT weights file: measured by `bench real --flow-weights`"}


COPY = Method("copy reference", "copy")
COLOUR_TRANSFER = Method("colour transfer (no flow)", "colour-transfer")
FLOW_EXACT = Method("flow warp (exact flow)", "flow-exact")
FLOW_ESTIMATED = Method("flow warp (Horn-Schunck)", "flow-estimated")
NO_PREVIOUS = Method("no previous frame", "model", NO_PREV)
COPY_PREVIOUS = Method("copy true previous frame", "copy-previous")
TEACHER_FORCED = Method("paper, teacher-forced", "teacher-forced", MAIN)
PAPER = Method("paper (autoregressive)", "model", MAIN)
NOISE_AUGMENTED = Method("+ noise augmentation", "model", NOISE_AUG)
OWN_ROLLOUT = Method("+ own-rollout training", "model", ROLLOUT)
ANCHORED = Method("+ statistics anchoring", "model", MAIN, ANCHOR_STRENGTH)
ALL_CONTROLS = Method("all drift controls", "model", DRIFT, ANCHOR_STRENGTH)

QUALITY_METHODS = (COPY, FLOW_EXACT, FLOW_ESTIMATED, *FLOW_METHODS, NO_PREVIOUS, COPY_PREVIOUS, TEACHER_FORCED, PAPER,
                   NOISE_AUGMENTED, OWN_ROLLOUT, ANCHORED, ALL_CONTROLS)
"""Rows of `bench quality`, in table order."""
DEMO_FLOW_METHODS = (DEFAULT_FLOW, COLOUR_TRANSFER, COPY)
"""The demo's first table, in order: flow propagation at its defaults, then the two baselines without motion."""
DEMO_MODEL_METHODS = (replace(PAPER, name="tiny PropDPM"), replace(NOISE_AUGMENTED, name="tiny PropDPM + noise aug."),
                      replace(NO_PREVIOUS, name="tiny PropDPM, no previous frame"))
"""The demo's second table: the tiny shipped PropDPMs (synthetic domain only) under the demo's names; the first is
the one its strip and mp4 show."""


def colour_transfer(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(K, H, W, 3) source frames through the colour mapping fitted between source frame 0 and the edited (1, H, W,
    3) reference (motion.colour.fit_edit_mapping), no flow: what flow propagation's fill gives every pixel."""
    from ..motion.colour import fit_edit_mapping

    return fit_edit_mapping(source[0], reference[0]).apply(source)


def run_method(method: Method, pair, models: dict[str, StandaloneModels], steps: int, seed: int,
               callback: FrameCallback | None = None) -> torch.Tensor:
    """(K, H, W, 3) frames of `method` on a clip pair from its edited frame 0; `models` maps checkpoint files to
    loaded models; `callback` sees each frame of an autoregressive run."""
    truth = pair.edit.frames
    reference = truth[:1]
    if method.kind == "copy":
        return reference.expand_as(truth)
    if method.kind == "colour-transfer":
        return colour_transfer(pair.source.frames, reference)
    if method.kind == "copy-previous":  # oracle: frame k-1 of the ground truth as frame k
        return torch.cat([reference, truth[:-1]])
    if method.kind == "flow-exact":
        return propagate_by_flow(reference[0], [f.permute(2, 0, 1) for f in pair.source.flow_back])
    if method.kind == "flow-estimated":
        return propagate_by_flow(reference[0], list(horn_schunck(pair.source.frames[:-1], pair.source.frames[1:])))
    if method.kind == "flow-propagation":
        engine = FlowEngine(FlowSettings(estimator=method.estimator))
        return flow_propagate(pair.source.frames, reference, [0], engine, strategy=method.strategy,
                              carry=method.carry).frames
    m = models[method.checkpoint]
    if method.kind == "teacher-forced":
        return teacher_forced(m, truth, pair.source.depth, steps=steps, seed=seed)
    return propagate_images(m, reference, pair.source.depth, 0, steps=steps, seed=seed,
                            anchor_strength=method.anchor, callback=callback)


def runs_here(method: Method) -> str | None:
    """None when `method` can run on this machine, else why not (a flow estimator missing cv2 or cv2.optflow)."""
    if method.estimator is None:
        return None
    try:
        FlowEngine(FlowSettings(estimator=method.estimator))
    except MagicPropError as err:
        return str(err)
    return None
