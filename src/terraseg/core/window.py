"""Pixel windows: rectangles of pixels in a raster's frame (pure geometry).

:class:`PixelWindow` is the unit every reader, writer and stitcher speaks in:
rows ``[row_off, row_off + height)`` and cols ``[col_off, col_off + width)`` of
the scene grid, with offsets that may run outside the raster (boundless reads).
"""

from __future__ import annotations

from dataclasses import dataclass

from terraseg.errors import GridError

__all__ = ["PixelWindow"]


@dataclass(frozen=True, slots=True)
class PixelWindow:
    """A rectangle of pixels in a raster's frame.

    Rows ``[row_off, row_off + height)``, cols ``[col_off, col_off + width)``.
    Offsets may be negative or run past the raster (a boundless read window).
    Sizes are never negative; a window with a zero size is empty.

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

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise GridError(
                f"PixelWindow size must not be negative, got height={self.height}, "
                f"width={self.width}; build windows from bounds with PixelWindow.from_bounds",
                height=self.height,
                width=self.width,
            )

    @classmethod
    def from_bounds(
        cls, row_start: int, col_start: int, row_stop: int, col_stop: int
    ) -> PixelWindow:
        """Window of rows ``[row_start, row_stop)`` and cols ``[col_start, col_stop)``.

        A stop before its start gives an empty window at the start.

        Examples
        --------
        >>> PixelWindow.from_bounds(2, 3, 5, 10)
        PixelWindow(row_off=2, col_off=3, height=3, width=7)
        >>> PixelWindow.from_bounds(4, 0, 1, 2).is_empty
        True
        """
        return cls(row_start, col_start, max(0, row_stop - row_start), max(0, col_stop - col_start))

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

    @property
    def size(self) -> int:
        """Number of pixels."""
        return self.height * self.width

    @property
    def is_empty(self) -> bool:
        """True when the window holds no pixel."""
        return self.height == 0 or self.width == 0

    def to_slices(self) -> tuple[slice, slice]:
        """``(row_slice, col_slice)`` for indexing an array in the same frame."""
        return (slice(self.row_off, self.row_stop), slice(self.col_off, self.col_stop))

    def to_rasterio(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((row_start, row_stop), (col_start, col_stop))``, accepted by rasterio as a window."""
        return ((self.row_off, self.row_stop), (self.col_off, self.col_stop))

    def translate(self, drow: int, dcol: int) -> PixelWindow:
        """The same window moved by ``drow`` rows and ``dcol`` cols.

        Examples
        --------
        >>> PixelWindow(1, 2, 3, 4).translate(10, -2)
        PixelWindow(row_off=11, col_off=0, height=3, width=4)
        """
        return PixelWindow(self.row_off + drow, self.col_off + dcol, self.height, self.width)

    def relative_to(self, other: PixelWindow) -> PixelWindow:
        """This window in the frame of ``other`` (whose top-left pixel becomes ``(0, 0)``).

        Examples
        --------
        >>> PixelWindow(12, 30, 2, 2).relative_to(PixelWindow(10, 20, 8, 16))
        PixelWindow(row_off=2, col_off=10, height=2, width=2)
        """
        return self.translate(-other.row_off, -other.col_off)

    def intersection(self, other: PixelWindow) -> PixelWindow:
        """The pixels in both windows; empty (zero size) when they do not overlap.

        Examples
        --------
        >>> PixelWindow(0, 0, 10, 10).intersection(PixelWindow(5, 8, 10, 10))
        PixelWindow(row_off=5, col_off=8, height=5, width=2)
        >>> PixelWindow(0, 0, 2, 2).intersection(PixelWindow(5, 5, 1, 1)).is_empty
        True
        """
        return PixelWindow.from_bounds(
            max(self.row_off, other.row_off),
            max(self.col_off, other.col_off),
            min(self.row_stop, other.row_stop),
            min(self.col_stop, other.col_stop),
        )

    def clip(self, shape: tuple[int, int]) -> PixelWindow:
        """The part of the window inside a raster of ``shape = (rows, cols)``.

        Examples
        --------
        >>> PixelWindow(-3, 90, 10, 20).clip((100, 100))
        PixelWindow(row_off=0, col_off=90, height=7, width=10)
        """
        return self.intersection(PixelWindow(0, 0, shape[0], shape[1]))

    def contains(self, other: PixelWindow) -> bool:
        """True when every pixel of ``other`` is in this window (an empty ``other`` always is).

        Examples
        --------
        >>> PixelWindow(0, 0, 10, 10).contains(PixelWindow(2, 2, 8, 8))
        True
        >>> PixelWindow(0, 0, 10, 10).contains(PixelWindow(2, 2, 9, 8))
        False
        """
        if other.is_empty:
            return True
        return (
            self.row_off <= other.row_off
            and self.col_off <= other.col_off
            and other.row_stop <= self.row_stop
            and other.col_stop <= self.col_stop
        )

    def split_around(self, inner: PixelWindow) -> list[PixelWindow]:
        """This window minus ``inner``, as up to 8 non-empty rectangles.

        The window is cut 3 x 3 by ``inner``'s row and col bounds and the centre is
        dropped; the pieces are disjoint and listed row-major. ``inner``'s bounds must
        lie inside this window (an empty ``inner`` may sit anywhere inside it, and then
        the pieces cover the whole window).

        Examples
        --------
        >>> outer = PixelWindow(0, 0, 4, 4)
        >>> parts = outer.split_around(PixelWindow(1, 1, 2, 2))
        >>> len(parts), sum(p.size for p in parts)
        (8, 12)
        >>> outer.split_around(PixelWindow(0, 0, 4, 3))
        [PixelWindow(row_off=0, col_off=3, height=4, width=1)]
        """
        if not (
            self.row_off <= inner.row_off <= inner.row_stop <= self.row_stop
            and self.col_off <= inner.col_off <= inner.col_stop <= self.col_stop
        ):
            raise GridError(
                f"cannot split {self} around {inner}: the inner window's bounds must lie "
                "inside the outer window; clip it first",
                outer=self,
                inner=inner,
            )
        rows = (self.row_off, inner.row_off, inner.row_stop, self.row_stop)
        cols = (self.col_off, inner.col_off, inner.col_stop, self.col_stop)
        parts = []
        for a in range(3):
            for b in range(3):
                if a == 1 and b == 1:
                    continue
                part = PixelWindow.from_bounds(rows[a], cols[b], rows[a + 1], cols[b + 1])
                if not part.is_empty:
                    parts.append(part)
        return parts

    def __dask_tokenize__(self) -> tuple[str, int, int, int, int]:
        return ("PixelWindow", self.row_off, self.col_off, self.height, self.width)
