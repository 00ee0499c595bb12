"""One error family for everything a user can get wrong.

Every message names the input, the value it got, what was expected and how to fix it (STYLE.md, rule 10).
"""

from __future__ import annotations


class MagicPropError(ValueError):
    """Bad input, a bad file or an impossible request; the message says which and what to do."""


class CheckpointError(MagicPropError):
    """A file that is not a loadable PropDPM checkpoint (or not a file of the expected kind)."""


def expect(condition: bool, message: str) -> None:
    """Raise MagicPropError(message) unless condition holds (user input checks; never `assert`)."""
    if not condition:
        raise MagicPropError(message)
