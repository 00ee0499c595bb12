"""One error family for everything a user can get wrong.

Every message is one line naming the input, the value it got, what was expected and how to fix it.

The classes say they live in the package itself (`__module__ = "magicprop"`, where `magicprop/__init__.py` exports
them): ComfyUI names an exception by its module and class (`execution.full_type_name`), and for a pack loaded from
custom_nodes/ the module is the pack folder's path, so users would read `/abs/path/custom_nodes/<pack>.magicprop.
errors.MagicPropError` instead of `magicprop.MagicPropError`.
"""

from __future__ import annotations


class MagicPropError(ValueError):
    """Bad input, a bad file or an impossible request; the message says which and what to do."""

    __module__ = "magicprop"


class CheckpointError(MagicPropError):
    """A file that is not a loadable PropDPM checkpoint (or not a file of the expected kind)."""

    __module__ = "magicprop"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP to the command line (a scheduler stopping a job, a closed terminal): the run stops as on
    Ctrl-C, its outputs closed (a valid shorter mp4, the PNG frames written) and logged. args: the signal's name and
    the exit status that reports it (128 + its number: 143 for SIGTERM, 129 for SIGHUP)."""

    __module__ = "magicprop"

    @property
    def status(self) -> int:
        return int(self.args[1]) if len(self.args) > 1 else 143
