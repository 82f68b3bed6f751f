"""Mask → polygons, chunk by chunk, with a dissolve of what touches chunk edges.

The scene is never held whole: a caller-supplied ``read(window)`` returns the
labels of one chunk window (``(y, x)`` or ``(1, y, x)``), each chunk is
polygonized on its own, and a polygon that touches no internal chunk edge is
final at once. Only the parts that touch an internal edge wait, and they are
dissolved with their neighbours as soon as every chunk they can continue into
has been read (buildings: parts with the same global instance id; roads: parts
whose pixels are 4-adjacent across the shared edge). Peak memory therefore
depends on the chunk size and on the parts waiting along chunk edges (in
row-major order, about one row of chunks' worth), not on the scene area, when
the ``iter_*`` generators are consumed batch by batch.

All dissolving happens in the scene's pixel frame, where every vertex is an
integer, so unions are exact; geometries move to the scene CRS only when
emitted. Areas and lengths are in metres whatever the CRS: a geographic CRS is
measured in the local UTM zone of the scene (:class:`terraseg.core.metric.MetricFrame`).
Outputs are in the scene CRS. The chunk layout and the union-find that dissolves
parts across chunk edges are in :mod:`terraseg.vector.dissolve`, the polygons of one
chunk in :mod:`terraseg.vector.chunks`, and the repair, filtering, regularization and
reprojection of finished polygons in :mod:`terraseg.vector.finishing`.
Polygonization is the numpy tracer of :mod:`terraseg.vector.polygonize` (what
``rasterio.features.shapes`` gives, several times faster). Pure module: numpy, shapely,
affine, pyproj and scipy; it opens no file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeAlias

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from affine import Affine
from numpy.typing import NDArray

from terraseg.core.grid import PixelWindow
from terraseg.core.match import PolygonMatch, match_polygons
from terraseg.core.metric import MetricFrame, SomeCRS
from terraseg.vector.chunks import (
    ChunkPolygons,
    _components,
    _group_parts,
    _shapes_px,
    polygonize_chunk,
)
from terraseg.vector.dissolve import (
    EDGE_BOTTOM,
    EDGE_LEFT,
    EDGE_RIGHT,
    EDGE_TOP,
    ChunkLayout,
    ReadFn,
    _add_building_chunk,
    _add_road_chunk,
    _as_2d,
    _dissolve,
    _Dissolver,
    _edge_flags,
    _internal_sides,
    _strip,
)
from terraseg.vector.finishing import (
    GeometryDropWarning,
    _Drops,
    _finish_part,
    _options,
    _PolygonOptions,
)
from terraseg.vector.polygonize import cpu_threads

__all__ = [
    "EDGE_BOTTOM",
    "EDGE_LEFT",
    "EDGE_RIGHT",
    "EDGE_TOP",
    "ChunkLayout",
    "ChunkPolygons",
    "GeometryDropWarning",
    "MetricFrame",
    "PolygonMatch",
    "iter_buildings",
    "iter_roads",
    "match_polygons",
    "polygonize_chunk",
    "vectorize_buildings",
    "vectorize_roads",
]
# ChunkLayout and EDGE_* live in terraseg.vector.dissolve, ChunkPolygons and polygonize_chunk in
# terraseg.vector.chunks, GeometryDropWarning in terraseg.vector.finishing, MetricFrame in
# terraseg.core.metric and match_polygons/PolygonMatch in terraseg.core.match; they are
# re-exported here. ReadFn and SomeCRS are re-exported too (type aliases of the signatures below).

Geoms: TypeAlias = "NDArray[np.object_]"


# --------------------------------------------------------------------------- emission
# The per-geometry work is terraseg.vector.finishing._finish_part; the split over threads
# stays here, with the knobs it reads (cpu_threads, _MIN_PER_THREAD) as this module's globals.


def _finish_polygons(
    geoms_px: Geoms,
    opts: _PolygonOptions,
    drops: _Drops,
    check: NDArray[np.bool_] | None = None,
) -> tuple[Geoms, NDArray[np.float64], NDArray[np.bool_]]:
    """Filter, simplify/regularize and move to the scene CRS; returns ``(geoms, area_m2, kept)``.

    ``check`` marks the geometries whose validity is not known (default: all). Large
    batches in a projected CRS are split over threads, one per CPU (every geometry is
    finished on its own, so the result does not depend on the split; numpy and GEOS
    release the GIL).
    """
    n = len(geoms_px)
    parts = 1 if opts.frame.is_geographic else min(cpu_threads(), n // _MIN_PER_THREAD)
    if parts <= 1:
        geoms, area, kept, n_empty = _finish_part(geoms_px, opts, check)
    else:
        cuts = np.linspace(0, n, parts + 1).astype(np.int64)
        chk = np.ones(n, bool) if check is None else check
        with ThreadPoolExecutor(parts - 1) as pool:
            rest = [
                pool.submit(_finish_part, geoms_px[a:b], opts, chk[a:b])
                for a, b in zip(cuts[1:-1], cuts[2:], strict=True)
            ]
            done = [_finish_part(geoms_px[: cuts[1]], opts, chk[: cuts[1]])]
            done += [f.result() for f in rest]
        geoms = np.concatenate([d[0] for d in done])
        area = np.concatenate([d[1] for d in done])
        kept = np.concatenate([d[2] for d in done])
        n_empty = sum(d[3] for d in done)
    drops.empty += n_empty
    drops.small += int((~kept).sum()) - n_empty
    return geoms, area, kept


_MIN_PER_THREAD = 256
"""Geometries per thread below which :func:`_finish_polygons` stays on one thread."""


# --------------------------------------------------------------------------- buildings


def iter_buildings(
    read_instances: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    scores: dict[int, float] | None = None,
    min_area_m2: float = 2.0,
    simplify_m: float = 0.0,
    regularize: bool = True,
    regularize_tolerance_m: float | None = None,
    min_iou: float = 0.85,
) -> Iterator[gpd.GeoDataFrame]:
    """Vectorize a building instance raster chunk by chunk, yielding batches.

    Same parameters and columns as :func:`vectorize_buildings`. After each chunk, the
    buildings it completed (if any) are yielded as one GeoDataFrame, so a consumer
    that writes batches out keeps memory flat in the scene size. Instance ids are
    expected to be 4-connected (as instance stitching makes them); an id whose parts
    no chunk edge joins comes out in more than one row (:func:`vectorize_buildings`
    dissolves those).
    """
    layout = ChunkLayout(windows)
    frame = MetricFrame.from_scene(transform, crs, layout.scene_shape)
    opts = _options(
        frame,
        layout.scene_shape,
        min_area_m2,
        simplify_m,
        regularize,
        regularize_tolerance_m,
        min_iou,
    )
    dis = _Dissolver(layout)
    live: dict[int, int] = {}
    drops = _Drops()
    for i, window in enumerate(layout.windows):
        labels = _as_2d(read_instances(window), window)
        cp = polygonize_chunk(
            labels, window, Affine.identity(), mode="instances", scene_shape=layout.scene_shape
        )
        if live:
            waiting = cp.on_edge | np.isin(cp.values, np.fromiter(live, np.int64, len(live)))
        else:
            waiting = cp.on_edge
        touched = _add_building_chunk(dis, live, i, cp.values[waiting].tolist(),
                                      cp.geometry[waiting], cp.edges[waiting])
        groups = dis.finish(i, touched)
        ids = [cp.values[~waiting]]
        geoms = [cp.geometry[~waiting]]
        if groups:
            ids.append(np.asarray([v for v, _ in groups], np.int64))
            geoms.append(_dissolve(groups))
            for v, _ in groups:
                del live[v]
        batch_ids = np.concatenate(ids)
        if len(batch_ids):
            dissolved = np.arange(len(batch_ids)) >= len(ids[0])  # the rest are valid
            batch = _building_frame(
                batch_ids, np.concatenate(geoms), scores, opts, drops, dissolved
            )
            if len(batch):
                yield batch
    if len(dis):
        raise AssertionError("internal error: building parts left undissolved")  # pragma: no cover
    drops.warn("vectorize_buildings", min_area_m2)


def _building_frame(
    ids: NDArray[np.int64],
    geoms_px: Geoms,
    scores: dict[int, float] | None,
    opts: _PolygonOptions,
    drops: _Drops,
    check: NDArray[np.bool_] | None = None,
) -> gpd.GeoDataFrame:
    geoms, area, kept = _finish_polygons(geoms_px, opts, drops, check)
    ids = ids[kept]
    if scores is None:
        score = np.full(len(ids), np.nan)
    else:
        score = np.asarray([scores.get(int(i), np.nan) for i in ids], np.float64)
    return gpd.GeoDataFrame(
        {
            "building_id": ids.astype(np.int64),
            "score": score,
            "area_m2": area,
            "class": pd.Series(["building"] * len(ids), dtype=object),
        },
        geometry=gpd.GeoSeries(geoms, crs=opts.frame.crs),
    )


def vectorize_buildings(
    read_instances: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    scores: dict[int, float] | None = None,
    min_area_m2: float = 2.0,
    simplify_m: float = 0.0,
    regularize: bool = True,
    regularize_tolerance_m: float | None = None,
    min_iou: float = 0.85,
) -> gpd.GeoDataFrame:
    """Building polygons from a global instance-id raster, read chunk by chunk.

    Parameters
    ----------
    read_instances
        ``read(window) -> labels``: the ``(y, x)`` (or ``(1, y, x)``) instance ids of a
        window of the scene (0 = background). Ids are global: the same building has
        the same id in every chunk.
    windows
        Chunk core windows that partition the scene exactly once (scene pixels).
    transform, crs
        Scene affine transform (pixel → CRS) and CRS; outputs are in this CRS.
    scores
        Optional ``{building_id: score}``; missing ids get NaN.
    min_area_m2
        Buildings whose pixel polygon is smaller than this (m²) are dropped, with a
        :class:`GeometryDropWarning` giving the count.
    simplify_m
        Douglas-Peucker tolerance in metres when ``regularize`` is False (0: keep the
        exact pixel outline).
    regularize
        Square corners and align edges to each building's dominant orientation
        (:func:`terraseg.vector.regularize.regularize_polygons`, in the metric frame). A
        building cut by the scene edge keeps its pixel outline (its outline there is
        the scene's, not its own).
    regularize_tolerance_m
        Simplification tolerance of the regularizer, metres (default: the larger of
        ``simplify_m`` and 1.5 pixels; raise it for noisy model output).
    min_iou
        A regularized building whose IoU with its pixel outline is below this
        falls back to the simplified outline.

    Returns
    -------
    geopandas.GeoDataFrame
        Columns ``building_id`` (int64), ``score`` (float), ``area_m2`` (of the output
        geometry, m²), ``class`` (``"building"``), ``geometry`` (Polygon or MultiPolygon,
        valid, holes kept), in the scene CRS, sorted by ``building_id``; one row per
        id. A building crossing chunk edges comes out whole, and the output does not
        depend on the chunking (for 4-connected ids).

    Notes
    -----
    Without simplification or regularization, rasterizing the output on the scene
    grid (``rasterio.features.rasterize`` with ``transform``) gives the instance
    raster back exactly. Chunks are polygonized by :mod:`terraseg.vector.polygonize` (the
    polygons of ``rasterio.features.shapes``, in numpy) and the buildings of a chunk
    are finished (filtered, regularized, moved to the CRS) on one thread per CPU; the
    output does not depend on the number of CPUs.
    """
    batches = list(
        iter_buildings(
            read_instances,
            windows,
            transform,
            crs,
            scores=scores,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
            regularize=regularize,
            regularize_tolerance_m=regularize_tolerance_m,
            min_iou=min_iou,
        )
    )
    return _assemble_buildings(batches, crs)


def _assemble_buildings(batches: Sequence[gpd.GeoDataFrame], crs: SomeCRS) -> gpd.GeoDataFrame:
    """The batches of :func:`iter_buildings` as :func:`vectorize_buildings` returns them:
    sorted by ``building_id``, the parts of an id that no chunk edge joined dissolved."""
    if not batches:
        return _empty_buildings(crs)
    out = gpd.GeoDataFrame(
        pd.concat(batches, ignore_index=True), geometry="geometry", crs=batches[0].crs
    )
    out = out.sort_values("building_id", kind="stable", ignore_index=True)
    dup = out["building_id"].duplicated(keep=False).to_numpy()
    if dup.any():  # an id split into parts that no chunk edge joins: one row per id
        merged = out[dup].dissolve(by="building_id", aggfunc={"score": "first", "area_m2": "sum"})
        merged["class"] = "building"
        merged = merged.set_geometry(shapely.normalize(merged.geometry.array))
        merged = merged.reset_index()[list(out.columns)]
        out = pd.concat([out[~dup], merged], ignore_index=True)
        out = out.sort_values("building_id", kind="stable", ignore_index=True)
        out = gpd.GeoDataFrame(out, geometry="geometry", crs=batches[0].crs)
    return out


def _empty_buildings(crs: SomeCRS) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "building_id": np.empty(0, np.int64),
            "score": np.empty(0),
            "area_m2": np.empty(0),
            "class": pd.Series([], dtype=object),
        },
        geometry=gpd.GeoSeries([], crs=pyproj.CRS.from_user_input(crs)),
    )


# --------------------------------------------------------------------------- roads


def iter_roads(
    read_classes: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    road_class: int = 2,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    max_vertices: int | None = None,
) -> Iterator[gpd.GeoDataFrame]:
    """Vectorize the road class of a class raster chunk by chunk, yielding batches.

    Same parameters and columns as :func:`vectorize_roads`; after each chunk, the
    road regions it completed (if any) are yielded as one GeoDataFrame.
    ``max_vertices``: a region whose waiting parts exceed this many vertices is
    written as pieces cut at chunk borders instead of one polygon, so memory
    does not grow with a region as large as the scene; ``None`` (default): every
    region is one polygon.
    """
    layout = ChunkLayout(windows)
    frame = MetricFrame.from_scene(transform, crs, layout.scene_shape)
    opts = _options(frame, layout.scene_shape, min_area_m2, simplify_m, False, None, 0.0)
    dis = _Dissolver(layout, max_vertices)
    strips: dict[tuple[int, int], tuple[NDArray[np.int32], dict[int, int]]] = {}
    drops = _Drops()
    for i, window in enumerate(layout.windows):
        labels = _as_2d(read_classes(window), window)
        comp_ids, polys, edges, chunk_strips = _road_chunk(
            labels == road_class, window, layout.scene_shape)
        on = edges != 0
        keys = _add_road_chunk(dis, strips, i, (comp_ids[on], polys[on], edges[on]),
                               chunk_strips, road_class)
        groups = dis.finish(i, keys.values())
        geoms = [polys[edges == 0]]
        if groups:
            geoms.append(_dissolve(groups))
        batch_geoms = np.concatenate(geoms)
        if len(batch_geoms):
            dissolved = np.arange(len(batch_geoms)) >= len(geoms[0])  # the rest are valid
            batch = _road_frame(batch_geoms, opts, drops, dissolved)
            if len(batch):
                yield batch
    drops.warn("vectorize_roads", min_area_m2)


def _road_chunk(
    mask: NDArray[np.bool_], window: PixelWindow, scene_shape: tuple[int, int]
) -> tuple[NDArray[np.int64], Geoms, NDArray[np.uint8], dict[int, NDArray[np.int32]]]:
    """The road regions of one chunk: component ids, pixel-frame polygons, ``EDGE_*``
    bits, and the component labels along each internal edge (``{EDGE_*: strip}``)."""
    comp, n = _components(mask)
    sides = _internal_sides(window, scene_shape)
    if n:
        comp_ids, polys = _group_parts(*_shapes_px(comp, window))
        edges = _edge_flags(comp, comp_ids, sides)
    else:
        comp_ids, polys, edges = np.empty(0, np.int64), np.empty(0, object), np.empty(0, np.uint8)
    return comp_ids, polys, edges, {side: _strip(comp, side).copy() for side in sides}


def _road_frame(
    geoms_px: Geoms,
    opts: _PolygonOptions,
    drops: _Drops,
    check: NDArray[np.bool_] | None = None,
) -> gpd.GeoDataFrame:
    geoms, area, _ = _finish_polygons(geoms_px, opts, drops, check)
    return gpd.GeoDataFrame(
        {"area_m2": area, "class": pd.Series(["road"] * len(area), dtype=object)},
        geometry=gpd.GeoSeries(geoms, crs=opts.frame.crs),
    )


def vectorize_roads(
    read_classes: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    road_class: int = 2,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
) -> gpd.GeoDataFrame:
    """Road polygons from a class raster, read chunk by chunk.

    Parameters
    ----------
    read_classes
        ``read(window) -> labels``: ``(y, x)`` (or ``(1, y, x)``) class values of a window.
    windows
        Chunk core windows that partition the scene exactly once (scene pixels).
    transform, crs
        Scene affine transform and CRS; outputs are in this CRS.
    road_class
        Class value of roads.
    min_area_m2
        Road regions smaller than this (m²) are dropped, with a warning giving the count.
    simplify_m
        Douglas-Peucker tolerance in metres (0: the exact pixel outline).

    Returns
    -------
    geopandas.GeoDataFrame
        One row per 4-connected road region, whole however many chunks it crosses:
        ``area_m2`` (m²), ``class`` (``"road"``), ``geometry`` (valid Polygon, holes
        kept), in the scene CRS, sorted by the lower-left corner of their bounds.
    """
    batches = list(
        iter_roads(
            read_classes,
            windows,
            transform,
            crs,
            road_class=road_class,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
        )
    )
    return _assemble_roads(batches, crs)


def _assemble_roads(batches: Sequence[gpd.GeoDataFrame], crs: SomeCRS) -> gpd.GeoDataFrame:
    """The batches of :func:`iter_roads` as :func:`vectorize_roads` returns them (sorted by
    the lower-left corner of their bounds)."""
    if not batches:
        return gpd.GeoDataFrame(
            {"area_m2": np.empty(0), "class": pd.Series([], dtype=object)},
            geometry=gpd.GeoSeries([], crs=pyproj.CRS.from_user_input(crs)),
        )
    out = gpd.GeoDataFrame(
        pd.concat(batches, ignore_index=True), geometry="geometry", crs=batches[0].crs
    )
    if len(out):
        b = out.geometry.bounds
        out = out.iloc[np.lexsort((b["miny"].to_numpy(), b["minx"].to_numpy()))].reset_index(
            drop=True
        )
    return out
