"""Files: atomic writes (a crash or an interrupt never leaves a half-written checkpoint or output behind), local
model folders, and naming what a file is by its first bytes when it is not what was expected."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


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


def not_a_file(path: str | Path) -> str:
    """Why `path` is not a file, for a message: 'is a folder' or 'does not exist'."""
    return "is a folder" if Path(path).is_dir() else "does not exist"


def model_folder(path: str | Path, what: str, expected: str, kinds: tuple[str, ...] = ()) -> Path:
    """A local model folder (with config.json), or MagicPropError naming the input and what it should hold.

    `kinds`: the model classes or types the folder may hold (config.json's diffusers "_class_name", transformers
    "architectures" or "model_type"), checked before any weights are read; empty accepts any."""
    from ..errors import MagicPropError

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise MagicPropError(
            f"{what} {str(folder)!r}: expected a local folder with config.json and weights: {expected}."
        )
    if kinds:
        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            cfg = None
        found = ([cfg.get("_class_name")] + list(cfg.get("architectures") or []) + [cfg.get("model_type")]
                 if isinstance(cfg, dict) else [])
        if not any(f in kinds for f in found if f):
            held = next((f for f in found if f), "no model class")
            raise MagicPropError(
                f"{what} {str(folder)!r} holds {held} (its config.json): expected {expected}; point {what} at such a "
                "folder."
            )
    return folder


SNIFF_BYTES = 512
"""How much of a file `sniff` needs (a tar header's magic sits at offset 257)."""

_MAGIC = (  # (offset, bytes, what the file is)
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (4, b"ftyp", "an MP4/MOV video"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (257, b"ustar", "a tar archive"),
    (0, b"GGUF", "a GGUF model file (llama.cpp)"),
    (0, b"version https://git-lfs", "a Git LFS pointer, not the file itself (fetch it with `git lfs pull`)"),
)
_RIFF = {b"WEBP": "a WebP image", b"AVI ": "an AVI video", b"WAVE": "a WAV audio file"}


def sniff(head: bytes) -> str | None:
    """What a file is from its first SNIFF_BYTES bytes ("a PNG image", "a Python pickle" ...), or None if unknown.

    Magic numbers of the common image, video, archive and model formats; zip files holding a pickle are PyTorch
    .pt/.ckpt files. Only for naming a refused file in an error message: never a reason to accept one.
    """
    for offset, magic, what in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return what
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[:4] == b"PK\x03\x04":
        return "a PyTorch zip/pickle file (.pt/.ckpt)" if b".pkl" in head else "a zip archive"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    text = head.lstrip()[:16].lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a download that returned a web page?)"
    if text.startswith((b"{", b"[")):
        return "a JSON text file"
    return None
