"""What the benchmarks show: the one text-table printer, the frame strip and the per-frame plot."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..fileio import atomic_path


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
