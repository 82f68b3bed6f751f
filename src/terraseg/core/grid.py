"""Chunk grid and global tile lattice: pure geometry (numpy only).

Arrays are ``(band, y, x)``; shapes are ``(rows, cols)``; every quantity here is
in pixels of the scene grid, with the origin at the scene's top-left pixel.

The scene is covered by ONE global lattice of model tiles (:class:`TileLattice`).
A :class:`ChunkGrid` groups consecutive lattice tiles into chunks, so every tile
is computed exactly once and every pixel receives the same tile contributions
whatever the chunk size. Invariants (each one is a property test):

- tile cores partition the raster, and each core lies inside its tile;
- chunk cores partition the raster; every lattice tile belongs to one chunk;
- tiles never start before pixel 0 and run past the raster end by less than a tile;
- a chunk's interior is touched by no other chunk's tile, so only the strips
  around it (its seams) need the neighbours' contributions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from terraseg.errors import GridError

if TYPE_CHECKING:
    pass


__all__ = ["Chunk", "ChunkGrid", "PixelWindow", "TileId", "TileLattice"]

TileId = tuple[int, int]
"""A lattice tile's ``(row_index, col_index)``."""


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
        _check_length(n)
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


def _check_length(n: int) -> None:
    if n < 1:
        raise GridError(
            f"raster axis length must be >= 1 pixel, got {n}; check the scene's shape",
            length=n,
        )


@dataclass(frozen=True, slots=True)
class _AxisChunk:
    """One chunk's geometry along one axis (all spans are ``(start, stop)`` in pixels)."""

    tiles: range
    core: tuple[int, int]
    read: tuple[int, int]
    extent: tuple[int, int]
    interior: tuple[int, int]


def _axis_chunk(lattice: TileLattice, n: int, per_chunk: int, c: int) -> _AxisChunk:
    count = lattice.count(n)
    first, stop = c * per_chunk, min((c + 1) * per_chunk, count)
    last = stop - 1
    core = (lattice.core_span(first, n)[0], lattice.core_span(last, n)[1])
    read = (lattice.tile_span(first)[0], lattice.tile_span(last)[1])
    extent = (max(0, read[0]), min(n, read[1]))
    # Interior: the core minus whatever the neighbouring chunks' tiles reach. The previous
    # chunk's last tile reaches furthest forward; the next chunk's first tile starts earliest.
    lo = core[0] if first == 0 else max(core[0], lattice.tile_span(first - 1)[1])
    hi = core[1] if stop == count else min(core[1], lattice.tile_span(stop)[0])
    lo = min(lo, core[1])
    return _AxisChunk(range(first, stop), core, read, extent, (lo, max(lo, hi)))


def _window(rows: tuple[int, int], cols: tuple[int, int]) -> PixelWindow:
    return PixelWindow.from_bounds(rows[0], cols[0], rows[1], cols[1])


@dataclass(frozen=True, slots=True)
class Chunk:
    """A block of consecutive lattice tiles, the unit of work of one task.

    Attributes
    ----------
    index
        ``(ci, cj)``, the chunk's position in the chunk grid.
    core
        The pixels this chunk owns in the output; chunk cores partition the raster.
    tile_rows, tile_cols
        The lattice tile indices of the chunk, per axis.
    read_window
        Union of the chunk's tiles: what to read (boundless; may extend past the
        raster's bottom/right, never starts before 0).
    extent
        ``read_window`` clipped to the raster: the area its accumulator covers.
    interior
        The pixels of ``core`` that no other chunk's tile covers (final as soon as this
        chunk is done); may be empty. ``core`` minus ``interior`` are its seams.
    lattice, n_tiles_yx
        The global lattice and its tile counts ``(rows, cols)`` (for blending weights).
    """

    index: tuple[int, int]
    core: PixelWindow
    tile_rows: range
    tile_cols: range
    read_window: PixelWindow
    extent: PixelWindow
    interior: PixelWindow
    lattice: TileLattice
    n_tiles_yx: tuple[int, int]

    @property
    def n_tiles(self) -> int:
        """Number of lattice tiles in the chunk."""
        return len(self.tile_rows) * len(self.tile_cols)

    def tiles(self) -> list[tuple[TileId, PixelWindow]]:
        """``(tile_id, window)`` of every tile of the chunk, row-major, in scene pixels."""
        return [
            ((i, j), self.lattice.tile_window((i, j)))
            for i in self.tile_rows
            for j in self.tile_cols
        ]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (
            "Chunk",
            self.index,
            self.core.__dask_tokenize__(),
            (self.tile_rows.start, self.tile_rows.stop),
            (self.tile_cols.start, self.tile_cols.stop),
            self.read_window.__dask_tokenize__(),
            self.extent.__dask_tokenize__(),
            self.interior.__dask_tokenize__(),
            self.lattice.__dask_tokenize__(),
            self.n_tiles_yx,
        )


@dataclass(frozen=True, slots=True)
class ChunkGrid:
    """Chunks of ``m = chunk_px // lattice.stride_px`` lattice tiles per axis over a raster.

    The last chunk along an axis may hold fewer tiles. Chunk boundaries are lattice core
    boundaries, so the chunk cores partition the raster, every tile belongs to exactly one
    chunk, and the stitched result does not depend on ``chunk_px``. Chunks iterate
    row-major.

    Parameters
    ----------
    shape
        Raster ``(rows, cols)`` in pixels.
    lattice
        The global tile lattice.
    chunk_px
        Target chunk core size in pixels; must be at least ``lattice.tile_px``.

    Raises
    ------
    GridError
        If ``chunk_px < tile_px`` or the shape has an axis < 1.

    Examples
    --------
    >>> grid = ChunkGrid.from_shape((1000, 700), tile_px=128, overlap_px=16, chunk_px=256)
    >>> grid.tiles_per_chunk, grid.n_tiles_yx, grid.shape_in_chunks, len(grid)
    (2, (9, 7), (5, 4), 20)
    >>> c = grid.chunk(1, 0)
    >>> c.core
    PixelWindow(row_off=232, col_off=0, height=224, width=232)
    >>> c.interior
    PixelWindow(row_off=240, col_off=0, height=208, width=224)
    """

    shape: tuple[int, int]
    lattice: TileLattice
    chunk_px: int
    _m: int = field(init=False, repr=False, compare=False)
    _counts: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows, cols = self.shape
        _check_length(rows)
        _check_length(cols)
        if self.chunk_px < self.lattice.tile_px:
            raise GridError(
                f"chunk_px={self.chunk_px} must be >= tile_px={self.lattice.tile_px}; "
                f"use chunk_px={self.lattice.tile_px} or more (e.g. 4096)",
                chunk_px=self.chunk_px,
                tile_px=self.lattice.tile_px,
            )
        object.__setattr__(self, "_m", max(1, self.chunk_px // self.lattice.stride_px))
        object.__setattr__(self, "_counts", self.lattice.counts(self.shape))

    @classmethod
    def from_shape(
        cls,
        shape: tuple[int, int],
        *,
        tile_px: int = 512,
        overlap_px: int = 64,
        chunk_px: int = 4096,
    ) -> ChunkGrid:
        """Grid over a raster of ``shape = (rows, cols)`` from plain sizes in pixels."""
        return cls((int(shape[0]), int(shape[1])), TileLattice(tile_px, overlap_px), chunk_px)

    @property
    def tiles_per_chunk(self) -> int:
        """Lattice tiles per chunk along each axis (``m``)."""
        return self._m

    @property
    def n_tiles_yx(self) -> tuple[int, int]:
        """Lattice tile counts ``(rows, cols)``."""
        return self._counts

    @property
    def n_tiles(self) -> int:
        """Total number of lattice tiles (each is computed exactly once)."""
        return self._counts[0] * self._counts[1]

    @property
    def shape_in_chunks(self) -> tuple[int, int]:
        """Number of chunks ``(rows, cols)``."""
        m = self._m
        return (-(-self._counts[0] // m), -(-self._counts[1] // m))

    def __len__(self) -> int:
        rows, cols = self.shape_in_chunks
        return rows * cols

    def __iter__(self) -> Iterator[Chunk]:
        rows, cols = self.shape_in_chunks
        for ci in range(rows):
            for cj in range(cols):
                yield self.chunk(ci, cj)

    def chunk(self, ci: int, cj: int) -> Chunk:
        """The chunk at grid position ``(ci, cj)``."""
        rows, cols = self.shape_in_chunks
        if not (0 <= ci < rows and 0 <= cj < cols):
            raise GridError(
                f"chunk index ({ci}, {cj}) is outside the {rows} x {cols} chunk grid; "
                f"use 0 <= ci < {rows} and 0 <= cj < {cols}",
                index=(ci, cj),
            )
        ay = _axis_chunk(self.lattice, self.shape[0], self._m, ci)
        ax = _axis_chunk(self.lattice, self.shape[1], self._m, cj)
        return Chunk(
            index=(ci, cj),
            core=_window(ay.core, ax.core),
            tile_rows=ay.tiles,
            tile_cols=ax.tiles,
            read_window=_window(ay.read, ax.read),
            extent=_window(ay.extent, ax.extent),
            interior=_window(ay.interior, ax.interior),
            lattice=self.lattice,
            n_tiles_yx=self._counts,
        )

    def chunk_of_tile(self, tile_id: TileId) -> Chunk:
        """The chunk that computes lattice tile ``(i, j)``."""
        return self.chunk(tile_id[0] // self._m, tile_id[1] // self._m)

    def neighbours(self, chunk: Chunk) -> list[Chunk]:
        """The up to 8 chunks around ``chunk``, row-major.

        These are the only chunks whose tiles can reach ``chunk``'s core, so a chunk's
        seams are assembled from its own and its neighbours' accumulator pieces.
        """
        rows, cols = self.shape_in_chunks
        ci, cj = chunk.index
        return [
            self.chunk(a, b)
            for a in range(max(0, ci - 1), min(rows, ci + 2))
            for b in range(max(0, cj - 1), min(cols, cj + 2))
            if (a, b) != (ci, cj)
        ]

    def summary(self) -> dict[str, Any]:
        """Plain-data description of the plan (for ``terraseg plan`` and run metadata).

        Examples
        --------
        >>> s = ChunkGrid.from_shape((10000, 8000)).summary()
        >>> s["n_chunks"], s["n_tiles"], s["chunk_core_px"], s["read_window_px"]
        (6, 414, 4032, 4096)
        """
        lat, m = self.lattice, self._m
        read_px = (m - 1) * lat.stride_px + lat.tile_px
        return {
            "shape": list(self.shape),
            "tile_px": lat.tile_px,
            "overlap_px": lat.overlap_px,
            "stride_px": lat.stride_px,
            "chunk_px": self.chunk_px,
            "tiles_per_chunk": m,
            "chunk_core_px": m * lat.stride_px,
            "read_window_px": read_px,
            "n_tiles_yx": list(self._counts),
            "n_tiles": self.n_tiles,
            "shape_in_chunks": list(self.shape_in_chunks),
            "n_chunks": len(self),
            "pixels": self.shape[0] * self.shape[1],
            "tile_pixels": self.n_tiles * lat.tile_px * lat.tile_px,
        }

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("ChunkGrid", self.shape, self.lattice.__dask_tokenize__(), self.chunk_px)
