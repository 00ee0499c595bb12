"""One error family for everything a user can get wrong.

Every message is one line naming the input, the value it got, what was expected and how to fix it.
"""

from __future__ import annotations


class MagicPropError(ValueError):
    """Bad input, a bad file or an impossible request; the message says which and what to do."""


class CheckpointError(MagicPropError):
    """A file that is not a loadable PropDPM checkpoint (or not a file of the expected kind)."""

