"""The figure plumbing every summary figure shares: an off-screen figure of the house size, the
marks of a paired-difference plot, and a quiet tight layout before saving."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def new_axes(width: float = 6.4, ncols: int = 1) -> tuple[Any, Any]:
    """A figure 4.4 inches high and at least 6.4 wide, at 120 dpi on the Agg canvas (no display
    needed), and its one axes (``ncols`` > 1: that many side by side, as an array)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.4, width), 4.4), dpi=120)
    FigureCanvasAgg(fig)
    return fig, (fig.add_subplot() if ncols == 1 else fig.subplots(1, ncols))


def mark_paired(ax: Any, ylabel: str, title: str, context: str = "") -> None:
    """A paired-difference plot's zero line, y label, title (with the fixed settings under it)
    and grid."""
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f"\n{context}" if context else ""), fontsize=9)
    ax.grid(alpha=0.3)


def save(fig: Any, path: Path) -> Path:
    """Tight layout (its warnings about crowded labels silenced), then the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.tight_layout()
    fig.savefig(path)
    return path
