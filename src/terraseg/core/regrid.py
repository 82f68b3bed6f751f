"""A model-GSD grid over a scene, and the nearest map from it back to the scene grid.

When a scene's ground sample distance differs from the one a model was
trained at, the engine runs on a *model grid*: the scene's bounds cut into
pixels ``fy`` scene rows tall and ``fx`` scene columns wide (``f > 1``: the
model's pixels are coarser). It has the scene's origin, so model pixel
``(r, c)`` covers scene pixel coordinates ``[r·fy, (r+1)·fy) × [c·fx, (c+1)·fx)``.

Results come back to the scene grid by nearest neighbour: scene pixel ``i``
(column or row) takes the model pixel its centre falls in,
``j = floor((i + 0.5) / f)``. :meth:`GridMap.to_scene` turns a window of the
model grid into the scene window whose centres fall in it, plus the index map.
Invariant (a property test): the scene windows of model windows that partition
the model grid partition the scene grid, so each scene pixel is written
exactly once whatever the chunking.

Pure numpy; windows are :class:`~terraseg.core.window.PixelWindow` in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from terraseg.core.window import PixelWindow
from terraseg.errors import GridError

__all__ = ["GridMap"]


def _owner(i: npt.NDArray[np.int64] | int, f: float) -> npt.NDArray[np.int64]:
    """Model index whose pixel holds the centre of scene index ``i`` (float64, floor)."""
    return np.floor((np.asarray(i, np.float64) + 0.5) / f).astype(np.int64)


def _first(c: int, f: float) -> int:
    """The smallest scene index whose centre falls at model index ``c`` or later.

    Computed from :func:`_owner` itself (not a separate formula), so window
    boundaries and the index map can never disagree by a rounding error.
    """
    i = max(0, math.ceil(c * f - 0.5))
    while i > 0 and int(_owner(i - 1, f)) >= c:
        i -= 1
    while int(_owner(i, f)) < c:
        i += 1
    return i


@dataclass(frozen=True, slots=True)
class GridMap:
    """The model grid of a ``scene_shape`` raster resampled by ``(fy, fx)``.

    Attributes
    ----------
    scene_shape
        ``(rows, cols)`` of the scene grid.
    fy, fx
        Scene pixels per model pixel along y and x (``> 1``: model pixels are
        coarser, the scene is downsampled for the model).

    Examples
    --------
    >>> m = GridMap((10, 10), 2.5, 2.5)
    >>> m.model_shape
    (4, 4)
    >>> w, rows, cols = m.to_scene(PixelWindow(1, 0, 2, 4))
    >>> w
    PixelWindow(row_off=2, col_off=0, height=5, width=10)
    >>> rows.tolist()
    [0, 0, 0, 1, 1]
    """

    scene_shape: tuple[int, int]
    fy: float
    fx: float

    def __post_init__(self) -> None:
        if not (self.fy > 0 and self.fx > 0 and math.isfinite(self.fy * self.fx)):
            raise GridError(f"resampling factors must be positive, got ({self.fy}, {self.fx})")
        if min(self.scene_shape) < 1:
            raise GridError(f"scene shape must be positive, got {self.scene_shape}")

    @property
    def model_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the model grid: just enough to hold every scene pixel centre."""
        rows, cols = self.scene_shape
        return (int(_owner(rows - 1, self.fy)) + 1, int(_owner(cols - 1, self.fx)) + 1)

    @property
    def identity(self) -> bool:
        """Whether the model grid is the scene grid."""
        return self.fy == 1.0 and self.fx == 1.0

    def to_scene(
        self, window: PixelWindow
    ) -> tuple[PixelWindow, npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """The scene window whose pixel centres fall in model ``window``, and the index map.

        Returns ``(scene_window, rows, cols)``: ``array[..., rows[:, None], cols]``
        of an array over ``window`` is its nearest-neighbour resampling onto
        ``scene_window``. The scene window may be empty (a model window thinner
        than a scene pixel when upsampling). Only the part of ``window`` inside the
        model grid maps to scene pixels; the index map is relative to ``window``.
        """
        w = window.clip(self.model_shape)
        r0, r1 = self._span(w.row_off, w.row_stop, self.fy, 0)
        c0, c1 = self._span(w.col_off, w.col_stop, self.fx, 1)
        rows = _owner(np.arange(r0, r1), self.fy) - window.row_off
        cols = _owner(np.arange(c0, c1), self.fx) - window.col_off
        return (
            PixelWindow(r0, c0, r1 - r0, c1 - c0),
            rows.astype(np.intp, copy=False),
            cols.astype(np.intp, copy=False),
        )

    def _span(self, start: int, stop: int, f: float, axis: int) -> tuple[int, int]:
        n = self.scene_shape[axis]
        if start >= stop:
            return 0, 0
        return min(_first(start, f), n), min(_first(stop, f), n)

    def cover(self, scene_window: PixelWindow) -> PixelWindow:
        """The smallest model window whose :meth:`to_scene` covers ``scene_window``.

        Examples
        --------
        >>> GridMap((10, 10), 2.5, 2.5).cover(PixelWindow(3, 3, 2, 2))
        PixelWindow(row_off=1, col_off=1, height=1, width=1)
        """
        w = scene_window.clip(self.scene_shape)
        if w.is_empty:
            return PixelWindow(0, 0, 0, 0)
        r0, r1 = int(_owner(w.row_off, self.fy)), int(_owner(w.row_stop - 1, self.fy)) + 1
        c0, c1 = int(_owner(w.col_off, self.fx)), int(_owner(w.col_stop - 1, self.fx)) + 1
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("terraseg.GridMap", self.scene_shape, self.fy, self.fx)
