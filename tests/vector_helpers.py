"""Helpers shared by the vectorization and centerline tests (not a test module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from affine import Affine

from terraseg.core.grid import PixelWindow

UTM = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 478151.0, 0.0, -0.5, 4647683.0)


def chunk_windows(shape: tuple[int, int], chunk_px: int) -> list[PixelWindow]:
    """Row-major core windows of ``chunk_px`` (the last row/col shorter) over ``shape``."""
    rows, cols = shape
    return [
        PixelWindow(r, c, min(chunk_px, rows - r), min(chunk_px, cols - c))
        for r in range(0, rows, chunk_px)
        for c in range(0, cols, chunk_px)
    ]


def reader(arr: np.ndarray[Any, Any], log: list[PixelWindow] | None = None) -> Callable[..., Any]:
    """A read function over an in-memory array that checks windows stay inside it."""

    def read(window: PixelWindow) -> np.ndarray[Any, Any]:
        assert 0 <= window.row_off and window.row_stop <= arr.shape[0]
        assert 0 <= window.col_off and window.col_stop <= arr.shape[1]
        if log is not None:
            log.append(window)
        return arr[window.to_slices()]

    return read
