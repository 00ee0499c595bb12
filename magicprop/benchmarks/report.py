"""What the benchmarks show: the one text-table printer, the frame strip (and its row labels), the per-frame plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..io.fileio import atomic_path


def table(columns: Sequence[tuple[str, int]], rows: Mapping[str, Sequence[str]], name_width: int) -> str:
    """A text table: a `method` column `name_width` wide, then each (header, width) column right-aligned."""
    lines = [f"{'method':<{name_width}}" + "".join(f"{h:>{w}}" for h, w in columns)]
    for name, cells in rows.items():
        lines.append(f"{name:<{name_width}}" + "".join(f"{c:>{w}}" for c, (_, w) in zip(cells, columns)))
    return "\n".join(lines)


def strip(rows: Sequence[torch.Tensor], frames: Sequence[int], gap: int = 2) -> torch.Tensor:
    """A (H_total, W_total, 3) image: one row per clip in `rows`, the chosen frames side by side."""
    h, w = rows[0].shape[1:3]
    out = torch.ones(len(rows) * (h + gap) - gap, len(frames) * (w + gap) - gap, 3)
    for r, clip in enumerate(rows):
        for c, k in enumerate(frames):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = clip[k].float().clamp(0, 1)
    return out


def label_rows(image: torch.Tensor, labels: Sequence[str], row: int, gap: int = 2, margin: int = 160) -> torch.Tensor:
    """`image` (H, W, 3), made of rows `row` px high with `gap` px between them, behind a white `margin` px wide on
    its left where each row's label is written (black, PIL's default font; a label may hold line breaks)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from ..io.video import to_uint8

    canvas = Image.new("RGB", (margin + image.shape[1], image.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(to_uint8(image)), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=14)  # Pillow >= 10.1 with FreeType: a scalable font that ships with it
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    for r, label in enumerate(labels):
        box = draw.multiline_textbbox((0, 0), label, font=font, spacing=3)
        draw.multiline_text((6, r * (row + gap) + (row - (box[3] - box[1])) // 2), label, fill=(0, 0, 0), font=font,
                            spacing=3)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)


def plot(rows: Mapping[str, dict], title: str, path: Path) -> None:
    """PSNR and SSIM per frame after the reference, one curve per method, side by side; a PNG (1400 x 500 px)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for name, r in rows.items():
        for ax, metric in zip(axes, ("psnr_per_frame", "ssim_per_frame")):
            ax.plot(range(1, len(r[metric])), r[metric][1:], label=name, linewidth=1.2)
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM")):
        ax.set_xlabel("frames after the edited reference")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
