"""Chunk grid over the global tile lattice: pure geometry (numpy only).

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

:class:`PixelWindow` (:mod:`terraseg.core.window`) and :class:`TileLattice`
(:mod:`terraseg.core.lattice`) are defined beside this module and importable
from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypedDict

from terraseg.core.lattice import TileId, TileLattice, check_length
from terraseg.core.window import PixelWindow
from terraseg.errors import GridError

__all__ = ["Chunk", "ChunkGrid", "GridSummary", "PixelWindow", "TileId", "TileLattice"]


class GridSummary(TypedDict):
    """What :meth:`ChunkGrid.summary` returns: the plan as plain JSON-ready data."""

    shape: list[int]
    tile_px: int
    overlap_px: int
    stride_px: int
    chunk_px: int
    tiles_per_chunk: int
    chunk_core_px: int
    read_window_px: int
    n_tiles_yx: list[int]
    n_tiles: int
    shape_in_chunks: list[int]
    n_chunks: int
    pixels: int
    tile_pixels: int


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

    def __dask_tokenize__(self) -> tuple[object, ...]:
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
        check_length(rows)
        check_length(cols)
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

    def summary(self) -> GridSummary:
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

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("ChunkGrid", self.shape, self.lattice.__dask_tokenize__(), self.chunk_px)
