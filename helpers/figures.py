"""Saving a figure as a PNG file and showing that same PNG in a notebook."""

from __future__ import annotations

import io
from pathlib import Path

from .io import atomic_write_bytes


def figure_png(fig, dpi: int = 100) -> bytes:
    """``fig`` rendered once as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_and_show(fig, path: str | Path, display: bool = True, dpi: int = 100) -> Path:
    """Save ``fig`` as ``path`` (atomically) and show that PNG in the notebook (rendered once, so
    the notebook and the file show the same picture)."""
    png = figure_png(fig, dpi)
    out = atomic_write_bytes(Path(path), png)
    if display:
        from IPython.display import Image
        from IPython.display import display as _display

        _display(Image(data=png, format="png"))
    return out
