"""Chunk grid and global tile lattice: pure geometry (numpy only).

Arrays are ``(band, y, x)``; shapes are ``(rows, cols)``; every quantity here is
in pixels of the scene grid.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PixelWindow"]


@dataclass(frozen=True, slots=True)
class PixelWindow:
    """A rectangle of pixels: rows ``[row_off, row_off + height)``, cols ``[col_off, col_off + width)``.

    Offsets may be negative or run past the raster (a boundless read window).

    Examples
    --------
    >>> w = PixelWindow(10, 20, 5, 6)
    >>> w.to_slices()
    (slice(10, 15, None), slice(20, 26, None))
    >>> w.shape
    (5, 6)
    """

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_stop(self) -> int:
        return self.row_off + self.height

    @property
    def col_stop(self) -> int:
        return self.col_off + self.width

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        return (self.height, self.width)

    def to_slices(self) -> tuple[slice, slice]:
        """``(row_slice, col_slice)`` for indexing an array in the same frame."""
        return (slice(self.row_off, self.row_stop), slice(self.col_off, self.col_stop))

    def to_rasterio(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((row_start, row_stop), (col_start, col_stop))``, accepted by rasterio as a window."""
        return ((self.row_off, self.row_stop), (self.col_off, self.col_stop))

    def __dask_tokenize__(self) -> tuple[str, int, int, int, int]:
        return ("PixelWindow", self.row_off, self.col_off, self.height, self.width)
