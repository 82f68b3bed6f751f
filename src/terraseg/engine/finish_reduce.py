"""The scene's reduce of :mod:`terraseg.engine.finish`: global ids, edge dissolve, rasters.

:func:`reduce_buildings` merges the chunks' instance summaries into global ids and
replays the building edge dissolve; :func:`reduce_roads` the road dissolve and the
centerline network; :func:`reduce_scene` both. They hold no raster, only what the
chunks' :class:`~terraseg.engine.finish.ChunkVectors` hold. A cluster runs the two
halves as separate tasks. :func:`write_instance_rasters` streams ``instances.tif``
(and ``panoptic.tif``) from the chunks' saved local labels.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
from numpy.typing import NDArray

from terraseg.core.metric import MetricFrame
from terraseg.engine.finish import (
    ChunkIndex,
    ChunkVectors,
    FinishOptions,
    VectorLayers,
    _product_classes,
    finish_windows,
)
from terraseg.instances import InstanceMerger
from terraseg.instances.table import RelabelTable
from terraseg.io.raster_sink import RasterSink
from terraseg.vector.centerlines import RoadNetwork, _network
from terraseg.vector.dissolve import (
    ChunkLayout,
    ReadFn,
    _add_building_chunk,
    _add_road_chunk,
    _as_2d,
    _dissolve,
    _Dissolver,
)
from terraseg.vector.finishing import GeometryDropWarning, _Drops
from terraseg.vector.vectorization import (
    _assemble_buildings,
    _assemble_roads,
    _finish_polygons,
)

__all__ = [
    "SceneFinish",
    "reduce_buildings",
    "reduce_roads",
    "reduce_scene",
    "write_instance_rasters",
]

Geoms = NDArray[np.object_]


@dataclass(slots=True)
class SceneFinish:
    """The result of :func:`reduce_scene`."""

    layers: VectorLayers
    relabel: RelabelTable
    n_instances: int


def reduce_scene(
    parts: Iterable[ChunkVectors], opts: FinishOptions, *, snap_px: float = 3.0
) -> SceneFinish:
    """Merge the chunks' instances, dissolve their edge parts, build the road network.

    ``parts``: one :class:`ChunkVectors` per window of :func:`finish_windows`, in any
    order. Holds only what the parts hold. Warns (``GeometryDropWarning``) as
    ``vectorize_buildings`` / ``vectorize_roads`` do when polygons were dropped.
    """
    chunks = list(parts)
    buildings, relabel = reduce_buildings(chunks, opts)
    roads, network = reduce_roads(chunks, opts, snap_px=snap_px)
    layers = VectorLayers(buildings, roads, network.centerlines, network.nodes, network.edges)
    return SceneFinish(layers, relabel, relabel.n_instances)


def reduce_buildings(
    parts: Iterable[ChunkVectors], opts: FinishOptions
) -> tuple[gpd.GeoDataFrame, RelabelTable]:
    """The building half of :func:`reduce_scene`: instance merge and building dissolve.

    A cluster runs it beside :func:`reduce_roads`, as a task of its own.
    """
    chunks = sorted(parts, key=lambda p: p.index)
    merger = InstanceMerger(opts.shape, pixel_area_m2=opts.pixel_area_m2)
    for part in chunks:
        merger.add_summary(part.summary)
    relabel = merger.finalize()
    layout = ChunkLayout([p.core for p in chunks])
    return _reduce_buildings(chunks, layout, relabel, opts, opts.frame()), relabel


def reduce_roads(
    parts: Iterable[ChunkVectors], opts: FinishOptions, *, snap_px: float = 3.0
) -> tuple[gpd.GeoDataFrame, RoadNetwork]:
    """The road half of :func:`reduce_scene`: road dissolve and the centerline network."""
    chunks = sorted(parts, key=lambda p: p.index)
    frame = opts.frame()
    layout = ChunkLayout([p.core for p in chunks])
    if opts.road is not None:
        roads = _reduce_roads(chunks, layout, opts, frame)
    else:
        roads = _assemble_roads([], frame.crs)
    network = _network([p.lines.unpack() for p in chunks], [p.line_starts for p in chunks],
                       [p.line_ends for p in chunks], frame, opts.shape, prune_m=opts.prune_m,
                       simplify_m=None, snap_px=snap_px)
    return roads, network


def _reduce_buildings(
    chunks: Sequence[ChunkVectors],
    layout: ChunkLayout,
    relabel: RelabelTable,
    opts: FinishOptions,
    frame: MetricFrame,
) -> gpd.GeoDataFrame:
    """The building dissolve of ``iter_buildings``, replayed over the edge parts."""
    popts = opts.building_options(frame)
    score = relabel.table.score if opts.has_probs else None
    dis = _Dissolver(layout)
    live: dict[int, int] = {}
    drops = _Drops(sum(p.drops[0] for p in chunks), sum(p.drops[1] for p in chunks))
    batches, n_low = [], 0
    for i, part in enumerate(chunks):
        local, glob = relabel.lookup(part.index)
        final_ids = _to_global(part.building_ids, local, glob)
        order = np.argsort(final_ids, kind="stable")
        touched = _add_building_chunk(dis, live, i, *_by_global_id(part, local, glob))
        groups = dis.finish(i, touched)
        ids, geoms, area = [final_ids[order]], [part.buildings.unpack()[order]], [
            part.building_area_m2[order]]
        if groups:
            gids = np.asarray([v for v, _ in groups], np.int64)
            g, a, kept = _finish_polygons(_dissolve(groups), popts, drops)
            ids.append(gids[kept])
            geoms.append(g)
            area.append(a)
            for v, _ in groups:
                del live[v]
        batch = _buildings_frame(np.concatenate(ids), np.concatenate(geoms),
                                 np.concatenate(area), score, frame.crs)
        if opts.min_score > 0 and score is not None:
            low = batch["score"].to_numpy() < opts.min_score
            n_low += int(low.sum())
            batch = batch[~low]
        if len(batch):
            batches.append(batch)
    if len(dis):
        raise AssertionError("internal error: building parts left undissolved")  # pragma: no cover
    drops.warn("vectorize_buildings", opts.min_area_m2)
    if n_low:
        warnings.warn(f"vectorize_buildings: left out {n_low} buildings scoring below "
                      f"{opts.min_score:g} (building_min_score: the model card's or --min-score)",
                      GeometryDropWarning, stacklevel=2)
    return _assemble_buildings(batches, frame.crs)


def _to_global(
    ids: NDArray[np.int64], local: NDArray[np.int64], glob: NDArray[np.uint32]
) -> NDArray[np.int64]:
    """Global ids of a chunk's local ids (every id is one of ``local``)."""
    if not len(ids):
        return np.empty(0, np.int64)
    return glob[np.searchsorted(local, ids)].astype(np.int64)


def _by_global_id(
    part: ChunkVectors, local: NDArray[np.int64], glob: NDArray[np.uint32]
) -> tuple[list[int], list[Any], list[int]]:
    """A chunk's edge parts as global ids, geometries and ``EDGE_*`` bits, one per global
    id, sorted by id: what polygonizing the chunk's global ids gives (local labels that
    one global id joins are unioned)."""
    gids = _to_global(part.edge_ids, local, glob)
    parts = part.edge_parts.unpack()
    values, geoms, flags = [], [], []
    for g in np.unique(gids).tolist():
        at = np.flatnonzero(gids == g)
        values.append(g)
        flags.append(int(np.bitwise_or.reduce(part.edge_flags[at])))
        geoms.append(parts[at[0]] if len(at) == 1 else _dissolve([(g, list(parts[at]))])[0])
    return values, geoms, flags


def _buildings_frame(
    ids: NDArray[np.int64],
    geoms: Geoms,
    area: NDArray[np.float64],
    score: NDArray[np.float64] | None,
    crs: pyproj.CRS,
) -> gpd.GeoDataFrame:
    """The columns of ``vectorize_buildings`` (``score`` from the instance table or NaN)."""
    s = np.full(len(ids), np.nan) if score is None else score[ids - 1].astype(np.float64)
    return gpd.GeoDataFrame(
        {
            "building_id": ids.astype(np.int64),
            "score": s,
            "area_m2": area,
            "class": pd.Series(["building"] * len(ids), dtype=object),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
    )


def _reduce_roads(
    chunks: Sequence[ChunkVectors], layout: ChunkLayout, opts: FinishOptions, frame: MetricFrame
) -> gpd.GeoDataFrame:
    """The road dissolve of ``iter_roads``, replayed over the edge parts and strips."""
    assert opts.road is not None
    popts = opts.road_options(frame)
    dis = _Dissolver(layout, opts.max_road_vertices)
    strips: dict[tuple[int, int], tuple[NDArray[np.int32], dict[int, int]]] = {}
    drops = _Drops(sum(p.drops[2] for p in chunks), sum(p.drops[3] for p in chunks))
    batches = []
    for i, part in enumerate(chunks):
        parts = (part.road_ids, part.road_parts.unpack(), part.road_flags)
        keys = _add_road_chunk(dis, strips, i, parts, part.road_strips, opts.road)
        groups = dis.finish(i, keys.values())
        geoms, area = [part.roads.unpack()], [part.road_area_m2]
        if groups:
            g, a, _ = _finish_polygons(_dissolve(groups), popts, drops)
            geoms.append(g)
            area.append(a)
        batch_geoms = np.concatenate(geoms)
        if len(batch_geoms):
            batches.append(gpd.GeoDataFrame(
                {"area_m2": np.concatenate(area),
                 "class": pd.Series(["road"] * len(batch_geoms), dtype=object)},
                geometry=gpd.GeoSeries(batch_geoms, crs=frame.crs),
            ))
    drops.warn("vectorize_roads", opts.road_min_area_m2)
    return _assemble_roads(batches, frame.crs)


# --------------------------------------------------------------------------- rasters


def write_instance_rasters(
    opts: FinishOptions,
    relabel: RelabelTable,
    load_labels: Callable[[ChunkIndex], NDArray[Any]],
    read_classes: ReadFn,
    instances_path: str | os.PathLike[str],
    panoptic_path: str | os.PathLike[str] | None = None,
    *,
    like: Any,
    overwrite: bool = False,
) -> None:
    """Write ``instances.tif`` (and ``panoptic.tif``) chunk by chunk, as ``label_instances`` does.

    ``load_labels(index)`` returns the core labels a chunk gave ``save_labels``;
    they are relabelled to global ids with ``relabel``. ``read_classes(core)`` gives
    the classes of ``panoptic.tif``'s band 1. ``like``: the class COG's
    :class:`~terraseg.io.scene.Scene` (grid, CRS and profile of the outputs).
    """
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(RasterSink(
            instances_path, like=like, count=1, dtype="uint32", nodata=0,
            overwrite=overwrite, band_names=["building_id"]))
        panoptic = None if panoptic_path is None else stack.enter_context(RasterSink(
            panoptic_path, like=like, count=2, dtype="uint32", nodata=None,
            overwrite=overwrite, band_names=["class", "building_id"]))
        for index, core in finish_windows(opts):
            ids = relabel.relabel(index, np.asarray(load_labels(index)))
            sink.write(core, ids[None])
            if panoptic is not None:
                cls = _product_classes(_as_2d(read_classes(core), core), opts.building,
                                       opts.edge, opts.nodata)
                panoptic.write(core, np.stack([cls, ids]))
        sink.finish()
        if panoptic is not None:
            panoptic.finish()

