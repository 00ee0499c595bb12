"""The pack's loggers: one name space and one prefix wherever the pack was loaded from.

ComfyUI imports the pack from ``custom_nodes/<folder>`` under a module name made from that folder, and its console
prints bare messages (``%(message)s``). So a module's logger is named ``magicprop.<module>`` (not after the folder:
the CLI's level and the tests' ``caplog`` find it the same way everywhere), and every line starts with ``[MagicProp]``
so that it can be found among the host's and the other packs' lines.
"""

from __future__ import annotations

import logging

PREFIX = "[MagicProp] "


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return PREFIX + str(msg), kwargs


def get_logger(module: str) -> logging.LoggerAdapter:
    """The logger of the module named `module` (its ``__name__``), as ``magicprop.<path inside the pack>``."""
    parts = module.split(".")
    if "nodes" in parts:  # the ComfyUI nodes: <folder>.nodes.flow -> magicprop.nodes.flow
        tail = parts[parts.index("nodes"):]
    else:  # the core: [<folder>.]magicprop.motion.engine -> magicprop.motion.engine
        tail = parts[len(parts) - 1 - parts[::-1].index("magicprop") + 1:] if "magicprop" in parts else parts[-1:]
    return _Prefixed(logging.getLogger(".".join(["magicprop", *tail])), {})
