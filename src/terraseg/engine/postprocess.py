"""Scene-level steps after prediction: building instances, vectors, export.

Each step streams chunk windows out of the COG masks the engine wrote, so no
step holds a scene-sized array:

1. :func:`label_instances` — building instances with global ids: each chunk is
   labelled on its own (core plus a halo), the chunks' labels are reconciled
   across chunk faces by :class:`terraseg.instances.InstanceMerger`, and a
   second pass writes ``instances.tif`` (uint32, 0 = none).
2. :func:`vectorize_masks` — building polygons from ``instances.tif``; road
   polygons and centerlines (with a graph) from ``classes.tif``.
3. :func:`export_vectors` — GeoPackage with QGIS styles, optional FlatGeobuf /
   GeoParquet, and a QGIS project referencing the masks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
from scipy import ndimage

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.stitch import NODATA
from terraseg.export.layers import SomeCRS
from terraseg.export.writers import ExportResult, export_run
from terraseg.instances import InstanceMerger, InstanceTable, instances_from_boundary
from terraseg.io.masks import ids_without_nodata, open_mask
from terraseg.io.raster_sink import RasterSink, read_class_names
from terraseg.io.scene import Scene, open_scene

__all__ = [
    "SceneVectors",
    "VectorLayers",
    "vectorize_scene",
    "export_vectors",
    "label_instances",
    "read_vectors",
    "vectorize_masks",
]

log = logging.getLogger(__name__)

_FOUR = ndimage.generate_binary_structure(2, 1)


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


def _reader(scene: Scene, *, ids: bool = False) -> Callable[[PixelWindow], np.ndarray]:
    """``read(window) -> (h, w)`` band 1 of ``scene``; outside the raster reads nodata.

    With ``ids=True`` (an instance mask) nodata pixels read as 0, "no building".
    """

    def read(window: PixelWindow) -> np.ndarray:
        arr, _ = scene.read_window(window, bands=[1], pad="nodata")
        return ids_without_nodata(scene, arr[0]) if ids else np.asarray(arr[0])

    return read


def _halo(window: PixelWindow, shape: tuple[int, int], px: int) -> PixelWindow:
    return PixelWindow.from_bounds(
        max(window.row_off - px, 0), max(window.col_off - px, 0),
        min(window.row_stop + px, shape[0]), min(window.col_stop + px, shape[1]),
    )


def _label_window(classes: np.ndarray, building: int, edge: int | None = None) -> np.ndarray:
    """Local building labels of one window.

    Without an edge class: 4-connected components of the building class
    (4-connectivity keeps buildings that only touch at a corner apart; buildings
    that share a wall in the class mask become one instance). With the
    ``building edge`` class of a boundary model: a seeded watershed
    (:func:`terraseg.instances.instances_from_boundary`), so touching buildings
    whose interiors the model kept apart come out as separate instances.
    """
    if edge is None:
        labels, _ = ndimage.label(classes == building, structure=_FOUR)
        return np.asarray(labels, dtype=np.int64)
    return instances_from_boundary(
        classes, interior_class=building, edge_class=edge, min_seed_px=BOUNDARY_MIN_SEED_PX
    ).astype(np.int64)


def _label_probabilities(interior_edge: np.ndarray) -> np.ndarray:
    """Local building labels of one window from a boundary model's probabilities.

    ``interior_edge`` is ``(2, h, w)``: building-interior and building-edge
    probabilities. Seeds are confident interior (:data:`BOUNDARY_SEED_P`), so the
    interiors of touching houses that the model only half separates still seed
    one instance each; buildings are where interior + edge >= 0.5, flooded
    through the edge probability.
    """
    return instances_from_boundary(
        interior_edge, interior_class=0, edge_class=1, seed_thresh=BOUNDARY_SEED_P,
        building_thresh=0.5, min_seed_px=BOUNDARY_MIN_SEED_PX, landscape="edge",
    ).astype(np.int64)


#: Halo of a boundary model's watershed, pixels: wider than the largest building,
#: so each chunk's watershed agrees with its neighbours' on the face strips.
BOUNDARY_HALO_PX = 96
#: Interior components smaller than this seed no instance of their own (noise).
BOUNDARY_MIN_SEED_PX = 6
#: Interior probability of a seed when probabilities are at hand. Measured with
#: demo-instance on the unseen synthetic scene (seed 21, 1517 buildings): seeds at
#: p >= 0.6 / 0.7 / 0.8 / 0.9 give 1550 / 1573 / 1587 / 1604 instances at about the
#: same F1 (0.890-0.894, pixel matching); 0.6 keeps the count closest to the truth.
BOUNDARY_SEED_P = 0.6


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


def label_instances(
    classes_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    chunk_px: int = 2048,
    halo_px: int = 8,
    building_class: int | None = None,
    probabilities_path: str | os.PathLike[str] | None = None,
    panoptic_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> InstanceTable:
    """Write ``instances.tif`` (uint32 global building ids, 0 = none) from a class COG.

    Two streamed passes over chunk windows; memory holds one chunk plus the
    merger's per-instance table and border strips.

    Parameters
    ----------
    classes_path
        uint8 class COG (255 = nodata) written by the engine.
    out_path
        Output COG path.
    chunk_px
        Chunk size of the passes, pixels.
    halo_px
        Extra pixels read around each chunk core so the face rule can tell
        touching objects apart (see :mod:`terraseg.instances`).
    building_class
        Class value of buildings; default: the class named ``"building"`` in the
        COG's class names, else 1.
    probabilities_path
        Optional probability COG; each instance's score is its mean building
        probability (interior + edge for a boundary model). Without it scores are NaN.
    panoptic_path
        Optional 2-band uint32 COG ``(class, instance id)``: band 1 the classes
        with a boundary model's edge ring folded into ``building`` (255 =
        nodata), band 2 the global building id (0 = none).

    A class COG with a ``building edge`` class (a boundary model's output) is
    labelled by seeded watershed with a halo of at least
    :data:`BOUNDARY_HALO_PX` — from the probabilities when given (confident
    interior seeds, flooding through the edge probability), else from the
    classes; otherwise buildings are connected components of the class.
    """
    classes = open_mask(classes_path)
    building = building_class if building_class is not None else _class_id(
        Path(classes_path), "building", 1)
    edge = _find_class(Path(classes_path), "building edge")
    halo_px = max(halo_px, BOUNDARY_HALO_PX) if edge is not None else halo_px
    probs = open_scene(probabilities_path) if probabilities_path else None
    grid = ChunkGrid.from_shape(classes.shape, tile_px=chunk_px, overlap_px=0, chunk_px=chunk_px)
    gsd = classes.gsd_xy_m
    merger = InstanceMerger(classes.shape, pixel_area_m2=float(gsd[0] * gsd[1]))
    read = _reader(classes)
    score_bands = [building + 1] + ([edge + 1] if edge is not None else [])

    def local(window: PixelWindow) -> tuple[np.ndarray, np.ndarray | None]:
        if probs is None:
            return _label_window(read(window), building, edge), None
        p, _ = probs.read_window(window, bands=score_bands, pad="nodata")
        p = p.astype(np.float32) / 254.0
        if edge is not None:
            p[:, read(window) == NODATA] = 0.0  # probabilities.tif codes nodata as 255
            return _label_probabilities(p), p.sum(axis=0)
        return _label_window(read(window), building), p[0]

    windows = {c.index: _halo(c.core, classes.shape, halo_px) for c in grid}
    with tempfile.TemporaryDirectory(prefix="terraseg-labels-") as tmp:
        for chunk in grid:  # pass 1: label each chunk, keep its labels on disk for pass 2
            labels, scores = local(windows[chunk.index])
            merger.add_chunk(chunk.index, chunk.core, labels, window=windows[chunk.index],
                             scores=scores)
            np.save(Path(tmp) / f"{chunk.index[0]}_{chunk.index[1]}.npy", labels.astype(np.int32))
        table = merger.finalize()
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(RasterSink(
                out_path, like=classes, count=1, dtype="uint32", nodata=0,
                overwrite=overwrite, band_names=["building_id"]))
            panoptic = None if panoptic_path is None else stack.enter_context(RasterSink(
                panoptic_path, like=classes, count=2, dtype="uint32", nodata=None,
                overwrite=overwrite, band_names=["class", "building_id"]))
            for chunk in grid:
                labels = np.load(Path(tmp) / f"{chunk.index[0]}_{chunk.index[1]}.npy")
                ids = merger.relabel(chunk.index, labels.astype(np.int64),
                                     window=windows[chunk.index])
                sink.write(chunk.core, ids[None])
                if panoptic is not None:
                    cls = _product_classes(read(chunk.core), building, edge, classes.nodata)
                    panoptic.write(chunk.core, np.stack([cls, ids]))
            sink.finish()
            if panoptic is not None:
                panoptic.finish()
    return table.table


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


def _open_masks(
    classes_path: str | os.PathLike[str], instances_path: str | os.PathLike[str]
) -> tuple[Scene, Scene]:
    """Open a class mask and an instance mask (any tool's, :func:`open_mask`) on one grid.

    Raises
    ------
    ConfigError
        The two masks are not on the same grid.
    """
    from terraseg.errors import ConfigError

    classes = open_mask(classes_path)
    instances = open_mask(instances_path, what="instance mask")
    same = classes.shape == instances.shape and classes.crs == instances.crs
    if not (same and classes.transform.almost_equals(instances.transform, precision=1e-9)):
        raise ConfigError(
            f"instance mask '{instances_path}' ({instances.shape[0]}x{instances.shape[1]} px) "
            f"is not on the grid of class mask '{classes_path}' ({classes.shape[0]}x"
            f"{classes.shape[1]} px); resample it onto that grid (gdalwarp -te/-tr, -r near)",
            classes=str(classes_path), instances=str(instances_path),
        )
    return classes, instances


def vectorize_masks(
    classes_path: str | os.PathLike[str],
    instances_path: str | os.PathLike[str],
    *,
    chunk_px: int = 2048,
    scores: Mapping[int, float] | None = None,
    min_area_m2: float = 4.0,
    simplify_m: float = 0.0,
    regularize: bool = True,
    road_class: int | None = None,
    prune_m: float = 12.0,
) -> VectorLayers:
    """Buildings from the instance COG; roads and centerlines from the class COG.

    Chunk by chunk; polygons that cross chunk borders are dissolved with their
    neighbours' parts and come out whole (see :mod:`terraseg.vector.vectorization`).
    """
    from terraseg.vector.centerlines import extract_centerlines
    from terraseg.vector.vectorization import vectorize_buildings, vectorize_roads

    classes, instances = _open_masks(classes_path, instances_path)
    road = road_class if road_class is not None else _class_id(Path(classes_path), "road", 2)
    grid = ChunkGrid.from_shape(classes.shape, tile_px=chunk_px, overlap_px=0, chunk_px=chunk_px)
    windows: Sequence[PixelWindow] = [c.core for c in grid]
    buildings = vectorize_buildings(
        _reader(instances, ids=True), windows, classes.transform, classes.crs,
        scores=dict(scores) if scores is not None else None, min_area_m2=min_area_m2,
        simplify_m=simplify_m, regularize=regularize,
    )
    roads = vectorize_roads(_reader(classes), windows, classes.transform, classes.crs,
                            road_class=road, simplify_m=simplify_m)
    network = extract_centerlines(_reader(classes), windows, classes.transform, classes.crs,
                                  road_class=road, prune_m=prune_m)
    return VectorLayers(buildings, roads, network.centerlines, network.nodes, network.edges)


def export_vectors(
    layers: Mapping[str, gpd.GeoDataFrame],
    out_dir: str | os.PathLike[str],
    *,
    scene_name: str,
    formats: Sequence[Literal["gpkg", "fgb", "parquet"]] = ("gpkg",),
    masks: Mapping[str, str | os.PathLike[str]] | None = None,
    run_info: Mapping[str, object] | None = None,
    to_crs: SomeCRS | None = None,
    overwrite: bool = False,
    imagery: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Write the vector layers (and a QGIS project over them, the masks and the imagery)."""

    return export_run(
        dict(layers), out_dir, scene_name=scene_name, formats=tuple(formats),
        masks={k: Path(v) for k, v in (masks or {}).items()}, run_info=dict(run_info or {}),
        to_crs=to_crs, overwrite=overwrite, imagery=imagery,
    )


def read_vectors(gpkg: str | os.PathLike[str]) -> dict[str, gpd.GeoDataFrame]:
    """Every terraseg vector layer in a GeoPackage written by :func:`export_vectors`."""
    import pyogrio

    from terraseg.errors import SceneReadError

    names = [name for name, _ in pyogrio.list_layers(gpkg)]
    wanted = ("buildings", "roads", "road_centerlines", "road_nodes", "road_edges")
    found = {n: gpd.read_file(gpkg, layer=n) for n in wanted if n in names}
    if not found:
        raise SceneReadError(
            f"'{gpkg}' holds none of the layers {', '.join(wanted)}; "
            "point at a GeoPackage written by terraseg", path=gpkg,
        )
    return found


@dataclass(slots=True)
class SceneVectors:
    """What :func:`vectorize_scene` produced."""

    n_instances: int | None
    layers: VectorLayers
    export: ExportResult


def vectorize_scene(
    classes_path: str | os.PathLike[str],
    instances_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    scene_name: str,
    chunk_px: int = 2048,
    label: bool = True,
    probabilities_path: str | os.PathLike[str] | None = None,
    formats: Sequence[Literal["gpkg", "fgb", "parquet"]] = ("gpkg",),
    to_crs: SomeCRS | None = None,
    run_info: Mapping[str, object] | None = None,
    overwrite: bool = False,
    imagery: str | os.PathLike[str] | None = None,
) -> SceneVectors:
    """The whole post-prediction chain of one scene: instances, vectors, export.

    With ``label=False`` an existing ``instances_path`` is used as it is.
    """
    if label:
        open_mask(classes_path)  # a bad mask fails here, before any output is written
    else:
        _open_masks(classes_path, instances_path)
    n_instances = None
    scores: dict[int, float] | None = None
    panoptic_path = Path(instances_path).with_name("panoptic.tif")
    if label:
        table = label_instances(classes_path, instances_path, chunk_px=chunk_px,
                                probabilities_path=probabilities_path,
                                panoptic_path=panoptic_path, overwrite=overwrite)
        n_instances = len(table.ids)
        if probabilities_path is not None:
            scores = {int(i): float(s) for i, s in zip(table.ids, table.score, strict=True)}
    layers = vectorize_masks(classes_path, instances_path, chunk_px=chunk_px, scores=scores)
    masks = {"classes": classes_path, "instances": instances_path}
    if panoptic_path.exists():
        masks["panoptic"] = panoptic_path
    result = export_vectors(
        layers.as_dict(), out_dir, scene_name=scene_name, formats=formats,
        masks=masks, run_info=run_info, to_crs=to_crs, overwrite=overwrite, imagery=imagery,
    )
    return SceneVectors(n_instances, layers, result)
