"""The global lattice of model tiles over a raster (pure geometry).

One :class:`TileLattice` covers the whole scene with overlapping tiles of a
fixed size; every tile's core (the pixels it owns in the output) lies inside
it, and the cores partition the raster. See :mod:`terraseg.core.grid` for how
tiles are grouped into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

from terraseg.core.window import PixelWindow
from terraseg.errors import GridError

__all__ = ["TileId", "TileLattice", "check_length"]

TileId = tuple[int, int]
"""A lattice tile's ``(row_index, col_index)``."""


@dataclass(frozen=True, slots=True)
class TileLattice:
    """The global lattice of model tiles of ``tile_px``, neighbours overlapping by ``overlap_px``.

    Along an axis of ``n`` pixels, tile ``k`` covers ``[k * stride_px, k * stride_px + tile_px)``
    with ``stride_px = tile_px - overlap_px``; there are :meth:`count` tiles, the last one
    reaching ``n`` (it may run past the raster end, by less than a tile; the reader pads
    it). Tile ``k``'s core is ``[k * stride_px + lo_px, (k + 1) * stride_px + lo_px)``,
    where ``lo_px = overlap_px // 2``, except that the first core starts at 0 and the last
    ends at ``n``: cores partition ``[0, n)`` and each lies inside its tile. 2-D tiles are
    products of the two axes, with ids ``(i, j)``.

    Raises
    ------
    GridError
        If ``tile_px <= 0``, ``overlap_px < 0`` or ``overlap_px >= tile_px``.

    Examples
    --------
    >>> lat = TileLattice(512, 64)
    >>> lat.stride_px, lat.lo_px, lat.hi_px
    (448, 32, 32)
    >>> lat.count(1000), lat.tile_span(2), lat.core_span(2, 1000)
    (3, (896, 1408), (928, 1000))
    """

    tile_px: int
    overlap_px: int

    def __post_init__(self) -> None:
        if self.tile_px <= 0:
            raise GridError(
                f"tile_px must be a positive number of pixels, got {self.tile_px}; "
                "use e.g. tile_px=512",
                tile_px=self.tile_px,
            )
        if self.overlap_px < 0:
            raise GridError(
                f"overlap_px must be >= 0, got {self.overlap_px}; use 0 for no overlap",
                overlap_px=self.overlap_px,
            )
        if self.overlap_px >= self.tile_px:
            raise GridError(
                f"overlap_px={self.overlap_px} must be smaller than tile_px={self.tile_px}; "
                f"use e.g. overlap_px={self.tile_px // 8}",
                tile_px=self.tile_px,
                overlap_px=self.overlap_px,
            )

    @property
    def stride_px(self) -> int:
        """Distance between the origins of neighbouring tiles."""
        return self.tile_px - self.overlap_px

    @property
    def lo_px(self) -> int:
        """Offset of an inner tile's core start from the tile start (``overlap_px // 2``)."""
        return self.overlap_px // 2

    @property
    def hi_px(self) -> int:
        """Distance from an inner tile's core end to the tile end (``overlap_px - lo_px``)."""
        return self.overlap_px - self.lo_px

    def count(self, n: int) -> int:
        """Number of tiles along an axis of ``n`` pixels: ``max(1, ceil((n - overlap) / stride))``.

        Examples
        --------
        >>> TileLattice(8, 2).count(8), TileLattice(8, 2).count(9), TileLattice(8, 2).count(1)
        (1, 2, 1)
        """
        check_length(n)
        return max(1, -(-(n - self.overlap_px) // self.stride_px))

    def tile_span(self, k: int) -> tuple[int, int]:
        """``(start, stop)`` of tile ``k`` along an axis (``stop`` may pass the raster end)."""
        start = k * self.stride_px
        return (start, start + self.tile_px)

    def core_span(self, k: int, n: int) -> tuple[int, int]:
        """``(start, stop)`` of tile ``k``'s core along an axis of ``n`` pixels.

        Examples
        --------
        >>> lat = TileLattice(8, 3)
        >>> [lat.core_span(k, 20) for k in range(lat.count(20))]
        [(0, 6), (6, 11), (11, 16), (16, 20)]
        """
        last = self.count(n) - 1
        start = 0 if k == 0 else k * self.stride_px + self.lo_px
        stop = n if k == last else (k + 1) * self.stride_px + self.lo_px
        return (start, stop)

    def counts(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Number of tiles ``(rows, cols)`` over a raster of ``shape = (rows, cols)``."""
        return (self.count(shape[0]), self.count(shape[1]))

    def tile_window(self, tile_id: TileId) -> PixelWindow:
        """Scene-pixel window of tile ``(i, j)`` (may extend past the raster's bottom/right)."""
        r0, _ = self.tile_span(tile_id[0])
        c0, _ = self.tile_span(tile_id[1])
        return PixelWindow(r0, c0, self.tile_px, self.tile_px)

    def core_window(self, tile_id: TileId, shape: tuple[int, int]) -> PixelWindow:
        """Scene-pixel window of tile ``(i, j)``'s core in a raster of ``shape = (rows, cols)``."""
        r0, r1 = self.core_span(tile_id[0], shape[0])
        c0, c1 = self.core_span(tile_id[1], shape[1])
        return PixelWindow.from_bounds(r0, c0, r1, c1)

    def __dask_tokenize__(self) -> tuple[str, int, int]:
        return ("TileLattice", self.tile_px, self.overlap_px)


def check_length(n: int) -> None:
    """Raise :class:`~terraseg.errors.GridError` unless a raster axis of ``n`` pixels is >= 1."""
    if n < 1:
        raise GridError(
            f"raster axis length must be >= 1 pixel, got {n}; check the scene's shape",
            length=n,
        )
