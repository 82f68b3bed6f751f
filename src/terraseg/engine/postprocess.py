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

:func:`vectorize_scene` (with ``label=True``) does steps 1 and 2 in one pass through
:func:`finish_scene`: the per-chunk map and the small scene reduce of
:mod:`terraseg.engine.finish`, the same functions a cluster's workers run. Its output
is identical to :func:`label_instances` followed by :func:`vectorize_masks`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.engine.finish import (
    ROAD_MIN_AREA_M2,
    FinishOptions,
    VectorLayers,
    _class_id,
    finish_chunk,
    finish_windows,
    label_chunk,
)
from terraseg.engine.finish_reduce import SceneFinish, reduce_scene, write_instance_rasters
from terraseg.export.layers import SomeCRS
from terraseg.export.writers import ExportResult, export_run
from terraseg.instances import InstanceMerger, InstanceTable
from terraseg.instances.merge import (
    BOUNDARY_HALO_PX,
    BOUNDARY_MIN_SEED_PX,
    BOUNDARY_SEED_P,
)
from terraseg.io.masks import ids_without_nodata, open_mask
from terraseg.io.scene import Scene, open_scene

__all__ = [
    "BOUNDARY_HALO_PX",
    "BOUNDARY_MIN_SEED_PX",
    "BOUNDARY_SEED_P",
    "SceneVectors",
    "finish_scene",
    "VectorLayers",
    "vectorize_scene",
    "export_vectors",
    "label_instances",
    "read_vectors",
    "vectorize_masks",
]

log = logging.getLogger(__name__)

def _reader(scene: Scene, *, ids: bool = False) -> Callable[[PixelWindow], np.ndarray]:
    """``read(window) -> (h, w)`` band 1 of ``scene``; outside the raster reads nodata.

    With ``ids=True`` (an instance mask) nodata pixels read as 0, "no building".
    """

    def read(window: PixelWindow) -> np.ndarray:
        arr, _ = scene.read_window(window, bands=[1], pad="nodata")
        return ids_without_nodata(scene, arr[0]) if ids else np.asarray(arr[0])

    return read


def _readers(
    classes: Scene, probabilities_path: str | os.PathLike[str] | None
) -> tuple[Callable[[PixelWindow], np.ndarray], Callable[..., np.ndarray] | None]:
    """``read(window)`` of a class mask and ``read_probs(window, bands)`` of a probability
    COG (None without one), as :mod:`terraseg.engine.finish` takes them."""
    probs = open_scene(probabilities_path) if probabilities_path is not None else None

    def read_probs(window: PixelWindow, bands: Sequence[int]) -> np.ndarray:
        assert probs is not None
        arr, _ = probs.read_window(window, bands=list(bands), pad="nodata")
        return np.asarray(arr)

    return _reader(classes), (read_probs if probs is not None else None)


def _label_store(
    folder: Path,
) -> tuple[Callable[[tuple[int, int], np.ndarray], None], Callable[[tuple[int, int]], np.ndarray]]:
    """``save(index, labels)`` and ``load(index)`` of chunk labels as ``.npy`` in ``folder``."""

    def save(index: tuple[int, int], labels: np.ndarray) -> None:
        np.save(folder / f"{index[0]}_{index[1]}.npy", labels)

    def load(index: tuple[int, int]) -> np.ndarray:
        return np.asarray(np.load(folder / f"{index[0]}_{index[1]}.npy"))

    return save, load


def finish_scene(
    classes_path: str | os.PathLike[str],
    instances_path: str | os.PathLike[str],
    *,
    chunk_px: int = 2048,
    probabilities_path: str | os.PathLike[str] | None = None,
    panoptic_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    **vector: Any,
) -> SceneFinish:
    """Instances and vectors of a scene in this process: every chunk's
    :func:`~terraseg.engine.finish.finish_chunk`, then
    :func:`~terraseg.engine.finish_reduce.reduce_scene` and
    :func:`~terraseg.engine.finish_reduce.write_instance_rasters` (``instances.tif``, and
    ``panoptic.tif`` when ``panoptic_path`` is given). The same functions run on a
    cluster's workers, so both give the same output. The chunks' local labels wait in
    a temporary folder until the rasters are written. ``vector``: polygon options of
    :meth:`~terraseg.engine.finish.FinishOptions.from_masks` (``min_area_m2``...).
    """
    opts = FinishOptions.from_masks(classes_path, probabilities_path, chunk_px=chunk_px,
                                    **vector)
    classes = open_mask(classes_path)
    read, read_probs = _readers(classes, probabilities_path)
    with tempfile.TemporaryDirectory(prefix="terraseg-labels-") as tmp:
        save, load = _label_store(Path(tmp))
        parts = [finish_chunk(read, read_probs, index, core, opts, save)
                 for index, core in finish_windows(opts)]
        result = reduce_scene(parts, opts)
        del parts
        write_instance_rasters(opts, result.relabel, load, read, instances_path, panoptic_path,
                               like=classes, overwrite=overwrite)
    return result


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
    opts = FinishOptions.from_masks(classes_path, probabilities_path, chunk_px=chunk_px,
                                    halo_px=halo_px, building_class=building_class)
    classes = open_mask(classes_path)
    read, read_probs = _readers(classes, probabilities_path)
    merger = InstanceMerger(opts.shape, pixel_area_m2=opts.pixel_area_m2)
    with tempfile.TemporaryDirectory(prefix="terraseg-labels-") as tmp:
        save, load = _label_store(Path(tmp))
        for index, core in finish_windows(opts):  # pass 1: label each chunk, keep its labels
            labels, window, scores = label_chunk(read, read_probs, core, opts)
            merger.add_chunk(index, core, labels, window=window, scores=scores)
            save(index, labels[core.relative_to(window).to_slices()].astype(np.int32))
        table = merger.finalize()
        write_instance_rasters(opts, table, load, read, out_path, panoptic_path, like=classes,
                               overwrite=overwrite)
    return table.table


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
    road_min_area_m2: float = ROAD_MIN_AREA_M2,
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
                            road_class=road, simplify_m=simplify_m, min_area_m2=road_min_area_m2)
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
    project: bool = True,
) -> ExportResult:
    """Write the vector layers (and, with ``project``, a QGIS project over them, the masks
    and the imagery)."""

    return export_run(
        dict(layers), out_dir, scene_name=scene_name, formats=tuple(formats),
        masks={k: Path(v) for k, v in (masks or {}).items()}, run_info=dict(run_info or {}),
        to_crs=to_crs, overwrite=overwrite, imagery=imagery, project=project,
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
    panoptic_path = Path(instances_path).with_name("panoptic.tif")
    if label:  # one code path with a cluster run: per-chunk work, then a small reduce
        finished = finish_scene(classes_path, instances_path, chunk_px=chunk_px,
                                probabilities_path=probabilities_path,
                                panoptic_path=panoptic_path, overwrite=overwrite)
        n_instances, layers = finished.n_instances, finished.layers
    else:
        layers = vectorize_masks(classes_path, instances_path, chunk_px=chunk_px)
    masks = {"classes": classes_path, "instances": instances_path}
    if panoptic_path.exists():
        masks["panoptic"] = panoptic_path
    result = export_vectors(
        layers.as_dict(), out_dir, scene_name=scene_name, formats=formats,
        masks=masks, run_info=run_info, to_crs=to_crs, overwrite=overwrite, imagery=imagery,
    )
    return SceneVectors(n_instances, layers, result)
