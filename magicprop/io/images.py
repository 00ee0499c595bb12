"""Frame geometry shared by the CLI and the trainer: resizing, cropping to the model's grid, image files."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MagicPropError
from ..log import get_logger
from .fileio import not_a_file

log = get_logger(__name__)

GRID = 16
"""Frame sides must be multiples of 16: the VAE downsamples by 8 and the appearance adapter pools by 2."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(K, H, W, C) in [0, 1] -> (K, height, width, C): bicubic, antialiased when shrinking, clamped to [0, 1]."""
    x = torch.nn.functional.interpolate(frames.movedim(-1, 1), size=(height, width), mode="bicubic", antialias=True)
    return x.movedim(1, -1).clamp(0, 1)


def resize_width(frames: torch.Tensor, width: int | None) -> torch.Tensor:
    """(K, H, W, C) -> (K, H', width, C), aspect kept (bicubic, antialiased); None keeps the size."""
    if width is None or width == frames.shape[2]:
        return frames
    if width < GRID:
        raise MagicPropError(f"width={width}: expected at least {GRID} pixels.")
    h, w = frames.shape[1:3]
    return resize(frames, max(1, round(h * width / w)), width)


def square(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(K, H, W, C) -> (K, size, size, C): the centred square crop, resized (training clips are square crops,
    MagicProp section 3.3.3)."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    frames = frames[:, top : top + s, left : left + s]
    return frames if s == size else resize(frames, size, size)


def grid_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred crop to multiples of GRID."""
    h, w = height // GRID * GRID, width // GRID * GRID
    if h == 0 or w == 0:
        raise MagicPropError(
            f"frame size {width}x{height} is smaller than {GRID}x{GRID}: PropDPM needs sides of at least {GRID} px."
        )
    return (height - h) // 2, (width - w) // 2, h, w


def crop_to_grid(frames: torch.Tensor, what: str = "frames", notice: bool = True) -> torch.Tensor:
    """Centre-crop (K, H, W, C) so both sides are multiples of 16, with a logged notice when anything is cut."""
    height, width = frames.shape[1:3]
    top, left, h, w = grid_crop_box(height, width)
    if (h, w) != (height, width) and notice:
        log.info("%s are %dx%d; cropped to %dx%d (sides must be multiples of %d).", what, width, height, w, h, GRID)
    return frames[:, top : top + h, left : left + w]


def load_image(path: str | Path, what: str = "image", alpha: bool = False) -> torch.Tensor:
    """An image file -> (1, H, W, 3) float32 in [0, 1] (PNG through `video.read_png`, other formats through PIL,
    turned upright by their EXIF orientation as viewers and ComfyUI's LoadImage show them); with `alpha`
    (1, H, W, 4), the fourth channel its alpha (1 where the file has none)."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise MagicPropError(f"{what} {str(p)!r} {not_a_file(p)}; pass the path of an image file (png, jpg ...).")
    if p.suffix.lower() == ".png":  # 16-bit PNGs keep their depth, as in a frame folder
        from .video import read_png

        return read_png(p, what, alpha)[None]
    try:
        with Image.open(p) as im:
            arr = np.asarray(ImageOps.exif_transpose(im).convert("RGBA" if alpha else "RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise MagicPropError(f"{what} {str(p)!r} is not a readable image ({e}).") from None
    return torch.from_numpy(arr)[None]


def save_image(path: str | Path, image: torch.Tensor) -> None:
    """(H, W, 3) float in [0, 1] -> PNG (atomic)."""
    from PIL import Image

    from .fileio import atomic_path
    from .video import to_uint8

    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")


def list_images(folder: str | Path, what: str = "image folder") -> list[Path]:
    """Image files of a folder in name order."""
    p = Path(folder)
    if not p.is_dir():
        raise MagicPropError(f"{what} {str(p)!r} is not a folder of images.")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MagicPropError(f"{what} {str(p)!r} has no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def check_reference_count(references: int, indices: int) -> None:
    """The command line's `--reference` images and `--reference-index` values come in pairs."""
    if references != indices:
        raise MagicPropError(
            f"--reference gives {references} images but --reference-index gives {indices} indices: give one frame "
            "index per edited reference."
        )
