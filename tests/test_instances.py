"""Tests for terraseg.instances: watershed, detector merge, global ids across chunks."""

from __future__ import annotations

import gc
import pickle
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import ndimage as ndi

from terraseg.core.grid import ChunkGrid, PixelWindow, TileLattice
from terraseg.errors import ConfigError, GridError, TerrasegError
from terraseg.instances import (
    Instance,
    InstanceMergeError,
    InstanceMerger,
    RelabelTable,
    TileDetections,
    face_links,
    instances_from_boundary,
    merge_tile_detections,
    rasterize_instances,
    summarize_chunk,
)

SHAPE = (1536, 1300)  # the tile, chunk and test sizes below do not divide it

# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> NDArray[np.uint32]:
    """A synthetic city's building-instance raster (touching terraces have distinct ids)."""
    from terraseg.synthetic import make_city

    path = Path(tmp_path_factory.mktemp("city")) / "city.tif"
    scene = make_city(path, size_px=SHAPE, seed=11)
    with rasterio.open(scene.truth_instances) as ds:
        arr: NDArray[np.uint32] = ds.read(1)
    assert arr.shape == SHAPE and int((np.unique(arr) > 0).sum()) > 500
    return arr


def cores(shape: tuple[int, int], chunk_px: int) -> dict[tuple[int, int], PixelWindow]:
    """Chunk cores of ``chunk_px`` (the last ones smaller), row-major."""
    rows, cols = shape
    return {
        (i, j): PixelWindow.from_bounds(
            i * chunk_px, j * chunk_px, min((i + 1) * chunk_px, rows), min((j + 1) * chunk_px, cols)
        )
        for i in range(-(-rows // chunk_px))
        for j in range(-(-cols // chunk_px))
    }


def grow(w: PixelWindow, halo_px: int, shape: tuple[int, int]) -> PixelWindow:
    return PixelWindow(
        w.row_off - halo_px, w.col_off - halo_px, w.height + 2 * halo_px, w.width + 2 * halo_px
    ).clip(shape)


def local_labels(arr: NDArray[np.integer], rng: np.random.Generator) -> NDArray[np.uint32]:
    """``arr``'s ids replaced by 1..n in a random order (0 stays 0): the merger can't cheat."""
    uniq, inv = np.unique(arr, return_inverse=True)
    has_bg = bool(uniq[0] == 0)
    n = uniq.size - int(has_bg)
    perm = rng.permutation(n) + 1
    lut = np.concatenate([[0], perm]) if has_bg else perm
    out: NDArray[np.uint32] = lut[inv.reshape(arr.shape)].astype(np.uint32)
    return out


def is_relabelling(a: NDArray[np.integer], b: NDArray[np.integer]) -> bool:
    """True when ``a`` and ``b`` are the same partition (a bijection of ids, 0 fixed)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    keys = np.unique((a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64))
    left, right = keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)
    return np.unique(left).size == keys.size == np.unique(right).size


def best_iou(result: NDArray[np.integer], ref: NDArray[np.integer]) -> NDArray[np.float64]:
    """For each id of ``ref`` (ascending), the best pixel IoU with an id of ``result``."""
    keys = (ref.astype(np.uint64) << np.uint64(32)) | result.astype(np.uint64)
    pk, cnt = np.unique(keys[(ref > 0) & (result > 0)], return_counts=True)
    a = (pk >> np.uint64(32)).astype(np.int64)
    b = (pk & np.uint64(0xFFFFFFFF)).astype(np.int64)
    sa = np.bincount(ref.ravel().astype(np.int64))
    sb = np.bincount(result.ravel().astype(np.int64))
    best = np.zeros(sa.size)
    np.maximum.at(best, a, cnt / (sa[a] + sb[b] - cnt))
    ids = np.flatnonzero(sa)
    return best[ids[ids > 0]]


def merge_oracle(
    truth: NDArray[np.uint32],
    chunks: dict[tuple[int, int], PixelWindow],
    *,
    halo_px: int = 1,
    order: list[tuple[int, int]] | None = None,
    seed: int = 0,
    windows: dict[tuple[int, int], PixelWindow] | None = None,
) -> tuple[InstanceMerger, RelabelTable, NDArray[np.uint32]]:
    """Feed each chunk its truth ids relabelled to local 1..n; return the merged raster."""
    merger = InstanceMerger(truth.shape, pixel_area_m2=0.25)
    labels = {}
    for key in order or list(chunks):
        core = chunks[key]
        win = windows[key] if windows else grow(core, halo_px, truth.shape)
        # each chunk's local ids depend on the chunk only, not on the order of arrival
        lab = local_labels(truth[win.to_slices()], np.random.default_rng((seed, *key)))
        labels[key] = (win, lab)
        merger.add_chunk(key, core, lab, window=win)
    table = merger.finalize()
    out = np.zeros(truth.shape, np.uint32)
    for key, core in chunks.items():
        win, lab = labels[key]
        out[core.to_slices()] = table.relabel(key, lab, window=win)
    return merger, table, out


def crossing_touching_pairs(
    truth: NDArray[np.uint32], chunks: dict[tuple[int, int], PixelWindow]
) -> int:
    """Pairs of touching buildings (distinct ids) of which at least one crosses a chunk face."""
    owner = np.zeros(truth.shape, np.int32)
    for n, core in enumerate(chunks.values()):
        owner[core.to_slices()] = n
    crossing = np.zeros(int(truth.max()) + 1, bool)
    for ax in (0, 1):
        a, b = (truth[:-1], truth[1:]) if ax == 0 else (truth[:, :-1], truth[:, 1:])
        oa, ob = (owner[:-1], owner[1:]) if ax == 0 else (owner[:, :-1], owner[:, 1:])
        crossing[a[(a == b) & (a > 0) & (oa != ob)]] = True
    pairs = set()
    for ax in (0, 1):
        a, b = (truth[:-1], truth[1:]) if ax == 0 else (truth[:, :-1], truth[:, 1:])
        hit = (a != b) & (a > 0) & (b > 0) & (crossing[a] | crossing[b])
        pairs |= {(int(min(x, y)), int(max(x, y))) for x, y in zip(a[hit], b[hit], strict=True)}
    return len(pairs)


def terrace_raster(rng: np.random.Generator, shape: tuple[int, int]) -> NDArray[np.uint32]:
    """Rectangles on random row/col cuts, most of them buildings with their own id: they touch."""
    rows = np.unique(np.concatenate([[0, shape[0]], rng.integers(1, shape[0], 12)]))
    cols = np.unique(np.concatenate([[0, shape[1]], rng.integers(1, shape[1], 12)]))
    out = np.zeros(shape, np.uint32)
    next_id = 1
    for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
        for c0, c1 in zip(cols[:-1], cols[1:], strict=True):
            if rng.random() < 0.8:
                out[r0:r1, c0:c1] = next_id
                next_id += 1
    return out


def boundary_classes(truth: NDArray[np.uint32]) -> NDArray[np.uint8]:
    """0 background, 1 interior (all 4 neighbours same id), 2 edge (other building pixels)."""
    p = np.pad(truth, 1, mode="edge")
    same = (
        (p[:-2, 1:-1] == truth)
        & (p[2:, 1:-1] == truth)
        & (p[1:-1, :-2] == truth)
        & (p[1:-1, 2:] == truth)
    )
    cls = np.zeros(truth.shape, np.uint8)
    cls[truth > 0] = 2
    cls[(truth > 0) & same] = 1
    return cls


# -- global ids across chunks: the oracle ----------------------------------------------------


@pytest.mark.parametrize("chunk_px", [100, 256, 300])
def test_oracle_merge_is_a_relabelling_of_the_truth(
    truth: NDArray[np.uint32], chunk_px: int
) -> None:
    chunks = cores(truth.shape, chunk_px)
    assert crossing_touching_pairs(truth, chunks) > 20  # the hard case is really exercised
    merger, table, out = merge_oracle(truth, chunks, halo_px=1, seed=chunk_px)
    n_truth = int((np.unique(truth) > 0).sum())
    assert table.n_instances == n_truth
    assert is_relabelling(out, truth)  # same count, every building IoU = 1
    assert np.array_equal(np.unique(out)[1:], np.arange(1, n_truth + 1))
    assert merger.n_pending_strips == 0


def test_oracle_merge_on_a_chunk_grid_with_its_extents(truth: NDArray[np.uint32]) -> None:
    grid = ChunkGrid.from_shape(truth.shape, tile_px=256, overlap_px=32, chunk_px=448)
    chunks = {c.index: c.core for c in grid}
    windows = {c.index: c.extent for c in grid}
    _, table, out = merge_oracle(truth, chunks, windows=windows, seed=3)
    assert is_relabelling(out, truth)
    assert table.n_instances == int((np.unique(truth) > 0).sum())


def test_oracle_attributes(truth: NDArray[np.uint32]) -> None:
    crop = truth[:700, :650]
    _, table, out = merge_oracle(crop, cores(crop.shape, 128), halo_px=1)
    ids = table.table.ids
    count = np.bincount(out.ravel(), minlength=ids.size + 1)[1:]
    assert np.array_equal(table.table.pixel_count, count)
    assert np.allclose(table.table.area_m2, count * 0.25)
    assert np.isnan(table.table.score).all()  # no scores were given
    for k in (0, ids.size // 2, ids.size - 1):
        rr, cc = np.nonzero(out == ids[k])
        assert tuple(table.table.bbox[k]) == (rr.min(), cc.min(), rr.max() + 1, cc.max() + 1)
    rec = table.table.to_records()[0]
    assert set(rec) == {"id", "score", "pixel_count", "area_m2", "bbox"} and rec["id"] == 1


def test_scores_are_averaged_over_each_instance() -> None:
    labels = np.array([[1, 1, 0, 2], [1, 1, 0, 2]])
    scores = np.array([[0.2, 0.4, 0.9, 1.0], [0.6, 0.8, 0.9, 0.5]])
    merger = InstanceMerger((2, 4))
    merger.add_chunk((0, 0), PixelWindow(0, 0, 2, 2), labels[:, :2], scores=scores[:, :2])
    merger.add_chunk((0, 1), PixelWindow(0, 2, 2, 2), labels[:, 2:], scores=scores[:, 2:])
    table = merger.finalize().table
    assert table.pixel_count.tolist() == [4, 2]
    assert np.allclose(table.score, [0.5, 0.75])


def test_without_halo_only_buildings_touching_on_a_face_can_merge(
    truth: NDArray[np.uint32],
) -> None:
    """Core-only labels: every truth building lies in one instance, none is split."""
    _, table, out = merge_oracle(truth, cores(truth.shape, 256), halo_px=0)
    n_truth = int((np.unique(truth) > 0).sum())
    keys = np.unique((truth.astype(np.uint64) << np.uint64(32)) | out.astype(np.uint64))
    t_ids = keys >> np.uint64(32)
    assert np.unique(t_ids).size == keys.size  # each truth id maps to one instance
    assert n_truth - 10 <= table.n_instances <= n_truth  # a few walls lie on a face


def test_touching_buildings_with_their_wall_on_the_face() -> None:
    """Two terrace units meet exactly on the chunk border; a third crosses it."""
    scene = np.zeros((8, 6), np.uint32)
    scene[1:4, 0:3] = 1  # unit 1 ends on row 3
    scene[4:7, 0:3] = 2  # unit 2 starts on row 4, touching unit 1 along the border
    scene[2:6, 4:6] = 3  # crosses the border
    top, bottom = PixelWindow(0, 0, 4, 6), PixelWindow(4, 0, 4, 6)

    def run(halo: int) -> NDArray[np.uint32]:
        merger = InstanceMerger(scene.shape)
        for key, core in (((0, 0), top), ((1, 0), bottom)):
            win = grow(core, halo, scene.shape)
            merger.add_chunk(key, core, scene[win.to_slices()] * 10, window=win)
        merger.finalize()
        return np.concatenate(
            [
                merger.relabel(
                    (0, 0),
                    scene[grow(top, halo, scene.shape).to_slices()] * 10,
                    window=grow(top, halo, scene.shape),
                ),
                merger.relabel(
                    (1, 0),
                    scene[grow(bottom, halo, scene.shape).to_slices()] * 10,
                    window=grow(bottom, halo, scene.shape),
                ),
            ]
        )

    assert is_relabelling(run(1), scene)
    no_halo = run(0)  # the wall is invisible without a halo: units 1 and 2 merge
    assert no_halo[2, 0] == no_halo[5, 0] and no_halo[2, 0] != no_halo[3, 4]


def test_diagonal_contact_at_a_chunk_corner() -> None:
    scene = np.zeros((4, 4), np.uint32)
    scene[0:2, 0:2] = 5
    scene[2, 2] = 5  # one object, 8-connected through the chunk corner
    scene[3, 3] = 5
    chunks = cores(scene.shape, 2)
    _, _, out = merge_oracle(scene, chunks, halo_px=1)
    assert is_relabelling(out, scene)
    _, table, _ = merge_oracle(scene, chunks, halo_px=0)
    assert table.n_instances == 2  # bare corners are never linked


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), chunk_px=st.integers(3, 40), halo=st.sampled_from([1, 2]))
def test_oracle_property_random_terraces(seed: int, chunk_px: int, halo: int) -> None:
    rng = np.random.default_rng(seed)
    scene = terrace_raster(rng, (int(rng.integers(20, 90)), int(rng.integers(20, 90))))
    _, table, out = merge_oracle(scene, cores(scene.shape, chunk_px), halo_px=halo, seed=seed)
    assert is_relabelling(out, scene)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), chunk_px=st.integers(40, 160), halo=st.sampled_from([0, 1, 4]))
def test_merge_does_not_depend_on_chunk_order(
    truth: NDArray[np.uint32], data: st.DataObject, chunk_px: int, halo: int
) -> None:
    crop = truth[400:700, 300:560]
    chunks = cores(crop.shape, chunk_px)
    order = data.draw(st.permutations(list(chunks)))
    _, ref_table, ref = merge_oracle(crop, chunks, halo_px=halo, seed=1)
    _, table, out = merge_oracle(crop, chunks, halo_px=halo, seed=1, order=list(order))
    assert np.array_equal(out, ref)  # the very same ids, not just the same partition
    for col in ("ids", "pixel_count", "area_m2", "bbox"):
        assert np.array_equal(getattr(table.table, col), getattr(ref_table.table, col))
    for key in chunks:
        (loc, glob), (ref_loc, ref_glob) = table.lookup(key), ref_table.lookup(key)
        assert np.array_equal(loc, ref_loc) and np.array_equal(glob, ref_glob)


# -- memory ---------------------------------------------------------------------------------


def _peak_nbytes(scene: NDArray[np.uint32], chunk_px: int) -> tuple[int, int, InstanceMerger]:
    """Peak and final ``nbytes`` of a merger fed row-major (halo 1)."""
    rng = np.random.default_rng(0)
    merger = InstanceMerger(scene.shape)
    peak = 0
    for key, core in cores(scene.shape, chunk_px).items():
        win = grow(core, 1, scene.shape)
        merger.add_chunk(key, core, local_labels(scene[win.to_slices()], rng), window=win)
        peak = max(peak, merger.nbytes)
    merger.finalize()
    return peak, merger.nbytes, merger


def test_merger_memory_follows_instances_not_chunk_area(truth: NDArray[np.uint32]) -> None:
    crop = truth[:1024, :1024]
    peak_small, final_small, m_small = _peak_nbytes(crop, 256)
    peak_big, final_big, m_big = _peak_nbytes(crop, 1024)
    # 16x the chunk area, fewer cut pieces: the merger holds no more
    assert peak_big <= peak_small and final_big <= final_small
    # what it holds is per-label stats (40 bytes each), strips and links, far below
    # one chunk's labels (1024 * 1024 * 4 bytes)
    for m in (m_small, m_big):
        links = sum(p.nbytes for _, _, p in m.iter_links())
        assert m.n_pending_strips == 0 and m.nbytes == 40 * m.n_labels + links
    assert peak_small < 0.1 * crop.size * 4
    # 4x the buildings (the crop tiled 2 x 2 with new ids): about 4x the bytes
    tiled = np.block(
        [
            [crop, crop + (crop > 0) * 100_000],
            [crop + (crop > 0) * 200_000, crop + (crop > 0) * 300_000],
        ]
    )
    tiled = tiled.astype(np.uint32)
    _, final_tiled, _ = _peak_nbytes(tiled, 256)
    assert 3.5 * final_small <= final_tiled <= 4.5 * final_small


def test_merger_keeps_no_reference_to_chunk_arrays() -> None:
    """Strips are copies: views would keep every pending chunk's labels alive."""
    scene = np.arange(60 * 60, dtype=np.uint32).reshape(60, 60) % 7
    merger = InstanceMerger(scene.shape)
    for key, core in cores(scene.shape, 20).items():
        win = grow(core, 1, scene.shape)
        labels = scene[win.to_slices()].copy()
        scores = np.ones(labels.shape, np.float32)
        refs = (weakref.ref(labels), weakref.ref(scores))
        merger.add_chunk(key, core, labels, window=win, scores=scores)
        del labels, scores
        gc.collect()
        assert all(r() is None for r in refs)


def test_chunk_summaries_travel_instead_of_labels(truth: NDArray[np.uint32]) -> None:
    """Workers summarize their chunk; only the pickled summary reaches the merger."""
    crop = truth[:600, :500]
    chunks = cores(crop.shape, 128)
    _, ref_table, ref = merge_oracle(crop, chunks, halo_px=1)
    merger = InstanceMerger(crop.shape, pixel_area_m2=0.25)
    labels = {}
    for key, core in chunks.items():
        win = grow(core, 1, crop.shape)
        lab = local_labels(crop[win.to_slices()], np.random.default_rng((0, *key)))
        labels[key] = (win, lab)
        summary = summarize_chunk(key, core, lab, shape=crop.shape, window=win)
        blob = pickle.dumps(summary)
        assert len(blob) < 0.2 * lab.nbytes and summary.nbytes < 0.1 * lab.nbytes
        merger.add_summary(pickle.loads(blob))
    table = merger.finalize()
    for key, core in chunks.items():
        win, lab = labels[key]
        assert np.array_equal(table.relabel(key, lab, window=win), ref[core.to_slices()])
    assert np.array_equal(table.table.bbox, ref_table.table.bbox)
    other = summarize_chunk((0, 0), PixelWindow(0, 0, 5, 5), np.ones((5, 5), np.int32),
                            shape=(50, 50))
    with pytest.raises(GridError, match="summarized for a"):
        InstanceMerger((60, 60)).add_summary(other)


def test_strips_are_dropped_as_soon_as_a_face_is_resolved() -> None:
    scene = np.ones((30, 30), np.uint32)
    merger = InstanceMerger(scene.shape)
    chunks = cores(scene.shape, 10)  # 3 x 3
    for n, (key, core) in enumerate(chunks.items(), start=1):
        merger.add_chunk(key, core, scene[core.to_slices()])
        # row-major: only the faces towards chunks not yet added are pending
        assert merger.n_pending_strips <= 3 * 3 + 2  # about one row of chunks
        if n == 3:  # row 0's faces and corners towards row 1
            assert merger.n_pending_strips == 2 + 3 + 2
    assert merger.n_pending_strips == 0
    assert merger.finalize().n_instances == 1


# -- face rule, API and errors ---------------------------------------------------------------


def test_face_links_threshold() -> None:
    a = np.array([1, 1, 1, 1, 2, 2], np.uint32)
    b = np.array([3, 3, 3, 4, 4, 4], np.uint32)
    # no halo: 1 faces 3 along 3 of its 4 px, 1 faces 4 along 1 px (< half of 3): no link
    assert face_links(a, None, b, None).tolist() == [[1, 3], [2, 4]]
    assert face_links(a, None, b, None, min_overlap=0.2).tolist() == [[1, 3], [1, 4], [2, 4]]
    empty = np.zeros(6, np.uint32)
    assert face_links(empty, None, b, None).shape == (0, 2)


def test_sparse_and_wide_labels_are_accepted() -> None:
    scene = np.zeros((6, 6), np.int64)
    scene[1:5, 1:5] = 7_000_000_000  # an id far beyond the chunk's pixel count
    scene[0, 5] = 3
    merger = InstanceMerger(scene.shape)
    for key, core in cores(scene.shape, 3).items():
        win = grow(core, 1, scene.shape)
        merger.add_chunk(key, core, scene[win.to_slices()], window=win)
    table = merger.finalize()
    assert table.n_instances == 2
    out = np.zeros(scene.shape, np.uint32)
    for key, core in cores(scene.shape, 3).items():
        out[core.to_slices()] = table.relabel(key, scene[core.to_slices()])
    assert is_relabelling(out, scene)


def test_empty_chunks_and_missing_neighbours() -> None:
    merger = InstanceMerger((4, 8))
    merger.add_chunk((0, 0), PixelWindow(0, 0, 4, 4), np.zeros((4, 4), np.uint8))
    table = merger.finalize()  # chunk (0, 1) never came: treated as empty
    assert table.n_instances == 0 and len(table.table) == 0
    assert table.relabel((0, 0), np.zeros((4, 4), np.uint8)).sum() == 0
    assert merger.finalize() is table


def test_merger_errors() -> None:
    merger = InstanceMerger((10, 10))
    core = PixelWindow(0, 0, 5, 5)
    with pytest.raises(InstanceMergeError, match="call finalize"):
        merger.relabel((0, 0), np.zeros((5, 5), np.int32))
    with pytest.raises(GridError, match="do not match the window"):
        merger.add_chunk((0, 0), core, np.zeros((4, 5), np.int32))
    with pytest.raises(GridError, match="does not contain the core"):
        merger.add_chunk((0, 0), core, np.zeros((3, 3), np.int32), window=PixelWindow(0, 0, 3, 3))
    with pytest.raises(InstanceMergeError, match="must be integers"):
        merger.add_chunk((0, 0), core, np.zeros((5, 5), np.float32))
    with pytest.raises(InstanceMergeError, match=">= 0"):
        merger.add_chunk((0, 0), core, -np.ones((5, 5), np.int32))
    with pytest.raises(GridError, match="outside"):
        merger.add_chunk((0, 0), PixelWindow(8, 8, 5, 5), np.zeros((5, 5), np.int32))
    with pytest.raises(GridError, match="scores of shape"):
        merger.add_chunk((0, 0), core, np.zeros((5, 5), np.int32), scores=np.zeros((2, 2)))
    merger.add_chunk((0, 0), core, np.ones((5, 5), np.int32))
    with pytest.raises(InstanceMergeError, match="already added"):
        merger.add_chunk((0, 0), core, np.ones((5, 5), np.int32))
    with pytest.raises(GridError, match="not aligned"):  # (0, 1) must start at col 5, rows 0..5
        merger.add_chunk((0, 1), PixelWindow(0, 6, 5, 4), np.ones((5, 4), np.int32))
    assert merger.n_chunks == 1  # a rejected chunk leaves no trace
    table = merger.finalize()
    with pytest.raises(InstanceMergeError, match="finalized"):
        merger.add_chunk((1, 1), PixelWindow(5, 5, 5, 5), np.ones((5, 5), np.int32))
    with pytest.raises(InstanceMergeError, match="never added"):
        table.lookup((3, 3))
    with pytest.raises(ConfigError, match="min_overlap"):
        InstanceMerger((4, 4), min_overlap=0.0)
    with pytest.raises(ConfigError, match="pixel_area_m2"):
        InstanceMerger((4, 4), pixel_area_m2=-1.0)
    with pytest.raises(GridError, match="at least 1 x 1"):
        InstanceMerger((0, 4))
    assert issubclass(InstanceMergeError, TerrasegError) and issubclass(
        InstanceMergeError, ValueError
    )


# -- boundary path ---------------------------------------------------------------------------


def test_watershed_recovers_buildings_from_interior_and_edge(truth: NDArray[np.uint32]) -> None:
    cls = boundary_classes(truth)
    out = instances_from_boundary(cls, min_seed_px=1)
    n_truth = int((np.unique(truth) > 0).sum())
    assert abs(int(out.max()) - n_truth) <= 0.01 * n_truth
    iou = best_iou(out, truth)
    assert (iou >= 0.9).mean() >= 0.95
    assert out.dtype == np.uint32 and np.array_equal(out > 0, truth > 0)


def test_watershed_on_probabilities(truth: NDArray[np.uint32]) -> None:
    crop = truth[:768, :768]
    cls = boundary_classes(crop)
    onehot = np.stack([cls == k for k in range(3)]).astype(np.float32)
    probs = np.stack([ndi.gaussian_filter(c, 0.7) for c in onehot])
    probs /= probs.sum(axis=0, keepdims=True)
    out = instances_from_boundary(probs, min_seed_px=2)
    iou = best_iou(out, crop)
    assert (iou >= 0.9).mean() >= 0.95
    n_truth = int((np.unique(crop) > 0).sum())
    assert abs(int(out.max()) - n_truth) <= 0.02 * n_truth
    dist = instances_from_boundary(probs, min_seed_px=2, landscape="distance")
    assert (best_iou(dist, crop) >= 0.9).mean() >= 0.95


def _chunked_watershed(
    cls: NDArray[np.uint8], chunk_px: int, halo_px: int
) -> tuple[NDArray[np.uint32], RelabelTable]:
    merger = InstanceMerger(cls.shape)
    chunks = cores(cls.shape, chunk_px)
    labelled = {}
    for key, core in chunks.items():
        win = grow(core, halo_px, cls.shape)
        lab = instances_from_boundary(cls[win.to_slices()], min_seed_px=1)
        labelled[key] = (win, lab)
        merger.add_chunk(key, core, lab, window=win)
    table = merger.finalize()
    out = np.zeros(cls.shape, np.uint32)
    for key, core in chunks.items():
        win, lab = labelled[key]
        out[core.to_slices()] = table.relabel(key, lab, window=win)
    return out, table


@pytest.mark.parametrize(("chunk_px", "halo_px"), [(300, 64), (256, 32)])
def test_chunked_watershed_equals_one_pass(
    truth: NDArray[np.uint32], chunk_px: int, halo_px: int
) -> None:
    cls = boundary_classes(truth)
    one = instances_from_boundary(cls, min_seed_px=1)
    out, table = _chunked_watershed(cls, chunk_px, halo_px)
    assert table.n_instances == int(one.max())
    assert is_relabelling(out, one)


def test_chunked_watershed_with_a_thin_halo_differs_only_near_faces(
    truth: NDArray[np.uint32],
) -> None:
    """A 1-px halo cuts seeds of buildings across the face: a few of them change."""
    cls = boundary_classes(truth)
    one = instances_from_boundary(cls, min_seed_px=1)
    out, _ = _chunked_watershed(cls, 300, 1)
    iou = best_iou(out, one)
    assert (iou == 1.0).mean() >= 0.99
    # every changed building touches a chunk face (reaches the pixel next to it)
    owner = np.zeros(cls.shape, np.int32)
    for n, core in enumerate(cores(cls.shape, 300).values()):
        owner[core.to_slices()] = n
    ids = np.flatnonzero(np.bincount(one.ravel()))[1:]
    assert (iou < 1.0).any()
    for i in ids[iou < 1.0]:
        assert np.unique(owner[ndi.binary_dilation(one == i)]).size > 1


def test_watershed_is_deterministic_and_validates(truth: NDArray[np.uint32]) -> None:
    cls = boundary_classes(truth[:300, :300])
    assert np.array_equal(instances_from_boundary(cls), instances_from_boundary(cls.copy()))
    small = instances_from_boundary(cls, min_instance_px=200)
    assert (np.bincount(small.ravel())[1:] >= 200).all()
    seeded = instances_from_boundary(cls, keep_unseeded=False, min_seed_px=50)
    assert seeded.max() < instances_from_boundary(cls, min_seed_px=50).max()
    with pytest.raises(ConfigError, match="landscape"):
        instances_from_boundary(cls, landscape="slope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="integer class labels"):
        instances_from_boundary(cls.astype(np.float32))
    with pytest.raises(ConfigError, match="divide uint8 codes"):
        instances_from_boundary(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ConfigError, match="channels"):
        instances_from_boundary(np.zeros((2, 4, 4), np.float32), edge_class=2)
    with pytest.raises(ConfigError, match="shape"):
        instances_from_boundary(np.zeros(4, np.uint8))
    with pytest.raises(ConfigError, match="min_seed_px"):
        instances_from_boundary(cls, min_seed_px=0)


# -- detector path ---------------------------------------------------------------------------


def tile_detections(
    scene: NDArray[np.uint32],
    lattice: TileLattice,
    rng: np.random.Generator,
    *,
    drop_row: float = 0.0,
    boxes: bool = False,
) -> Iterator[TileDetections]:
    """What a perfect Mask R-CNN would output per tile: every visible (part of a) building,
    full-tile masks, jittered scores; ``drop_row`` of them lose their bottom row."""
    ni, nj = lattice.counts(scene.shape)
    for i in range(ni):
        for j in range(nj):
            tw = lattice.tile_window((i, j))
            part = tw.clip(scene.shape)
            t = np.zeros(tw.shape, scene.dtype)
            t[part.relative_to(tw).to_slices()] = scene[part.to_slices()]
            ids = np.unique(t)
            ids = ids[ids > 0]
            masks = t[None] == ids[:, None, None]
            for k in np.flatnonzero(rng.random(ids.size) < drop_row):
                rows = np.flatnonzero(masks[k].any(axis=1))
                if rows.size > 1:
                    masks[k, rows[-1]] = False
            box = None
            if boxes:
                box = np.array(
                    [
                        [c.min(), r.min(), c.max() + 1, r.max() + 1]
                        for r, c in (np.nonzero(m) for m in masks)
                    ],
                    np.float32,
                )
                box = box.reshape(-1, 4)
            yield TileDetections((i, j), masks[:, None], 0.8 + 0.1 * rng.random(ids.size), box)


@pytest.mark.parametrize(("tile_px", "overlap_px"), [(256, 64), (96, 16)])
def test_detections_merge_to_one_instance_per_building(
    truth: NDArray[np.uint32], tile_px: int, overlap_px: int
) -> None:
    """(96, 16): many buildings are larger than the overlap and some than a tile."""
    scene = truth[:700, :900]
    lattice = TileLattice(tile_px, overlap_px)
    rng = np.random.default_rng(tile_px)
    inst = merge_tile_detections(
        tile_detections(scene, lattice, rng, boxes=True), lattice, scene.shape
    )
    out = rasterize_instances(inst, PixelWindow(0, 0, *scene.shape))
    assert len(inst) == int((np.unique(scene) > 0).sum())
    assert is_relabelling(out, scene)  # none lost, none duplicated, exact masks
    assert [i.id for i in inst] == list(range(1, len(inst) + 1))
    assert max(i.n_detections for i in inst) > 1
    for i in inst:  # the kept detection's tile sees the whole building
        if i.n_detections == 1 and i.window.row_stop < scene.shape[0]:
            assert lattice.tile_window(i.tile_id).contains(i.window)


def test_detections_with_imperfect_masks(truth: NDArray[np.uint32]) -> None:
    scene = truth[:700, :900]
    lattice = TileLattice(256, 64)
    dets = tile_detections(scene, lattice, np.random.default_rng(5), drop_row=0.3)
    inst = merge_tile_detections(dets, lattice, scene.shape)
    out = rasterize_instances(inst, PixelWindow(0, 0, *scene.shape))
    assert len(inst) == int((np.unique(scene) > 0).sum())
    iou = best_iou(out, scene)
    assert (iou >= 0.9).mean() >= 0.98
    # one instance per building: no building's pixels go to two large instances
    keys, cnt = np.unique((scene.astype(np.uint64) << np.uint64(32)) | out, return_counts=True)
    big = cnt > 10
    t_ids = (keys[big] >> np.uint64(32))[(keys[big] & np.uint64(0xFFFFFFFF)) > 0]
    assert np.unique(t_ids).size == t_ids.size


def test_detection_merge_does_not_depend_on_tile_order(truth: NDArray[np.uint32]) -> None:
    scene = truth[:500, :500]
    lattice = TileLattice(128, 32)
    dets = list(tile_detections(scene, lattice, np.random.default_rng(2)))
    ref = merge_tile_detections(dets, lattice, scene.shape)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(dets))
        got = merge_tile_detections([dets[k] for k in perm], lattice, scene.shape)
        assert [(i.id, i.window, i.tile_id, i.score) for i in got] == [
            (i.id, i.window, i.tile_id, i.score) for i in ref
        ]
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(got, ref, strict=True))


def test_owner_tile_keeps_the_instance() -> None:
    """A building inside the overlap of two tiles is kept by the tile owning its centroid."""
    lattice = TileLattice(8, 4)  # stride 4, cores [0, 6) and [6, 12)
    m0 = np.zeros((1, 8, 8), bool)
    m0[0, 1:3, 6:8] = True  # scene cols 6..8: centroid col 7.0 -> core of tile (0, 1)
    m1 = np.zeros((1, 8, 8), bool)
    m1[0, 1:3, 2:4] = True
    dets = [
        TileDetections((0, 0), m0, np.array([0.99])),
        TileDetections((0, 1), m1, np.array([0.5])),
    ]
    (inst,) = merge_tile_detections(dets, lattice, (8, 12))
    assert inst.tile_id == (0, 1) and inst.n_detections == 2 and inst.score == 0.5
    assert inst.centroid == (2.0, 7.0)


def test_detections_float_masks_thresholds_and_classes() -> None:
    lattice = TileLattice(16, 4)
    masks = np.zeros((3, 16, 16), np.float32)
    masks[0, 2:6, 2:6] = 0.9
    masks[1, 2:6, 2:6] = 0.8  # same pixels, another class: kept apart
    masks[2, 10:12, 10:12] = 0.3  # below mask_thresh: empty, dropped
    det = TileDetections((0, 0), masks, np.array([0.9, 0.6, 0.9]), class_ids=np.array([1, 2, 1]))
    inst = merge_tile_detections([det], lattice, (16, 16))
    assert [(i.class_id, i.pixel_count) for i in inst] == [(1, 16), (2, 16)]
    assert merge_tile_detections([det], lattice, (16, 16), score_thresh=0.7)[0].class_id == 1
    assert merge_tile_detections([det], lattice, (16, 16), min_px=17) == []
    with pytest.raises(ConfigError, match="iou_thresh"):
        merge_tile_detections([det], lattice, (16, 16), iou_thresh=0.0)
    with pytest.raises(GridError, match="do not match"):
        merge_tile_detections([TileDetections((0, 0), masks, np.ones(2))], lattice, (16, 16))
    with pytest.raises(GridError, match="exceed"):
        big = TileDetections((0, 0), np.zeros((1, 20, 20), bool), np.ones(1))
        merge_tile_detections([big], lattice, (16, 16))


def test_rasterize_instances_paints_higher_scores_on_top() -> None:
    a = Instance(PixelWindow(0, 0, 2, 2), np.ones((2, 2), bool), 0.5, (0, 0), id=1)
    b = Instance(PixelWindow(1, 1, 2, 2), np.ones((2, 2), bool), 0.9, (0, 0), id=2)
    far = Instance(PixelWindow(50, 50, 1, 1), np.ones((1, 1), bool), 0.9, (0, 0), id=3)
    out = rasterize_instances([a, b, far], PixelWindow(0, 0, 3, 3))
    assert out.tolist() == [[1, 1, 0], [1, 2, 2], [0, 2, 2]]
    shifted = rasterize_instances([a, b], PixelWindow(1, 1, 2, 2), ids=[7, 8])
    assert shifted.tolist() == [[8, 8], [8, 8]]
    assert rasterize_instances([], PixelWindow(0, 0, 2, 2)).sum() == 0
    with pytest.raises(ConfigError, match="one id per instance"):
        rasterize_instances([a], PixelWindow(0, 0, 2, 2), ids=[1, 2])


# -- slow: a bigger city ---------------------------------------------------------------------


@pytest.mark.slow
def test_bigger_city_oracle_and_chunked_watershed(tmp_path: Path) -> None:
    from terraseg.synthetic import make_city

    scene = make_city(tmp_path / "big.tif", size_px=(3100, 2900), seed=4)
    with rasterio.open(scene.truth_instances) as ds:
        big: NDArray[np.uint32] = ds.read(1)
    grid = ChunkGrid.from_shape(big.shape, tile_px=512, overlap_px=64, chunk_px=1024)
    chunks = {c.index: c.core for c in grid}
    windows = {c.index: c.extent for c in grid}
    _, table, out = merge_oracle(big, chunks, windows=windows)
    assert is_relabelling(out, big) and table.n_instances == scene.n_buildings
    _, _, out = merge_oracle(big, cores(big.shape, 333), halo_px=1)
    assert is_relabelling(out, big)
    cls = boundary_classes(big)
    one = instances_from_boundary(cls, min_seed_px=1)
    merger = InstanceMerger.from_grid(grid)
    labelled = {}
    for c in grid:
        lab = instances_from_boundary(cls[c.extent.to_slices()], min_seed_px=1)
        labelled[c.index] = lab
        merger.add_chunk(c.index, c.core, lab, window=c.extent)
    merger.finalize()
    chunked = np.zeros(big.shape, np.uint32)
    for c in grid:
        chunked[c.core.to_slices()] = merger.relabel(c.index, labelled[c.index], window=c.extent)
    assert is_relabelling(chunked, one)
