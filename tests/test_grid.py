"""Properties of the global tile lattice and the chunk grid (pure geometry)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terraseg.core.grid import Chunk, ChunkGrid, PixelWindow, TileLattice
from terraseg.errors import GridError

PROPS = settings(max_examples=300, deadline=None)


@st.composite
def lattices(draw: st.DrawFn, max_tile: int = 512) -> TileLattice:
    tile = draw(st.integers(8, max_tile))
    overlap = draw(st.integers(0, tile - 1))
    return TileLattice(tile, overlap)


def axis_length(lat: TileLattice, k: int, cap: int = 10**9) -> st.SearchStrategy[int]:
    """Axis lengths (at most ``cap``) that give exactly ``k`` lattice tiles."""
    if k == 1:
        return st.integers(1, min(lat.tile_px, cap))
    s, o = lat.stride_px, lat.overlap_px
    return st.integers((k - 1) * s + o + 1, min(k * s + o, cap))


def tile_count(draw: st.DrawFn, m: int, kmax: int) -> int:
    """A tile count up to ``kmax`` that makes 1..4 chunks of ``m`` tiles (drawn first)."""
    n_chunks = draw(st.integers(1, min(4, -(-kmax // m))))
    return draw(st.integers((n_chunks - 1) * m + 1, min(n_chunks * m, kmax)))


@st.composite
def grids(draw: st.DrawFn, max_px: int = 3000) -> ChunkGrid:
    """Any raster 1..3000 px per axis, tile 8..512, overlap 0..tile-1, chunk >= tile.

    The number of chunks per axis is drawn first (mostly 1..4, sometimes any), so that
    multi-chunk layouts are common whatever the tile and chunk sizes.
    """
    lat = draw(lattices())
    t = lat.tile_px
    chunk_px = draw(st.one_of(st.integers(t, 2 * t), st.integers(t, t + max_px)))
    m = chunk_px // lat.stride_px
    kmax = lat.count(max_px)
    shape = []
    for _ in range(2):
        if draw(st.booleans()):
            shape.append(draw(st.integers(1, max_px)))
        else:
            shape.append(draw(axis_length(lat, tile_count(draw, m, kmax), cap=max_px)))
    return ChunkGrid((shape[0], shape[1]), lat, chunk_px)


@st.composite
def small_grids(draw: st.DrawFn, max_tiles: int = 1500) -> ChunkGrid:
    """Grids of at most ~``max_tiles`` tiles of 8..32 px, mostly several chunks per axis."""
    lat = draw(lattices(max_tile=32))
    chunk_px = draw(st.integers(lat.tile_px, 3 * lat.tile_px))
    m = chunk_px // lat.stride_px
    ky = tile_count(draw, m, max_tiles // 4)
    kx = tile_count(draw, m, max(1, max_tiles // ky))
    shape = (draw(axis_length(lat, ky)), draw(axis_length(lat, kx)))
    grid = ChunkGrid(shape, lat, chunk_px)
    assert grid.n_tiles_yx == (ky, kx)
    return grid


def spans(window: PixelWindow, axis: int) -> tuple[int, int]:
    if axis == 0:
        return (window.row_off, window.row_stop)
    return (window.col_off, window.col_stop)


def axis_chunks(grid: ChunkGrid, axis: int) -> list[Chunk]:
    n = grid.shape_in_chunks[axis]
    return [grid.chunk(c, 0) if axis == 0 else grid.chunk(0, c) for c in range(n)]


# --------------------------------------------------------------------------- lattice


@PROPS
@given(lat=lattices(), n=st.integers(1, 3000))
def test_tile_cores_partition_an_axis(lat: TileLattice, n: int) -> None:
    count = lat.count(n)
    cores = [lat.core_span(k, n) for k in range(count)]
    assert cores[0][0] == 0
    assert cores[-1][1] == n
    for (_, stop), (start, _) in zip(cores, cores[1:], strict=False):
        assert stop == start
    for k, (start, stop) in enumerate(cores):
        assert start < stop, "every core holds at least one pixel"
        t0, t1 = lat.tile_span(k)
        assert t0 <= start and stop <= t1, "a core lies inside its tile"
    if count > 1:
        assert (count - 1) * lat.stride_px + lat.lo_px == cores[-1][0]


@PROPS
@given(lat=lattices(), n=st.integers(1, 3000))
def test_tiles_cover_the_axis_and_stay_in_bounds(lat: TileLattice, n: int) -> None:
    count = lat.count(n)
    first, last = lat.tile_span(0), lat.tile_span(count - 1)
    assert first[0] == 0, "tiles never start before pixel 0"
    assert n <= last[1] < n + lat.tile_px, "the last tile reaches n, by less than a tile"
    # stride <= tile, so consecutive tiles leave no gap; the count is the smallest that works
    assert lat.stride_px <= lat.tile_px
    if count > 1:
        assert lat.tile_span(count - 2)[1] < n


def test_lattice_values() -> None:
    lat = TileLattice(512, 64)
    assert (lat.stride_px, lat.lo_px, lat.hi_px) == (448, 32, 32)
    assert TileLattice(8, 3).lo_px == 1 and TileLattice(8, 3).hi_px == 2
    assert lat.count(512) == 1 and lat.count(513) == 2 and lat.count(960) == 2
    assert lat.count(961) == 3
    assert lat.tile_window((1, 2)) == PixelWindow(448, 896, 512, 512)
    assert lat.core_window((0, 0), (100, 100)) == PixelWindow(0, 0, 100, 100)


@settings(max_examples=100, deadline=None)
@given(grid=small_grids())
def test_tile_cores_partition_the_raster_2d(grid: ChunkGrid) -> None:
    count = np.zeros(grid.shape, np.int32)
    ny, nx = grid.n_tiles_yx
    for i in range(ny):
        for j in range(nx):
            core = grid.lattice.core_window((i, j), grid.shape)
            assert grid.lattice.tile_window((i, j)).contains(core)
            count[core.to_slices()] += 1
    assert (count == 1).all()


# --------------------------------------------------------------------------- chunk grid


@PROPS
@given(grid=grids())
def test_chunk_axes_partition_and_bound(grid: ChunkGrid) -> None:
    lat = grid.lattice
    for axis in (0, 1):
        n, count = grid.shape[axis], grid.n_tiles_yx[axis]
        chunks = axis_chunks(grid, axis)
        tiles = [c.tile_rows if axis == 0 else c.tile_cols for c in chunks]
        # every lattice tile belongs to exactly one chunk
        assert [k for r in tiles for k in r] == list(range(count))
        cores = [spans(c.core, axis) for c in chunks]
        assert cores[0][0] == 0 and cores[-1][1] == n
        for (_, stop), (start, _) in zip(cores, cores[1:], strict=False):
            assert stop == start
        reads = [spans(c.read_window, axis) for c in chunks]
        for c, r, (r0, r1), (c0, c1) in zip(chunks, tiles, reads, cores, strict=True):
            # chunk core = union of its tiles' cores; read window = union of its tiles
            assert (c0, c1) == (lat.core_span(r[0], n)[0], lat.core_span(r[-1], n)[1])
            assert (r0, r1) == (lat.tile_span(r[0])[0], lat.tile_span(r[-1])[1])
            assert 0 <= r0 <= c0 < c1 <= r1
            assert r1 - n < lat.tile_px, "read windows pass the raster end by < a tile"
            assert len(r) <= grid.tiles_per_chunk
            assert spans(c.extent, axis) == (max(r0, 0), min(r1, n))
            i0, i1 = spans(c.interior, axis)
            assert c0 <= i0 <= i1 <= c1, "interior lies inside the core"
        for k, chunk in enumerate(chunks):
            i0, i1 = spans(chunk.interior, axis)
            c0, c1 = cores[k]
            # read windows grow monotonically, so only the adjacent chunks can come close:
            if k > 0:
                assert reads[k - 1][1] <= i0 or i0 == i1, "no other tile touches the interior"
                assert reads[k - 1][0] < reads[k][0] and reads[k - 1][1] < reads[k][1]
            if k + 1 < len(chunks):
                assert i1 <= reads[k + 1][0] or i0 == i1
            # ... and chunks two away never reach the core: neighbours suffice for seams
            if k > 1:
                assert reads[k - 2][1] <= c0
            if k + 2 < len(chunks):
                assert c1 <= reads[k + 2][0]
            # the interior is exactly the part of the core no neighbour reaches
            lo = max(c0, reads[k - 1][1]) if k > 0 else c0
            hi = min(c1, reads[k + 1][0]) if k + 1 < len(chunks) else c1
            if lo < hi:
                assert (i0, i1) == (lo, hi)
            else:
                assert i0 == i1


@PROPS
@given(grid=grids(), data=st.data())
def test_2d_chunk_is_product_of_axes(grid: ChunkGrid, data: st.DataObject) -> None:
    rows, cols = grid.shape_in_chunks
    ci = data.draw(st.integers(0, rows - 1))
    cj = data.draw(st.integers(0, cols - 1))
    chunk = grid.chunk(ci, cj)
    by_row, by_col = grid.chunk(ci, 0), grid.chunk(0, cj)
    for name in ("core", "read_window", "extent", "interior"):
        w, wr, wc = getattr(chunk, name), getattr(by_row, name), getattr(by_col, name)
        assert spans(w, 0) == spans(wr, 0) and spans(w, 1) == spans(wc, 1)
    assert chunk.tile_rows == by_row.tile_rows and chunk.tile_cols == by_col.tile_cols
    assert chunk.extent == chunk.read_window.clip(grid.shape)
    assert chunk.read_window.row_off >= 0 and chunk.read_window.col_off >= 0
    corners = [
        (i, j)
        for i in (chunk.tile_rows[0], chunk.tile_rows[-1])
        for j in (chunk.tile_cols[0], chunk.tile_cols[-1])
    ]
    # tiny strides make huge chunks: list every tile only when there are few
    tiles = (
        chunk.tiles()
        if chunk.n_tiles <= 2000
        else [(tid, grid.lattice.tile_window(tid)) for tid in corners]
    )
    if chunk.n_tiles <= 2000:
        assert len(tiles) == chunk.n_tiles and {t for t, _ in tiles} >= set(corners)
    for tid, w in tiles:
        assert chunk.read_window.contains(w)
        assert grid.chunk_of_tile(tid).index == chunk.index
    neighbours = grid.neighbours(chunk)
    n_rows = min(ci + 1, rows - 1) - max(ci - 1, 0) + 1
    n_cols = min(cj + 1, cols - 1) - max(cj - 1, 0) + 1
    assert len(neighbours) == n_rows * n_cols - 1
    for nb in neighbours:
        assert max(abs(nb.index[0] - ci), abs(nb.index[1] - cj)) == 1
        assert nb.read_window.intersection(chunk.interior).is_empty


@settings(max_examples=100, deadline=None)
@given(grid=small_grids())
def test_chunks_brute_force_2d(grid: ChunkGrid) -> None:
    """Pixel-exact checks: cores partition, tiles cover, interiors untouched by others."""
    core_count = np.zeros(grid.shape, np.int32)
    tile_cover = np.zeros(grid.shape, np.int32)
    owner = np.full(grid.shape, -1, np.int64)  # chunk whose interior holds the pixel
    seen_tiles: set[tuple[int, int]] = set()
    chunks = list(grid)
    assert len(chunks) == len(grid) == grid.shape_in_chunks[0] * grid.shape_in_chunks[1]
    assert [c.index for c in chunks] == sorted(c.index for c in chunks), "row-major"
    for n, chunk in enumerate(chunks):
        core_count[chunk.core.to_slices()] += 1
        assert chunk.core.contains(chunk.interior)
        owner[chunk.interior.to_slices()] = n
        for tid, _ in chunk.tiles():
            assert tid not in seen_tiles
            seen_tiles.add(tid)
    assert (core_count == 1).all(), "chunk cores partition the raster"
    assert len(seen_tiles) == grid.n_tiles, "every lattice tile is in exactly one chunk"
    for n, chunk in enumerate(chunks):
        for _, w in chunk.tiles():
            sl = w.clip(grid.shape).to_slices()
            tile_cover[sl] += 1
            hit = owner[sl]
            assert ((hit == -1) | (hit == n)).all(), "another chunk's tile touches an interior"
    assert (tile_cover >= 1).all(), "every pixel is covered by a tile"
    # neighbours are the only chunks reaching a chunk's core
    for chunk in chunks:
        near = {nb.index for nb in grid.neighbours(chunk)} | {chunk.index}
        for other in chunks:
            if other.index not in near:
                assert other.read_window.intersection(chunk.core).is_empty


def test_interior_values() -> None:
    grid = ChunkGrid.from_shape((1000, 700), tile_px=128, overlap_px=16, chunk_px=256)
    c = grid.chunk(1, 1)
    # previous chunk's last tile (1) ends at 112 + 128; next chunk's first tile (4) at 448
    assert (c.interior.row_off, c.interior.row_stop) == (240, 448)
    assert (c.core.row_off, c.core.row_stop) == (232, 456)
    assert c.read_window == PixelWindow(224, 224, 240, 240)
    last = grid.chunk(4, 3)
    assert last.core.row_stop == 1000 and last.core.col_stop == 700
    assert last.extent.row_stop == 1000 and last.read_window.row_stop > 1000


def test_single_tile_raster() -> None:
    grid = ChunkGrid.from_shape((5, 3), tile_px=8, overlap_px=4, chunk_px=8)
    assert len(grid) == 1 and grid.n_tiles == 1
    (chunk,) = grid
    assert chunk.core == chunk.interior == chunk.extent == PixelWindow(0, 0, 5, 3)
    assert chunk.read_window == PixelWindow(0, 0, 8, 8)
    assert grid.neighbours(chunk) == []


def test_summary_is_plain_json() -> None:
    grid = ChunkGrid.from_shape((10000, 8000))
    s = grid.summary()
    assert json.loads(json.dumps(s)) == s
    assert s["n_chunks"] == len(grid) == 6
    assert s["n_tiles"] == grid.n_tiles == 23 * 18
    assert s["tiles_per_chunk"] == 9 and s["stride_px"] == 448


def test_value_objects_pickle_hash_and_tokenize() -> None:
    grid = ChunkGrid.from_shape((900, 1300), tile_px=64, overlap_px=8, chunk_px=300)
    chunk = grid.chunk(1, 2)
    for obj in (grid, chunk, grid.lattice, chunk.core):
        clone = pickle.loads(pickle.dumps(obj))
        assert clone == obj and hash(clone) == hash(obj)
        assert clone.__dask_tokenize__() == obj.__dask_tokenize__()
    assert grid.chunk(1, 2).__dask_tokenize__() != grid.chunk(2, 1).__dask_tokenize__()
    dask_base = pytest.importorskip("dask.base")
    assert dask_base.tokenize(chunk) == dask_base.tokenize(pickle.loads(pickle.dumps(chunk)))


# --------------------------------------------------------------------------- windows


windows = st.builds(
    PixelWindow, st.integers(-50, 50), st.integers(-50, 50), st.integers(0, 40), st.integers(0, 40)
)


@PROPS
@given(a=windows, b=windows)
def test_window_intersection(a: PixelWindow, b: PixelWindow) -> None:
    inter = a.intersection(b)
    assert inter == b.intersection(a) or (inter.is_empty and b.intersection(a).is_empty)
    mask_a = np.zeros((200, 200), bool)
    mask_b = np.zeros((200, 200), bool)
    mask_a[a.translate(100, 100).to_slices()] = True
    mask_b[b.translate(100, 100).to_slices()] = True
    assert (mask_a & mask_b).sum() == inter.size
    assert a.contains(inter) and b.contains(inter)


@PROPS
@given(outer=windows, data=st.data())
def test_split_around_partitions(outer: PixelWindow, data: st.DataObject) -> None:
    r0 = data.draw(st.integers(outer.row_off, outer.row_stop))
    r1 = data.draw(st.integers(r0, outer.row_stop))
    c0 = data.draw(st.integers(outer.col_off, outer.col_stop))
    c1 = data.draw(st.integers(c0, outer.col_stop))
    inner = PixelWindow.from_bounds(r0, c0, r1, c1)
    parts = outer.split_around(inner)
    assert len(parts) <= 8 and all(not p.is_empty for p in parts)
    count = np.zeros((100, 100), np.int32)
    for p in [*parts, inner]:
        assert outer.contains(p)
        count[p.translate(50, 50).to_slices()] += 1
    inside = np.zeros((100, 100), bool)
    inside[outer.translate(50, 50).to_slices()] = True
    assert (count[inside] == 1).all() and (count[~inside] == 0).all()


def test_window_helpers() -> None:
    w = PixelWindow(-3, 4, 10, 6)
    assert w.clip((5, 8)) == PixelWindow(0, 4, 5, 4)
    assert w.relative_to(PixelWindow(-3, 4, 1, 1)) == PixelWindow(0, 0, 10, 6)
    assert w.to_rasterio() == ((-3, 7), (4, 10))
    assert PixelWindow.from_bounds(5, 5, 2, 9) == PixelWindow(5, 5, 0, 4)
    assert PixelWindow(0, 0, 0, 3).size == 0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("tile_px", "overlap_px", "match"),
    [
        (0, 0, r"tile_px must be a positive number of pixels, got 0"),
        (-512, 0, r"tile_px .* got -512"),
        (512, -1, r"overlap_px must be >= 0, got -1"),
        (512, 512, r"overlap_px=512 must be smaller than tile_px=512; use e\.g\. overlap_px=64"),
        (8, 20, r"overlap_px=20 must be smaller than tile_px=8"),
    ],
)
def test_lattice_errors(tile_px: int, overlap_px: int, match: str) -> None:
    with pytest.raises(GridError, match=match) as info:
        TileLattice(tile_px, overlap_px)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_grid_errors() -> None:
    with pytest.raises(GridError, match=r"chunk_px=256 must be >= tile_px=512; use chunk_px=512"):
        ChunkGrid.from_shape((1000, 1000), tile_px=512, overlap_px=64, chunk_px=256)
    with pytest.raises(GridError, match=r"raster axis length must be >= 1 pixel, got 0"):
        ChunkGrid.from_shape((0, 1000))
    with pytest.raises(GridError, match=r"got -4"):
        TileLattice(8, 2).count(-4)
    grid = ChunkGrid.from_shape((1000, 1000), tile_px=128, overlap_px=16, chunk_px=512)
    with pytest.raises(GridError, match=r"chunk index \(3, 0\) is outside the 3 x 3 chunk grid"):
        grid.chunk(3, 0)
    with pytest.raises(GridError, match=r"chunk index \(0, -1\)"):
        grid.chunk(0, -1)


def test_window_errors() -> None:
    with pytest.raises(GridError, match=r"size must not be negative, got height=-1, width=3"):
        PixelWindow(0, 0, -1, 3)
    with pytest.raises(GridError, match=r"inner window's bounds must lie inside"):
        PixelWindow(0, 0, 4, 4).split_around(PixelWindow(2, 2, 4, 1))
