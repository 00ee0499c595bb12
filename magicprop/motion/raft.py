"""torchvision's RAFT (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow", ECCV 2020) as a
flow estimator, from a local weights file only (nothing is downloaded: the builder gets weights=None).

raft_small or raft_large is told apart by the weights file; .safetensors, or torchvision's .pth loaded with
torch.load(weights_only=True) so that no code in the file runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from ..errors import MagicPropError
from ..log import get_logger

logger = get_logger(__name__)

WEIGHTS_FILE = ("RAFT weights file (torchvision's raft_small or raft_large, or the RAFT authors' "
                "raft-things/sintel/kitti/small.pth; .safetensors or .pth)")
"""What a RAFT weights file may be, in every message that asks for one (the CLI's, the nodes', the loader's)."""


class RAFTSettings(Protocol):
    """What RAFT reads of `engine.FlowSettings` (structurally: the engine imports this module, not the reverse)."""

    weights: str | None
    device: str
    raft_iterations: int


class RAFTEstimator:
    """torchvision's RAFT from a local state dict; inputs scaled to [-1, 1] and edge-padded to a multiple of 8 and to
    at least 128 px per side (its correlation pyramid downsamples the 1/8-resolution features 3 more times)."""

    MIN_SIDE = 128
    refines_init = False  # torchvision's RAFT has no flow_init: its updates always start from zero flow

    @staticmethod
    def check_size(h: int, w: int) -> None:
        """Any size: frames are padded to MIN_SIDE."""

    def __init__(self, settings: RAFTSettings):
        self.check(settings)
        from torchvision.models.optical_flow import raft_large, raft_small

        state = load_raft_state(settings.weights)
        variant = raft_variant(state, settings.weights)
        model = (raft_small if variant == "raft_small" else raft_large)(weights=None, progress=False)
        missing = [k for k in model.state_dict() if k not in state]
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            detail = f"{len(missing)} tensors missing, e.g. {missing[0]!r}" if missing else str(e).splitlines()[-1]
            raise MagicPropError(
                f"flow weights {settings.weights!r} do not fit torchvision's {variant} ({detail}): use a complete "
                "RAFT checkpoint, torchvision's (e.g. Raft_Large_Weights.C_T_SKHT_V2 saved as .pth or .safetensors) "
                "or the RAFT authors' raft-things/sintel/kitti/small.pth."
            ) from None
        self.variant = variant
        self.iterations = settings.raft_iterations
        self.model = model.eval().requires_grad_(False).to(settings.device)
        logger.info("flow: torchvision %s loaded from %s on %s", variant, Path(settings.weights).name, settings.device)

    @staticmethod
    def check(settings: RAFTSettings) -> None:
        # worded for every caller (CLI, Python API, nodes): no flag or widget names here; OpticalFlowSequence refuses
        # a missing file in its raft_weights widget before this is reached (nodes/flow/optical_flow.py resolve_weights)
        fix = f"give a {WEIGHTS_FILE} as the flow weights, or use estimator 'dis' (no weights)"
        if not settings.weights:
            raise MagicPropError(f"flow weights: none given for estimator 'raft': {fix}.")
        if not Path(settings.weights).is_file():
            raise MagicPropError(f"flow weights {settings.weights!r}: no such file: {fix}.")
        if Path(settings.weights).suffix not in (".safetensors", ".pth", ".pt"):
            raise MagicPropError(f"flow weights {settings.weights!r}: expected a .safetensors or .pth file: {fix}.")
        try:
            import torchvision.models.optical_flow  # noqa: F401
        except ImportError as e:
            raise MagicPropError(f"flow estimator 'raft' needs torchvision ({e}): `pip install torchvision` "
                                 "matching your torch, or pick estimator 'dis'.") from None

    @torch.inference_mode()
    def __call__(self, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        """flow a->b; init is ignored: torchvision's RAFT takes no flow_init (its updates always start at zero)."""
        device = next(self.model.parameters()).device
        h, w = a.shape[1:3]
        ph, pw = max(self.MIN_SIDE, h + (-h) % 8) - h, max(self.MIN_SIDE, w + (-w) % 8) - w

        def prep(x):  # (N, h, w, 3) in [0, 1] -> (N, 3, h+ph, w+pw) in [-1, 1], edges replicated
            x = x.to(device, torch.float32).permute(0, 3, 1, 2) * 2 - 1
            return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

        flow = self.model(prep(a), prep(b), num_flow_updates=self.iterations)[-1]
        return flow[:, :, :h, :w].float().cpu()


def load_raft_state(path: str) -> dict[str, torch.Tensor]:
    """A RAFT state dict from .safetensors or torchvision's .pth (loaded with weights_only=True: no code runs)."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which file and what it should be
        raise MagicPropError(f"flow weights {path!r} could not be read ({type(e).__name__}: {e}): expected a "
                             f"{WEIGHTS_FILE}.") from None
    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MagicPropError(f"flow weights {path!r} hold no tensor state dict: expected a {WEIGHTS_FILE}.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return from_princeton_vl(state) if any(k.startswith("fnet.") for k in state) else state


PRINCETON_VL = (  # the RAFT authors' key names (princeton-vl/RAFT) -> torchvision's, applied in order
    (r"^fnet\.", "feature_encoder."), (r"^cnet\.", "context_encoder."),
    (r"^(feature|context)_encoder\.conv1\.", r"\1_encoder.convnormrelu.0."),
    (r"^(feature|context)_encoder\.norm1\.", r"\1_encoder.convnormrelu.1."),
    (r"^(feature|context)_encoder\.conv2\.", r"\1_encoder.conv."),
    (r"(layer\d\.\d)\.conv(\d)\.", r"\1.convnormrelu\2.0."),
    (r"(layer\d\.\d)\.norm(\d)\.", r"\1.convnormrelu\2.1."),
    (r"^update_block\.encoder\.convc(\d)\.", r"update_block.motion_encoder.convcorr\1.0."),
    (r"^update_block\.encoder\.convf(\d)\.", r"update_block.motion_encoder.convflow\1.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.conv([zrq])(\d)\.", r"update_block.recurrent_block.convgru\2.conv\1."),
    (r"^update_block\.gru\.conv([zrq])\.", r"update_block.recurrent_block.convgru1.conv\1."),
    (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."),
    (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
)


def from_princeton_vl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint of the RAFT authors' code (raft-things/sintel/kitti/small.pth) in torchvision's key layout.

    The architectures are the same; only names differ. A residual block's `norm3` is dropped: the authors' module
    registers the downsample's norm twice (as `norm3` and as `downsample.1`)."""
    out = {}
    for key, value in state.items():
        if re.search(r"layer\d\.\d\.norm3\.", key):
            continue
        for pattern, repl in PRINCETON_VL:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def raft_variant(state: dict[str, torch.Tensor], path: str = "weights") -> str:
    """'raft_small' or 'raft_large', from the first feature-encoder convolution's width (32 vs 64 channels)."""
    w = state.get("feature_encoder.convnormrelu.0.weight")
    if w is not None and w.shape[0] in (32, 64):
        return "raft_small" if w.shape[0] == 32 else "raft_large"
    raise MagicPropError(
        f"flow weights {path!r} are not a RAFT state dict: expected the key "
        "'feature_encoder.convnormrelu.0.weight' of raft_small or raft_large; use torchvision's weights "
        "(torchvision.models.optical_flow.Raft_Large_Weights / Raft_Small_Weights) or the RAFT authors' "
        "raft-things/sintel/kitti/small.pth."
    )
