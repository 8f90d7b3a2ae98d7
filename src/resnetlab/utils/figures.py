"""The one figure helper: pyplot on the Agg backend, the house style, and a figure as PNG bytes.

Every plot (evaluation report, compare, experiments, a run's curves.png, ``data info``'s sample
grid) draws with this ``plt`` and ends in :func:`png_bytes`, so the backend is chosen once and every
figure is closed after saving (an open figure per call would leak memory in a long ``serve``).
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.frameon": True,
    "legend.framealpha": 0.92,
    "legend.edgecolor": "#e5e7eb",
    "figure.facecolor": "white",
}


def png_bytes(fig, *, dpi: int = 120, tight: bool = True, facecolor: str | None = None) -> bytes:
    """``fig`` as PNG bytes, then closed. ``tight`` crops the white margin (bbox_inches="tight")."""
    options = {"bbox_inches": "tight"} if tight else {}
    if facecolor is not None:
        options["facecolor"] = facecolor
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, **options)
    finally:
        plt.close(fig)
    return buffer.getvalue()


__all__ = ["STYLE", "plt", "png_bytes"]
