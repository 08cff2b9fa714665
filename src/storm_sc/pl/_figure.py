"""Figures and panels: where a plot draws, and saving or showing it when done."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from storm_sc._settings import logger


def check_save(save: str | os.PathLike | None) -> Path | None:
    """Validate a ``save=`` path before any drawing: its folder must exist and its suffix name a known format."""
    if save is None:
        return None
    if not isinstance(save, str | os.PathLike):
        raise TypeError(f"`save` must be a file path (str or Path) or None, got {type(save).__name__}.")
    path = Path(save).expanduser()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot save to {str(path)!r}: folder {str(path.parent)!r} does not exist.")
    formats = Figure().canvas.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in formats:
        raise ValueError(
            f"Cannot tell the file format of {str(path)!r} from its suffix; end the name with one of "
            f"{sorted('.' + f for f in formats)} (e.g. 'domains.png')."
        )
    return path


def check_flag(value: object, name: str, *, allow_none: bool = False) -> None:
    """Refuse a non-boolean where a switch is expected (``image="no"`` would otherwise count as True)."""
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False{' or None' if allow_none else ''}, got {value!r}.")


def check_fraction(value: object, name: str) -> None:
    """Refuse an opacity (or similar) outside ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be a number between 0 and 1, got {value!r}.")


def check_positive(value: object, name: str, *, allow_none: bool = True) -> None:
    """Refuse a size that is not a positive number."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number{' or None' if allow_none else ''}, got {value!r}.")


def panel_axes(
    n: int,
    ax: Axes | Sequence[Axes] | None,
    *,
    ncols: int,
    panel_size: tuple[float, float],
) -> tuple[Figure, list[Axes]]:
    """``n`` axes to draw into: the user's (one per panel) or a new figure with ``ncols`` panels per row."""
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(f"`ax` must be {n} matplotlib Axes (one per panel) or None; got {len(axes)} object(s).")
        return axes[0].figure, axes
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"`ncols` must be a positive integer, got {ncols!r}.")
    import matplotlib.pyplot as plt

    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig, grid = plt.subplots(
        rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False, layout="constrained"
    )
    flat = list(grid.ravel())
    for extra in flat[n:]:
        extra.set_visible(False)
    return fig, flat[:n]


def finish(fig: Figure, save: Path | None, show: bool | None, *, own_figure: bool) -> Figure | None:
    """Save (replacing an existing file, with a log line) and show the figure; return it unless it was shown.

    As scanpy's plots: ``show=None`` shows a figure the plot made itself (``own_figure``), not one drawn into the
    caller's axes, and a shown figure is not returned: Jupyter would draw a returned Figure a second time.
    """
    if save is not None:
        if save.exists():
            logger.warning("Replacing the existing file %s with the new figure.", save)
        fig.savefig(save, dpi=150, bbox_inches="tight")
        logger.info("saved figure to %s", save)
    if show is None:
        show = own_figure
    if not show:
        return fig
    import matplotlib.pyplot as plt

    plt.show()
    return None
