"""MagicProp: motion-aware appearance propagation (Yan et al., arXiv 2309.00908), host-free core.

This package never imports ComfyUI. The ComfyUI nodes in ``nodes/`` are thin adapters over it; the CLI
(``python -m magicprop``) and the trainer use it with diffusers as the backend.
"""

from __future__ import annotations

import logging

from .errors import CheckpointError, MagicPropError, Terminated

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["CheckpointError", "MagicPropError", "Terminated", "__version__"]
