"""Atomic file writes: a crash or an interrupt never leaves a half-written checkpoint or output behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed over `path` in one step.

    On any exception the temporary file is removed and `path` (if it existed) is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # created like any new file (mode 0o666 minus the umask), unlike mkstemp's private 0o600
    tmp_path = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
    os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def model_folder(path: str | Path, what: str, expected: str) -> Path:
    """A local model folder (with config.json), or MagicPropError naming the input and what it should hold."""
    from .errors import MagicPropError

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise MagicPropError(f"{what} {str(folder)!r}: expected a local folder with config.json and weights: {expected}.")
    return folder
