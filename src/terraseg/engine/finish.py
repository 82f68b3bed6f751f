"""A scene's vectorization as per-chunk work and one small reduce (issue #18).

:func:`finish_chunk` (the map, on a Dask worker) reads a chunk's core plus a halo,
labels its building instances as :func:`~terraseg.engine.postprocess.label_instances`
does, hands the core's local labels to ``save_labels`` (the run's chunk store) and
polygonizes the core. What is final inside the chunk is finished there (repaired,
regularized, in the scene CRS); only small things travel on in a :class:`ChunkVectors`:
the instance face summary, building and road parts on internal chunk edges (scene
pixels, packed), the roads' 1-pixel edge strips and the centerline pieces.
:func:`~terraseg.engine.finish_reduce.reduce_scene` merges the summaries into global
ids, replays the chunk-edge dissolve of :mod:`terraseg.vector.vectorization` over the
edge parts in row-major order and builds the road network; it holds no raster.
:func:`~terraseg.engine.finish_reduce.write_instance_rasters`
streams ``instances.tif`` (and ``panoptic.tif``) from the saved labels. The serial
path (:func:`~terraseg.engine.postprocess.vectorize_scene`) runs these same functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
from affine import Affine
from numpy.typing import NDArray

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.metric import MetricFrame
from terraseg.core.stitch import NODATA
from terraseg.instances.merge import BOUNDARY_HALO_PX, _label_probabilities, _label_window
from terraseg.instances.summary import ChunkSummary, summarize_chunk
from terraseg.instances.watershed import Landscape
from terraseg.io.masks import open_mask
from terraseg.io.raster_sink import read_building_filters, read_class_names
from terraseg.vector.centerlines import _chunk_lines
from terraseg.vector.chunks import polygonize_chunk
from terraseg.vector.dissolve import (
    PackedGeoms,
    ReadFn,
    _as_2d,
)
from terraseg.vector.finishing import _Drops, _options, _PolygonOptions
from terraseg.vector.vectorization import (
    _finish_polygons,
    _road_chunk,
)

__all__ = [
    "ChunkVectors",
    "VectorLayers",
    "FinishOptions",
    "ProbsReadFn",
    "ROAD_MIN_AREA_M2",
    "finish_chunk",
    "finish_windows",
    "label_chunk",
]

Geoms = NDArray[np.object_]
ProbsReadFn = Callable[[PixelWindow, Sequence[int]], NDArray[Any]]
"""``read_probs(window, bands) -> (len(bands), h, w)`` uint8 probabilities (0-254, 255 nodata)."""
ChunkIndex = tuple[int, int]
_RoadParts = tuple[PackedGeoms, NDArray[np.float64], NDArray[np.int64], PackedGeoms,
                   NDArray[np.uint8], dict[int, NDArray[np.int32]]]

#: Halo of the centerline skeletons, pixels (the default of ``extract_centerlines``).
CENTERLINE_HALO_PX = 64


def _class_id(classes_path: Path, name: str, default: int) -> int:
    """The id of class ``name`` in a class COG (from its stored class names)."""
    found = _find_class(classes_path, name)
    return default if found is None else found


def _find_class(classes_path: Path, name: str) -> int | None:
    """The id of class ``name`` in a class COG, or None when it has no such class."""
    for value, cname in read_class_names(classes_path).items():
        if cname == name:
            return int(value)
    return None


def _halo(window: PixelWindow, shape: tuple[int, int], px: int) -> PixelWindow:
    return PixelWindow.from_bounds(
        max(window.row_off - px, 0), max(window.col_off - px, 0),
        min(window.row_stop + px, shape[0]), min(window.col_stop + px, shape[1]),
    )


def _product_classes(
    classes: np.ndarray, building: int, edge: int | None, nodata: float | None = None
) -> np.ndarray:
    """Classes as the analyst reads them (uint32): a boundary model's edge ring is building.

    The mask's own ``nodata`` and negative values (a signed mask from another
    tool) become :data:`~terraseg.core.stitch.NODATA`.
    """
    if edge is not None:
        classes = np.where(classes == edge, classes.dtype.type(building), classes)
    bad = classes < 0
    if nodata is not None and np.isfinite(nodata):
        bad |= classes == nodata
    return np.where(bad, NODATA, classes).astype(np.uint32)


@dataclass(slots=True)
class VectorLayers:
    """The vector outputs of one scene, all in the scene CRS."""

    buildings: gpd.GeoDataFrame
    roads: gpd.GeoDataFrame
    road_centerlines: gpd.GeoDataFrame
    road_nodes: gpd.GeoDataFrame
    road_edges: gpd.GeoDataFrame

    def as_dict(self) -> dict[str, gpd.GeoDataFrame]:
        return {
            "buildings": self.buildings, "roads": self.roads,
            "road_centerlines": self.road_centerlines, "road_nodes": self.road_nodes,
            "road_edges": self.road_edges,
        }

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.as_dict().items()}


#: Road regions smaller than this (m², true metres) are dropped: specks of a few
#: pixels are noise for any model, and a noisy one gives millions of them (the `cheap`
#: colour rule: 3.3 million at 32768², more than a worker's memory could dissolve).
ROAD_MIN_AREA_M2 = 4.0


@dataclass(frozen=True, slots=True)
class FinishOptions:
    """What every chunk task and the reduce of one scene need; built once, picklable.

    ``shape`` (rows, cols), ``transform`` and ``crs`` of the scene; ``chunk_px`` the
    core size of :func:`finish_windows`; class ids ``building``, ``edge`` (a boundary
    model's ``building edge``, else None: buildings are connected components) and
    ``road`` (None: no roads); ``halo_px`` read around a core to label its instances
    (at least ``BOUNDARY_HALO_PX`` with an edge class); ``has_probs``: a probability
    COG gives scores (and a boundary model's seeds); ``pixel_area_m2``; ``nodata`` of
    the class COG; ``min_area_m2``, ``simplify_m``, ``regularize``, ``prune_m`` as
    ``vectorize_masks``; ``max_road_vertices`` as ``iter_roads``' ``max_vertices``;
    ``road_min_area_m2``: road regions smaller than this are dropped; ``min_score``:
    buildings scoring below it are left out of the vectors (the model card's
    ``building_min_score``; only with ``has_probs``). ``seed_p`` and ``landscape``: a
    boundary model's watershed on its probabilities (the card's ``building_seed_p``,
    None for :data:`~terraseg.instances.merge.BOUNDARY_SEED_P`, and
    ``building_landscape``).
    """

    shape: tuple[int, int]
    transform: Affine
    crs: pyproj.CRS
    chunk_px: int
    building: int
    edge: int | None
    road: int | None
    halo_px: int
    has_probs: bool
    pixel_area_m2: float = 1.0
    nodata: float | None = None
    min_area_m2: float = 4.0
    simplify_m: float = 0.0
    regularize: bool = True
    prune_m: float = 12.0
    max_road_vertices: int | None = None
    road_min_area_m2: float = ROAD_MIN_AREA_M2
    min_score: float = 0.0
    seed_p: float | None = None
    landscape: Landscape = "edge"

    @classmethod
    def from_masks(
        cls,
        classes_path: str | os.PathLike[str],
        probabilities_path: str | os.PathLike[str] | None = None,
        *,
        chunk_px: int = 2048,
        halo_px: int = 8,
        building_class: int | None = None,
        road_class: int | None = None,
        **vector: Any,
    ) -> FinishOptions:
        """Options for the class COG ``classes_path`` (class ids from its class names,
        as :mod:`terraseg.engine.postprocess` reads them, and ``min_score`` and
        ``min_area_m2`` from its :data:`~terraseg.io.raster_sink.BUILDING_FILTER_TAGS`);
        ``vector`` sets ``min_area_m2``, ``simplify_m``, ``regularize``, ``prune_m``,
        ``max_road_vertices``, ``min_score``, ``seed_p``, ``landscape`` (the last two also
        from the tags)."""
        classes = open_mask(classes_path)
        for key, value in read_building_filters(classes_path).items():
            vector.setdefault(key, value)
        path = Path(classes_path)
        edge = _find_class(path, "building edge")
        gsd = classes.gsd_xy_m
        return cls(
            shape=classes.shape, transform=classes.transform,
            crs=pyproj.CRS.from_user_input(classes.crs), chunk_px=int(chunk_px),
            building=building_class if building_class is not None else _class_id(
                path, "building", 1),
            edge=edge,
            road=road_class if road_class is not None else _class_id(path, "road", 2),
            halo_px=max(halo_px, BOUNDARY_HALO_PX) if edge is not None else halo_px,
            has_probs=probabilities_path is not None, pixel_area_m2=float(gsd[0] * gsd[1]),
            nodata=classes.nodata, **vector,
        )

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("terraseg.FinishOptions", repr(self))

    def frame(self) -> MetricFrame:
        """The scene's :class:`~terraseg.core.metric.MetricFrame`."""
        return MetricFrame.from_scene(self.transform, self.crs, self.shape)

    def building_options(self, frame: MetricFrame) -> _PolygonOptions:
        return _options(frame, self.shape, self.min_area_m2, self.simplify_m, self.regularize,
                        None, 0.85)

    def road_options(self, frame: MetricFrame) -> _PolygonOptions:
        return _options(frame, self.shape, self.road_min_area_m2, self.simplify_m, False, None,
                        0.0)


def finish_windows(opts: FinishOptions) -> list[tuple[ChunkIndex, PixelWindow]]:
    """The chunk cores of a scene, row-major (the grid of ``label_instances``); they
    partition the scene exactly once."""
    grid = ChunkGrid.from_shape(opts.shape, tile_px=opts.chunk_px, overlap_px=0,
                                chunk_px=opts.chunk_px)
    return [(c.index, c.core) for c in grid]


# --------------------------------------------------------------------------- labelling


def label_chunk(
    read_classes: ReadFn, read_probs: ProbsReadFn | None, core: PixelWindow, opts: FinishOptions
) -> tuple[NDArray[np.int64], PixelWindow, NDArray[np.float32] | None]:
    """Local building labels of one chunk, over its core plus :attr:`FinishOptions.halo_px`.

    Returns ``(labels, window, scores)``: int64 labels over ``window`` (the halo
    window clipped to the scene) and the per-pixel building scores over it (None
    without probabilities). Watershed for a boundary model's edge class (seeded on
    the probabilities when given), 4-connected components otherwise.
    """
    window = _halo(core, opts.shape, opts.halo_px)
    classes = _as_2d(read_classes(window), window)
    if read_probs is None:
        return _label_window(classes, opts.building, opts.edge), window, None
    bands = [opts.building + 1] + ([opts.edge + 1] if opts.edge is not None else [])
    p = np.asarray(read_probs(window, bands)).astype(np.float32) / 254.0
    if opts.edge is not None:
        p[:, classes == NODATA] = 0.0  # probabilities.tif codes nodata as 255
        return (_label_probabilities(p, seed_p=opts.seed_p, landscape=opts.landscape), window,
                p.sum(axis=0))
    return _label_window(classes, opts.building), window, p[0]


# --------------------------------------------------------------------------- map


@dataclass(slots=True, eq=False)
class ChunkVectors:
    """What one chunk sends to :func:`reduce_scene`: small, picklable, no core-sized array.

    Attributes
    ----------
    index, core
        The chunk and its core window (scene pixels).
    summary
        The instance face summary (:func:`~terraseg.instances.summary.summarize_chunk`).
    building_ids, buildings, building_area_m2
        Buildings that touch no internal chunk edge, finished (repaired,
        regularized, in the scene CRS): local ids, geometries (packed: numpy arrays
        travel between processes far faster than shapely objects), areas (m²).
    edge_ids, edge_parts, edge_flags
        Buildings on internal chunk edges: local ids, pixel-frame parts (packed
        losslessly, :class:`~terraseg.vector.dissolve.PackedGeoms`), ``EDGE_*`` bits.
    roads, road_area_m2
        Finished road regions that touch no internal chunk edge.
    road_ids, road_parts, road_flags, road_strips
        Road regions on internal edges (component ids, pixel-frame parts, bits) and
        the chunk's component labels along each internal edge (``{EDGE_*: strip}``).
    lines, line_starts, line_ends
        Centerline pieces of the core (scene pixels) and their border-end flags.
    drops, seconds
        Dropped ``(building small, building empty, road small, road empty)``; step times.
    """

    index: ChunkIndex
    core: PixelWindow
    summary: ChunkSummary
    building_ids: NDArray[np.int64]
    buildings: PackedGeoms
    building_area_m2: NDArray[np.float64]
    edge_ids: NDArray[np.int64]
    edge_parts: PackedGeoms
    edge_flags: NDArray[np.uint8]
    roads: PackedGeoms
    road_area_m2: NDArray[np.float64]
    road_ids: NDArray[np.int64]
    road_parts: PackedGeoms
    road_flags: NDArray[np.uint8]
    road_strips: dict[int, NDArray[np.int32]]
    lines: PackedGeoms
    line_starts: NDArray[np.bool_]
    line_ends: NDArray[np.bool_]
    drops: tuple[int, int, int, int] = (0, 0, 0, 0)
    seconds: dict[str, float] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Approximate size in bytes: arrays plus the WKB of every geometry."""
        arrays: list[NDArray[Any]] = [
            self.building_ids, self.building_area_m2, self.edge_ids, self.edge_flags,
            self.road_area_m2, self.road_ids, self.road_flags, self.line_starts,
            self.line_ends, *self.road_strips.values()]
        packed = sum(g.nbytes for g in (self.buildings, self.roads, self.edge_parts,
                                        self.road_parts, self.lines))
        return self.summary.nbytes + sum(a.nbytes for a in arrays) + packed


def finish_chunk(
    read_classes: ReadFn,
    read_probs: ProbsReadFn | None,
    index: ChunkIndex,
    core: PixelWindow,
    opts: FinishOptions,
    save_labels: Callable[[ChunkIndex, NDArray[np.int32]], None],
) -> ChunkVectors:
    """Label, save and polygonize one chunk; see the module docstring.

    Parameters
    ----------
    read_classes
        ``read(window) -> (h, w)`` uint8 classes of any window inside the scene
        (255 = nodata). Called once, for the core plus the largest halo.
    read_probs
        ``read(window, bands) -> (len(bands), h, w)`` uint8 probabilities
        (0-254), or None (then :attr:`FinishOptions.has_probs` must be False).
    index, core
        The chunk, as :func:`finish_windows` gives it.
    opts
        The scene's options.
    save_labels
        Called once with ``(index, labels)``: the int32 local labels of the core,
        for :func:`write_instance_rasters`.
    """
    t0 = time.perf_counter()
    halo = max(opts.halo_px, CENTERLINE_HALO_PX if opts.road is not None else 0)
    big_win = _halo(core, opts.shape, halo)
    big = _as_2d(read_classes(big_win), big_win)

    def sub(window: PixelWindow) -> NDArray[Any]:
        return big[window.relative_to(big_win).to_slices()]

    labels, win, scores = label_chunk(sub, read_probs if opts.has_probs else None, core, opts)
    summary = summarize_chunk(index, core, labels, shape=opts.shape, window=win, scores=scores)
    core_labels = labels[core.relative_to(win).to_slices()].astype(np.int32)
    del labels, scores
    save_labels(index, core_labels)
    t1 = time.perf_counter()
    frame = opts.frame()
    drops_b, drops_r = _Drops(), _Drops()
    b = _map_buildings(core_labels, core, opts.building_options(frame), drops_b)
    t2 = time.perf_counter()
    e_o, e_b = np.empty(0, object), np.empty(0, bool)
    r: _RoadParts = (PackedGeoms.pack(e_o), np.empty(0), np.empty(0, np.int64),
                     PackedGeoms.pack(e_o), np.empty(0, np.uint8), {})
    lines = (PackedGeoms.pack(e_o), e_b, e_b)
    if opts.road is not None:
        r = _map_roads(sub(core) == opts.road, core, opts.road_options(frame), drops_r)
        traced, starts, ends = _chunk_lines(sub, core, opts.shape, CENTERLINE_HALO_PX, opts.road)
        lines = (PackedGeoms.pack(traced), starts, ends)
    t3 = time.perf_counter()
    return ChunkVectors(
        (int(index[0]), int(index[1])), core, summary, *b, *r, *lines,
        drops=(drops_b.small, drops_b.empty, drops_r.small, drops_r.empty),
        seconds={"label": t1 - t0, "buildings": t2 - t1, "roads_centerlines": t3 - t2},
    )


def _map_buildings(
    labels: NDArray[np.int32], core: PixelWindow, opts: _PolygonOptions, drops: _Drops
) -> tuple[NDArray[np.int64], PackedGeoms, NDArray[np.float64], NDArray[np.int64],
           PackedGeoms, NDArray[np.uint8]]:
    """Finish the buildings inside the core; keep the ones on internal edges as parts."""
    cp = polygonize_chunk(labels, core, Affine.identity(), mode="instances",
                          scene_shape=opts.scene_shape)
    final = ~cp.on_edge
    geoms, area, kept = _finish_polygons(cp.geometry[final], opts, drops,
                                         np.zeros(int(final.sum()), bool))
    return (cp.values[final][kept], PackedGeoms.pack(geoms), area, cp.values[~final],
            PackedGeoms.pack(cp.geometry[~final]), cp.edges[~final])


def _map_roads(
    mask: NDArray[np.bool_], core: PixelWindow, opts: _PolygonOptions, drops: _Drops
) -> _RoadParts:
    """Finish the road regions inside the core; keep those on internal edges as parts,
    with the component labels along every internal edge."""
    comp_ids, polys, edges, strips = _road_chunk(mask, core, opts.scene_shape)
    final = edges == 0
    geoms, area, _ = _finish_polygons(polys[final], opts, drops, np.zeros(int(final.sum()), bool))
    return (PackedGeoms.pack(geoms), area, comp_ids[~final], PackedGeoms.pack(polys[~final]),
            edges[~final], strips)


# --------------------------------------------------------------------------- reduce
