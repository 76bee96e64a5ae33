"""Figures without pyplot: no global backend switched, nothing left open in a notebook's session."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple

from .atomic_files import PathLike, atomic_path


def new_figure(figsize: Tuple[float, float], dpi: int = 100) -> Any:
    """A ``matplotlib.figure.Figure`` with its own Agg canvas (``figsize`` in inches)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically. Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path
