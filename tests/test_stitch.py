"""Blending weights, accumulation and seam assembly.

The reference for every stitching test is ONE global accumulator over all lattice
tiles; per-chunk accumulation + split + assemble must reproduce it for any chunk size.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from terraseg.core.grid import ChunkGrid, PixelWindow, TileId, TileLattice
from terraseg.core.stitch import (
    Ramp,
    accumulate_tile,
    assemble,
    new_accumulator,
    normalize,
    quantize_probs,
    seam_windows,
    split_accumulator,
    tile_weights,
    to_labels,
    window_1d,
)
from terraseg.errors import ConfigError, GridError

PROPS = settings(max_examples=300, deadline=None)
RAMPS: tuple[Ramp, ...] = get_args(Ramp)

Model = Callable[[TileId, PixelWindow], NDArray[np.float32]]
BAD_RAMP: Any = "gauss"


@st.composite
def lattices(draw: st.DrawFn, max_tile: int = 48) -> TileLattice:
    tile = draw(st.integers(8, max_tile))
    return TileLattice(tile, draw(st.integers(0, tile - 1)))


def tile_count(draw: st.DrawFn, m: int, kmax: int) -> int:
    """A tile count up to ``kmax`` that makes 1..4 chunks of ``m`` tiles (drawn first)."""
    n_chunks = draw(st.integers(1, min(4, -(-kmax // m))))
    return draw(st.integers((n_chunks - 1) * m + 1, min(n_chunks * m, kmax)))


def axis_length(lat: TileLattice, k: int) -> st.SearchStrategy[int]:
    """Axis lengths that give exactly ``k`` lattice tiles."""
    if k == 1:
        return st.integers(1, lat.tile_px)
    s, o = lat.stride_px, lat.overlap_px
    return st.integers((k - 1) * s + o + 1, k * s + o)


@st.composite
def layouts(draw: st.DrawFn, max_tiles: int = 200) -> tuple[TileLattice, tuple[int, int], int]:
    """``(lattice, shape, chunk_px)`` with at most ~``max_tiles`` tiles, mostly multi-chunk."""
    lat = draw(lattices())
    chunk_px = draw(st.integers(lat.tile_px, 3 * lat.tile_px))
    m = chunk_px // lat.stride_px
    ky = tile_count(draw, m, max_tiles // 2)
    kx = tile_count(draw, m, max(1, max_tiles // ky))
    shape = (draw(axis_length(lat, ky)), draw(axis_length(lat, kx)))
    assert lat.counts(shape) == (ky, kx)
    return lat, shape, chunk_px


@st.composite
def scenes(draw: st.DrawFn, max_tiles: int = 200) -> tuple[TileLattice, tuple[int, int]]:
    """A lattice and a raster shape with at most ~``max_tiles`` tiles."""
    lat, shape, _ = draw(layouts(max_tiles))
    return lat, shape


def all_tiles(lat: TileLattice, shape: tuple[int, int]) -> list[tuple[TileId, PixelWindow]]:
    ny, nx = lat.counts(shape)
    return [((i, j), lat.tile_window((i, j))) for i in range(ny) for j in range(nx)]


def global_accumulator(
    lat: TileLattice, shape: tuple[int, int], model: Model, n_classes: int, ramp: Ramp
) -> NDArray[np.float32]:
    """The reference: one accumulator over the whole raster and every lattice tile."""
    extent = PixelWindow(0, 0, *shape)
    acc = new_accumulator(n_classes, extent)
    counts = lat.counts(shape)
    for tid, win in all_tiles(lat, shape):
        probs = model(tid, win)
        if probs.size:  # an empty array stands for a skipped tile
            accumulate_tile(acc, extent, win, probs, tile_weights(lat, tid, counts, ramp=ramp))
    return acc


def chunked_accumulator(
    grid: ChunkGrid,
    model: Model,
    n_classes: int,
    ramp: Ramp,
    rng: random.Random | None = None,
) -> NDArray[np.float32]:
    """The chunked protocol: per-chunk accumulate, split, then assemble every seam.

    With ``rng``, chunks and the pieces summed into each seam come in shuffled order.
    """
    out = np.full((n_classes + 1, *grid.shape), np.nan, np.float32)
    pieces = {}
    chunks = list(grid)
    if rng is not None:
        rng.shuffle(chunks)
    for chunk in chunks:
        acc = new_accumulator(n_classes, chunk.extent)
        for tid, win in chunk.tiles():
            probs = model(tid, win)
            if probs.size:
                accumulate_tile(acc, chunk.extent, win, probs, tile_weights(grid.lattice, tid, grid.n_tiles_yx, ramp=ramp))
        interior, pieces[chunk.index] = split_accumulator(acc, chunk)
        assert interior.shape == (n_classes + 1, *chunk.interior.shape)
        region = out[(slice(None), *chunk.interior.to_slices())]
        assert np.isnan(region).all(), "interiors of different chunks never overlap"
        region[...] = interior
    for chunk in chunks:
        group = [p for c in [chunk, *grid.neighbours(chunk)] for p in pieces[c.index]]
        if rng is not None:
            rng.shuffle(group)
        for window in seam_windows(chunk):
            region = out[(slice(None), *window.to_slices())]
            assert np.isnan(region).all(), "seams and interiors never overlap"
            region[...] = assemble(window, group, n_classes + 1)
    assert not np.isnan(out).any(), "interiors and seams cover the raster"
    return out


def fake_model(n_classes: int, skip: float = 0.0) -> Model:
    """Deterministic scores that depend on the tile id and the pixel position."""

    def model(tid: TileId, win: PixelWindow) -> NDArray[np.float32]:
        i, j = tid
        if skip and ((i * 7919 + j * 104729) % 1000) / 1000 < skip:
            return np.zeros((0, 0, 0), np.float32)
        r = np.arange(win.row_off, win.row_stop)[:, None]
        c = np.arange(win.col_off, win.col_stop)[None, :]
        chans = [
            np.sin(0.37 * i + 0.11 * r + 0.5 * k) * np.cos(0.23 * j + 0.07 * c - k) + 0.1 * k
            for k in range(n_classes)
        ]
        return np.stack(chans).astype(np.float32)

    return model


def coordinate_model(shape: tuple[int, int]) -> Model:
    """Identity model on a raster whose two bands hold each pixel's row and col."""
    rows, cols = shape
    image = np.full((2, rows + 600, cols + 600), -1e6, np.float32)  # padding: garbage
    image[0, :rows, :cols] = np.arange(rows)[:, None]
    image[1, :rows, :cols] = np.arange(cols)[None, :]

    def model(tid: TileId, win: PixelWindow) -> NDArray[np.float32]:
        return image[(slice(None), *win.to_slices())]

    return model


# --------------------------------------------------------------------------- weights


@PROPS
@given(
    tile=st.integers(1, 512),
    data=st.data(),
    n=st.integers(1, 3000),
    ramp=st.sampled_from(RAMPS),
)
def test_window_1d_is_a_partition_of_unity(
    tile: int, data: st.DataObject, n: int, ramp: Ramp
) -> None:
    lat = TileLattice(tile, data.draw(st.integers(0, tile - 1)))
    count = lat.count(n)
    total = np.zeros(count * lat.stride_px + lat.tile_px)
    for k in range(count):
        w = window_1d(tile, lat.overlap_px, ramp=ramp, first=k == 0, last=k == count - 1)
        assert w.shape == (tile,) and w.min() >= 0.0 and w.max() <= 1.0 + 1e-12
        total[k * lat.stride_px : k * lat.stride_px + tile] += w
    np.testing.assert_allclose(total[:n], 1.0, rtol=0, atol=1e-12)


@PROPS
@given(scene=scenes(), ramp=st.sampled_from(RAMPS))
def test_tile_weights_are_a_partition_of_unity_2d(
    scene: tuple[TileLattice, tuple[int, int]], ramp: Ramp
) -> None:
    lat, shape = scene
    counts = lat.counts(shape)
    total = np.zeros((shape[0] + lat.tile_px, shape[1] + lat.tile_px))
    for tid, win in all_tiles(lat, shape):
        w = tile_weights(lat, tid, counts, ramp=ramp)
        assert w.dtype == np.float32 and w.shape == (lat.tile_px, lat.tile_px)
        total[win.to_slices()] += w
    np.testing.assert_allclose(total[: shape[0], : shape[1]], 1.0, rtol=0, atol=1e-6)


@PROPS
@given(scene=scenes())
def test_none_ramp_crops_to_the_tile_core(scene: tuple[TileLattice, tuple[int, int]]) -> None:
    lat, shape = scene
    counts = lat.counts(shape)
    for tid, win in all_tiles(lat, shape):
        w = tile_weights(lat, tid, counts, ramp="none")
        inside = win.clip(shape)
        got = np.zeros(shape, np.float32)
        got[inside.to_slices()] = w[inside.relative_to(win).to_slices()]
        want = np.zeros(shape, np.float32)
        want[lat.core_window(tid, shape).to_slices()] = 1
        np.testing.assert_array_equal(got, want)


@PROPS
@given(tile=st.integers(2, 512), data=st.data(), ramp=st.sampled_from(["cosine", "linear"]))
def test_ramp_formula_when_overlap_is_at_most_half_a_tile(
    tile: int, data: st.DataObject, ramp: Ramp
) -> None:
    overlap = data.draw(st.integers(1, tile // 2))
    w = window_1d(tile, overlap, ramp=ramp, first=False, last=False)
    x = (np.arange(overlap) + 0.5) / overlap
    up = np.sin(np.pi / 2 * x) ** 2 if ramp == "cosine" else x
    down = np.cos(np.pi / 2 * x) ** 2 if ramp == "cosine" else 1 - x
    np.testing.assert_allclose(w[:overlap], up, atol=1e-12)
    np.testing.assert_allclose(w[tile - overlap :], down, atol=1e-12)
    np.testing.assert_array_equal(w[overlap : tile - overlap], 1.0)
    assert (window_1d(tile, overlap, ramp=ramp, first=True, last=True) == 1.0).all()
    first = window_1d(tile, overlap, ramp=ramp, first=True, last=False)
    np.testing.assert_array_equal(first[: tile - overlap], 1.0)


def test_window_1d_edge_cases() -> None:
    assert (window_1d(8, 0, first=False, last=False) == 1).all()
    assert (window_1d(1, 0, ramp="none", first=False, last=False) == 1).all()
    # overlap 7 of 8 (stride 1): ramps narrowed to one pixel, still summing to 1
    w = window_1d(8, 7, first=False, last=False)
    assert np.count_nonzero(w) == 2 and w.sum() == pytest.approx(1.0)
    w = window_1d(8, 2, ramp="none", first=False, last=False)
    assert w.tolist() == [0, 1, 1, 1, 1, 1, 1, 0]


def test_tile_weights_are_cached_and_read_only() -> None:
    lat = TileLattice(64, 16)
    a = tile_weights(lat, (3, 4), (10, 10))
    assert a is tile_weights(lat, (5, 6), (10, 10)) is tile_weights(lat, (3, 4), (10, 10))
    assert a is not tile_weights(lat, (0, 4), (10, 10))
    assert a is not tile_weights(lat, (3, 4), (10, 10), ramp="linear")
    with pytest.raises(ValueError, match="read-only"):
        a[0, 0] = 2
    grid = ChunkGrid((600, 600), lat, 128)
    assert tile_weights(grid.lattice, (3, 4), grid.n_tiles_yx) is a


# --------------------------------------------------------------------------- stitching


@settings(max_examples=150, deadline=None)
@given(
    layout=layouts(),
    data=st.data(),
    ramp=st.sampled_from(RAMPS),
    n_classes=st.integers(1, 3),
    skip=st.sampled_from([0.0, 0.3]),
)
def test_result_does_not_depend_on_the_chunk_size(
    layout: tuple[TileLattice, tuple[int, int], int],
    data: st.DataObject,
    ramp: Ramp,
    n_classes: int,
    skip: float,
) -> None:
    lat, shape, chunk_px = layout
    model = fake_model(n_classes, skip)
    want = global_accumulator(lat, shape, model, n_classes, ramp)
    # one tile up to 3 tiles, most not a multiple of the stride
    more = data.draw(st.lists(st.integers(lat.tile_px, 3 * lat.tile_px), max_size=2))
    for size in [chunk_px, *more]:
        got = chunked_accumulator(ChunkGrid(shape, lat, size), model, n_classes, ramp)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    probs, valid = normalize(got)
    if skip == 0.0:
        assert valid.all()
        np.testing.assert_allclose(got[n_classes], 1.0, atol=1e-5)
    np.testing.assert_array_equal(valid, want[n_classes] > 0)


@pytest.mark.parametrize("ramp", RAMPS)
@settings(max_examples=100, deadline=None)
@given(layout=layouts())
def test_stitch_of_split_is_identity(
    ramp: Ramp, layout: tuple[TileLattice, tuple[int, int], int]
) -> None:
    """Identity model on a coordinate-encoding raster gives the raster back exactly."""
    lat, shape, chunk_px = layout
    grid = ChunkGrid(shape, lat, chunk_px)
    acc = chunked_accumulator(grid, coordinate_model(shape), 2, ramp)
    probs, valid = normalize(acc)
    assert valid.all()
    rows, cols = np.indices(shape)
    assert np.abs(probs[0] - rows).max() <= 1e-4
    assert np.abs(probs[1] - cols).max() <= 1e-4
    np.testing.assert_array_equal(np.rint(probs[0]), rows)


@PROPS
@given(
    layout=layouts(max_tiles=100),
    seed=st.integers(0, 2**32 - 1),
    ramp=st.sampled_from(RAMPS),
)
def test_result_does_not_depend_on_summation_order(
    layout: tuple[TileLattice, tuple[int, int], int], seed: int, ramp: Ramp
) -> None:
    lat, shape, chunk_px = layout
    grid = ChunkGrid(shape, lat, chunk_px)
    model = fake_model(2)
    ordered = chunked_accumulator(grid, model, 2, ramp)
    shuffled = chunked_accumulator(grid, model, 2, ramp, rng=random.Random(seed))
    np.testing.assert_allclose(shuffled, ordered, rtol=0, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(layout=layouts())
def test_split_pieces_and_seams_partition(
    layout: tuple[TileLattice, tuple[int, int], int],
) -> None:
    lat, shape, chunk_px = layout
    grid = ChunkGrid(shape, lat, chunk_px)
    for chunk in grid:
        acc = np.random.default_rng(0).random((2, *chunk.extent.shape), dtype=np.float32)
        interior, pieces = split_accumulator(acc, chunk)
        assert np.shares_memory(interior, acc)
        rebuilt = assemble(chunk.extent, [(chunk.interior, interior), *pieces], 2)
        np.testing.assert_array_equal(rebuilt, acc)
        assert len(pieces) <= 8
        cover = np.zeros(chunk.extent.shape, np.int32)
        for win, arr in pieces:
            assert not win.is_empty and arr.flags.c_contiguous
            assert not np.shares_memory(arr, acc)
            cover[win.relative_to(chunk.extent).to_slices()] += 1
        cover[chunk.interior.relative_to(chunk.extent).to_slices()] += 1
        assert (cover == 1).all()
        seams = seam_windows(chunk)
        assert len(seams) <= 8
        assert sum(w.size for w in seams) + chunk.interior.size == chunk.core.size
        assert all(chunk.core.contains(w) for w in seams)


# --------------------------------------------------------------------------- small functions


def test_accumulate_tile_clips_to_the_extent() -> None:
    extent = PixelWindow(10, 10, 4, 4)
    acc = new_accumulator(2, extent)
    tile = PixelWindow(12, 8, 4, 4)  # hangs off the bottom and the left
    probs = np.stack([np.full((4, 4), 0.25), np.full((4, 4), 0.75)])
    weights = np.full((4, 4), 0.5, np.float32)
    accumulate_tile(acc, extent, tile, probs, weights)
    accumulate_tile(acc, extent, PixelWindow(100, 100, 4, 4), probs, weights)  # misses
    assert acc[2].sum() == pytest.approx(0.5 * 2 * 2)
    np.testing.assert_array_equal(acc[2, 2:, :2], 0.5)
    np.testing.assert_array_equal(acc[0, 2:, :2], 0.125)
    np.testing.assert_array_equal(acc[1, 2:, :2], 0.375)
    assert acc[:, :2].sum() == 0 and acc[:, :, 2:].sum() == 0


def test_normalize_labels_and_quantize() -> None:
    acc = np.array(
        [
            [[0.2, 0.0, 1.5]],
            [[0.6, 0.0, 0.5]],
            [[0.8, 0.0, 2.0]],
        ],
        np.float32,
    )
    probs, valid = normalize(acc)
    assert probs.dtype == np.float32 and probs.shape == (2, 1, 3)
    np.testing.assert_allclose(probs[:, 0, 0], [0.25, 0.75])
    assert valid.tolist() == [[True, False, True]]
    assert probs[:, 0, 1].tolist() == [0.0, 0.0]
    labels = to_labels(probs, valid)
    assert labels.dtype == np.uint8 and labels.tolist() == [[1, 255, 0]]
    q = quantize_probs(probs, valid)
    assert q.dtype == np.uint8 and q[:, 0, 0].tolist() == [64, 190]
    assert q[:, 0, 1].tolist() == [255, 255]
    assert q.max() <= 255 and q[:, valid].max() <= 254
    # another nodata code is skipped by the probability codes
    q0 = quantize_probs(np.array([[[0.0, 1.0, 0.5]]]), np.array([[True, True, False]]), nodata=0)
    assert q0.tolist() == [[[1, 255, 0]]]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: window_1d(8, 2, ramp=BAD_RAMP, first=False, last=False),
            ConfigError,
            r"unknown blending ramp 'gauss'; use one of cosine, linear, none",
        ),
        (
            lambda: window_1d(8, 8, first=False, last=False),
            GridError,
            r"overlap_px=8 must be smaller than tile_px=8",
        ),
        (
            lambda: tile_weights(TileLattice(8, 2), (3, 0), (3, 3)),
            GridError,
            r"tile id \(3, 0\) is outside the 3 x 3 tile lattice",
        ),
        (
            lambda: accumulate_tile(
                new_accumulator(2, PixelWindow(0, 0, 4, 4)),
                PixelWindow(0, 0, 4, 4),
                PixelWindow(0, 0, 2, 2),
                np.zeros((3, 2, 2)),
                np.zeros((2, 2)),
            ),
            GridError,
            r"tile predictions \(3, 2, 2\) and weights \(2, 2\) do not fit 2 classes",
        ),
        (
            lambda: accumulate_tile(
                new_accumulator(2, PixelWindow(0, 0, 4, 4)),
                PixelWindow(0, 0, 5, 4),
                PixelWindow(0, 0, 2, 2),
                np.zeros((2, 2, 2)),
                np.zeros((2, 2)),
            ),
            GridError,
            r"accumulator of shape \(3, 4, 4\) does not match extent",
        ),
        (
            lambda: split_accumulator(
                np.zeros((2, 3, 3), np.float32),
                ChunkGrid.from_shape((50, 50), tile_px=8, overlap_px=2, chunk_px=8).chunk(0, 0),
            ),
            GridError,
            r"does not match chunk \(0, 0\)'s extent",
        ),
        (
            lambda: assemble(
                PixelWindow(0, 0, 2, 2), [(PixelWindow(0, 0, 1, 1), np.zeros((2, 2, 2)))], 2
            ),
            GridError,
            r"piece of shape \(2, 2, 2\) does not fit window",
        ),
        (
            lambda: to_labels(np.zeros((3, 2, 2)), np.ones((2, 2), bool), nodata=1),
            ConfigError,
            r"nodata=1 collides with the labels 0\.\.2",
        ),
        (
            lambda: quantize_probs(np.zeros((1, 2, 2)), np.ones((2, 2), bool), nodata=300),
            ConfigError,
            r"nodata=300 does not fit uint8",
        ),
    ],
)
def test_errors(call: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
