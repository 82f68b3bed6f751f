"""Labels for training: vector layers burned onto an image's grid, class rasters checked.

Vector labels are rasterized block by block into a uint8 class GeoTIFF on the
image grid (later layers are burned over earlier ones: roads, then buildings,
as the synthetic truth does); a class raster given instead is checked for
overlap with the image and for values outside the class ids.

A *labelling file* (``terraseg segment --for-labelling``: a layer
:data:`LABELLING_LAYER` of segments with an integer :data:`CLASS_FIELD`, NULL
until a labeller sets it) is recognised by :func:`is_labelling_file` and burned
the other way round: every pixel starts as
:data:`~terraseg.models.spec.IGNORE_LABEL` and only the segments given a class
are burned, so unlabelled segments and pixels outside any segment count in no
loss, instead of passing for background.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from terraseg.errors import ConfigError
from terraseg.instances.targets import boundary_classes
from terraseg.io.scene import Scene, open_scene
from terraseg.models.spec import IGNORE_LABEL

if TYPE_CHECKING:
    import shapely
    from affine import Affine

__all__ = [
    "CLASS_FIELD",
    "DEFAULT_LAYERS",
    "LABELLING_LAYER",
    "RASTER_SUFFIXES",
    "LabelWarning",
    "PathLike",
    "check_label_values",
    "check_raster_overlap",
    "is_labelling_file",
    "labelled_area",
    "rasterize_labels",
    "read_labelled_segments",
]

PathLike = str | os.PathLike[str]

DEFAULT_LAYERS: dict[str, int] = {"roads": 2, "buildings": 1}
"""Vector layer → class value, in burn order (later over earlier)."""

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")
"""Label files with these suffixes are class rasters; others are vector files."""


#: Layer of a labelling file (as :mod:`terraseg.export.labelling` writes it; ``export``
#: and ``models`` do not import each other, so the names are repeated here).
LABELLING_LAYER = "segments"
#: Its class attribute: a class id, NULL for an unlabelled segment.
CLASS_FIELD = "class"


class LabelWarning(UserWarning):
    """Label geometries were repaired or skipped (the message gives the count)."""


def read_layers(
    labels: Path, layers: Mapping[str, int], scene: Scene
) -> list[tuple[shapely.Geometry, int]]:
    """Label geometries in the scene CRS, in burn order, repaired where invalid."""
    import geopandas as gpd
    import pyogrio
    import shapely

    try:
        available = [str(row[0]) for row in pyogrio.list_layers(labels)]
    except Exception as exc:
        raise ConfigError(
            f"cannot read labels '{labels}': {exc}; give a GeoPackage/shapefile/GeoJSON or a "
            "class raster",
            path=labels,
        ) from None
    missing = [name for name in layers if name not in available]
    if missing and len(available) == 1 and len(layers) == 1:
        missing = []  # single-layer file (shapefile, GeoJSON): use its only layer
    if missing and is_labelling_file(labels, layers):
        raise ConfigError(
            f"labelling file '{labels}' (segments with a class) trains --task semantic only; "
            "a detector needs whole building polygons",
            path=labels,
        )
    if missing:
        raise ConfigError(
            f"labels '{labels}' have no layer(s) {missing}; its layers are {available}: "
            "choose layers with --layer NAME=CLASS",
            path=labels,
            layers=available,
        )
    shapes: list[tuple[shapely.Geometry, int]] = []
    n_invalid = n_empty = 0
    for name, value in layers.items():
        layer = name if name in available else available[0]
        gdf = gpd.read_file(labels, layer=layer)
        if gdf.crs is None:
            raise ConfigError(
                f"labels '{labels}' layer '{layer}' have no CRS; set one (e.g. with ogr2ogr "
                "-a_srs) to match the image",
                path=labels,
            )
        if gdf.crs != scene.crs:
            gdf = gdf.to_crs(scene.crs)
        geoms = np.asarray(gdf.geometry.values, dtype=object)
        empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
        n_empty += int(empty.sum())
        geoms = geoms[~empty]
        invalid = ~shapely.is_valid(geoms)
        if invalid.any():
            n_invalid += int(invalid.sum())
            geoms[invalid] = shapely.make_valid(geoms[invalid])
        shapes.extend((g, int(value)) for g in geoms)
    _warn_repairs(labels, n_invalid, n_empty)
    return shapes


def _warn_repairs(labels: Path, n_invalid: int, n_empty: int) -> None:
    if n_invalid:
        warnings.warn(
            f"labels '{labels}': repaired {n_invalid} invalid geometr"
            f"{'y' if n_invalid == 1 else 'ies'} with shapely.make_valid",
            LabelWarning,
            stacklevel=4,
        )
    if n_empty:
        warnings.warn(
            f"labels '{labels}': skipped {n_empty} empty or missing geometr"
            f"{'y' if n_empty == 1 else 'ies'}",
            LabelWarning,
            stacklevel=4,
        )


def is_labelling_file(labels: PathLike, layers: Mapping[str, int] = DEFAULT_LAYERS) -> bool:
    """Whether ``labels`` is a labelling file: layer :data:`LABELLING_LAYER` with an integer
    :data:`CLASS_FIELD`, and none of the class ``layers`` (those take precedence).

    A file that cannot be read is not one (:func:`read_layers` then says why).
    """
    import pyogrio

    try:
        available = [str(row[0]) for row in pyogrio.list_layers(labels)]
        if LABELLING_LAYER not in available or any(name in available for name in layers):
            return False
        info = pyogrio.read_info(labels, layer=LABELLING_LAYER)
    except Exception:  # noqa: BLE001 - unreadable: the ordinary path reports it
        return False
    fields = [str(f) for f in info["fields"]]
    if CLASS_FIELD not in fields:
        return False
    return np.dtype(info["dtypes"][fields.index(CLASS_FIELD)]).kind in "iu"


def labelled_area(
    labels: PathLike,
    scene: Scene,
    layers: Mapping[str, int] = DEFAULT_LAYERS,
    *,
    min_px: tuple[int, int] = (0, 0),
) -> shapely.Polygon | None:
    """The bounding box of a labelling file's segments that have a class, in the scene CRS.

    Training draws its patches (and the held-out strip) within it, as within a
    label extent: the rest of the image is unlabelled. A box smaller than
    ``min_px`` ``(rows, cols)`` is grown to it about its centre, kept inside the
    scene where the scene allows. ``None`` for other label files, or when no
    segment has a class (:func:`read_labelled_segments` says so).
    """
    import geopandas as gpd
    import shapely

    if not is_labelling_file(labels, layers):
        return None
    gdf = gpd.read_file(labels, layer=LABELLING_LAYER, columns=[CLASS_FIELD])
    gdf = gdf[gdf[CLASS_FIELD].notna()]
    if not len(gdf) or gdf.crs is None:
        return None
    box = np.asarray(gdf.to_crs(scene.crs).total_bounds, dtype=float)
    bounds = np.asarray(scene.bounds, dtype=float)
    res_x, res_y = scene.res
    for axis, size in ((0, min_px[1] * res_x), (1, min_px[0] * res_y)):
        lo, hi = box[axis], box[axis + 2]
        if hi - lo < size:
            lo = (lo + hi - size) / 2
            lo = max(bounds[axis], min(lo, bounds[axis + 2] - size))
            box[axis], box[axis + 2] = lo, min(lo + size, bounds[axis + 2])
    return shapely.box(*box)


def read_labelled_segments(
    labels: PathLike, scene: Scene, n_classes: int | None = None
) -> list[tuple[shapely.Geometry, int]]:
    """The segments of a labelling file that have a class, in the scene CRS.

    Parameters
    ----------
    labels
        A labelling file (:func:`is_labelling_file`).
    scene
        The image the labels belong to (its CRS).
    n_classes
        The model's classes: class values must be ``0..n_classes-1``; ``None``
        allows ``0..254``.

    Raises
    ------
    ConfigError
        No CRS, no segment with a class, or classes outside the model's ids.
    """
    import geopandas as gpd
    import shapely

    src = Path(labels)
    gdf = gpd.read_file(src, layer=LABELLING_LAYER, columns=[CLASS_FIELD])
    if gdf.crs is None:
        raise ConfigError(
            f"labelling file '{src}' has no CRS; set one (e.g. with ogr2ogr "
            "-a_srs) to match the image",
            path=src,
        )
    values = gdf[CLASS_FIELD].to_numpy(dtype=float, na_value=np.nan)
    labelled = ~np.isnan(values)
    if not labelled.any():
        raise ConfigError(
            f"labelling file '{src}' has no segment with a class ({len(gdf)} segments, all "
            f"'{CLASS_FIELD}' NULL); set '{CLASS_FIELD}' on some segments in QGIS first",
            path=src,
        )
    top = IGNORE_LABEL - 1 if n_classes is None else n_classes - 1
    bad = np.unique(values[labelled & ((values < 0) | (values > top))])
    if bad.size:
        raise ConfigError(
            f"labelling file '{src}' gives segments class(es) {bad[:5].astype(int).tolist()} "
            f"outside the model's class ids 0..{top}; recode those segments or train "
            "with matching classes",
            path=src,
            classes=bad.astype(int).tolist(),
        )
    gdf = gdf[labelled]
    if gdf.crs != scene.crs:
        gdf = gdf.to_crs(scene.crs)
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    geoms, classes = geoms[keep], values[labelled][keep].astype(np.int64)
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    _warn_repairs(src, int(invalid.sum()), int((~keep).sum()))
    return [(g, int(c)) for g, c in zip(geoms, classes, strict=True)]


def rasterize_labels(
    labels: PathLike,
    image: PathLike | Scene,
    out: PathLike,
    *,
    layers: Mapping[str, int] | None = None,
    block_rows: int = 1024,
    edge_px: int | None = None,
    building_class: int = 1,
    n_classes: int | None = None,
) -> Path:
    """Rasterize vector labels onto an image's grid as a uint8 class GeoTIFF.

    Parameters
    ----------
    labels
        A vector file (GeoPackage with one layer per class, shapefile, GeoJSON),
        or a labelling file (:func:`is_labelling_file`): its segments with a class
        are burned over :data:`~terraseg.models.spec.IGNORE_LABEL`.
    image
        The image whose grid (CRS, transform, shape) the classes are burned on.
    out
        Output GeoTIFF (tiled, LZW), 0 where no label falls (a labelling file:
        :data:`~terraseg.models.spec.IGNORE_LABEL`).
    layers
        Layer name → class value, burned in this order (later over earlier).
        Default ``{"roads": 2, "buildings": 1}``.
    block_rows
        Rows rasterized at a time; memory is ``block_rows × width`` bytes.
    edge_px
        Targets of a *boundary* model: each polygon of class ``building_class``
        gets an edge ring ``edge_px`` pixels wide (class
        :data:`~terraseg.instances.targets.EDGE_CLASS`) inside its outline, so
        touching buildings have separate interiors
        (:func:`terraseg.instances.targets.boundary_classes`). ``None``: plain classes.
    building_class
        Class value of the building layer (with ``edge_px``).
    n_classes
        The model's number of classes: a labelling file's classes must be below it.

    Raises
    ------
    ConfigError
        Unreadable labels, missing layers, no CRS, or no overlap with the image; a
        labelling file with no class set, classes outside ``0..n_classes-1``, or
        with ``edge_px``.

    Warns
    -----
    LabelWarning
        When invalid geometries were repaired (``shapely.make_valid``) or empty
        ones skipped; the message gives the count.
    """
    import rasterio
    import shapely
    from rasterio.features import rasterize
    from rasterio.windows import Window

    scene = image if isinstance(image, Scene) else open_scene(image)
    geoms, values, fill = _label_shapes(Path(labels), scene, layers or DEFAULT_LAYERS, edge_px,
                                        n_classes)  # fmt: skip
    tree = shapely.STRtree(geoms)
    rows, cols = scene.shape
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": "uint8",
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "lzw",
    }
    halo = edge_px or 0  # rows read around each block so edge rings are exact at its border
    with rasterio.open(out, "w", **profile) as dst:
        for r0 in range(0, rows, block_rows):
            h = min(block_rows, rows - r0)
            top_px = min(halo, r0)
            win = Window(0, r0 - top_px, cols, h + top_px + min(halo, rows - r0 - h))
            wt = rasterio.windows.transform(win, scene.transform)
            block = np.full((int(win.height), cols), fill, np.uint8)
            b_left, b_bottom, b_right, b_top = rasterio.windows.bounds(win, scene.transform)
            idx = np.sort(tree.query(shapely.box(b_left, b_bottom, b_right, b_top)))
            if idx.size:
                rasterize(
                    zip(geoms[idx], values[idx].tolist(), strict=True),
                    out=block,
                    transform=wt,
                    all_touched=False,
                )
            if edge_px is not None:
                block = _with_edges(block, geoms, values, idx, wt, edge_px, building_class)
            dst.write(block[top_px : top_px + h], 1, window=Window(0, r0, cols, h))
    return Path(out)


def _label_shapes(
    src: Path,
    scene: Scene,
    layers: Mapping[str, int],
    edge_px: int | None,
    n_classes: int | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Geometries and class values to burn, and the fill value (0, or IGNORE_LABEL for a
    labelling file); refused when there are none or none overlaps the image."""
    import shapely

    fill = 0
    if is_labelling_file(src, layers):
        if edge_px is not None:
            raise ConfigError(
                f"labelling file '{src}' trains --task semantic only: boundary edge rings need "
                "whole building polygons, not segments; give building polygons instead",
                path=src,
            )
        shapes, fill = read_labelled_segments(src, scene, n_classes), IGNORE_LABEL
    else:
        shapes = read_layers(src, layers, scene)
    geoms = np.asarray([g for g, _ in shapes], dtype=object)
    values = np.asarray([v for _, v in shapes], dtype=np.uint8)
    left, bottom, right, top = scene.bounds
    if not len(geoms):
        raise ConfigError(
            f"labels '{src}' hold no geometries in layer(s) "
            f"{', '.join(layers)}; give labels with features",
            path=src,
        )
    if not shapely.intersects(geoms, shapely.box(left, bottom, right, top)).any():
        extent = shapely.total_bounds(geoms)
        raise ConfigError(
            f"labels '{src}' do not overlap image '{scene.path}' (labels bounds "
            f"{[round(float(v), 1) for v in extent]}, image bounds "
            f"{[round(v, 1) for v in (left, bottom, right, top)]} in {scene.crs.to_string()}); "
            "give labels for the same area",
            path=src,
        )
    return geoms, values, fill


def _with_edges(
    block: np.ndarray,
    geoms: np.ndarray,
    values: np.ndarray,
    idx: np.ndarray,
    transform: Affine,
    edge_px: int,
    building_class: int,
) -> np.ndarray:
    """``block`` with each building's edge ring burned in (boundary-model targets)."""
    from rasterio.features import rasterize

    ids = np.zeros(block.shape, np.int32)
    sel = idx[values[idx] == building_class]
    if sel.size:  # one id per polygon: its index among all label geometries, plus one
        rasterize(
            zip(geoms[sel], (sel + 1).tolist(), strict=True),
            out=ids,
            transform=transform,
            all_touched=False,
        )
    return boundary_classes(ids, block, edge_px=edge_px, building_class=building_class)


def check_label_values(labels: Scene, n_classes: int) -> None:
    """Refuse a class raster with values outside ``0..n_classes-1`` (decimated read).

    :data:`~terraseg.models.spec.IGNORE_LABEL` (unlabelled) is allowed.
    """
    if labels.count != 1:
        raise ConfigError(
            f"class raster '{labels.path}' has {labels.count} bands; give a one-band raster of "
            f"class ids 0..{n_classes - 1}",
            path=labels.path,
        )
    import rasterio

    rows, cols = labels.shape
    step = max(1, math.ceil(max(rows, cols) / 2048))
    with rasterio.open(labels.path) as src:
        sample = src.read(1, out_shape=(max(rows // step, 1), max(cols // step, 1)))
    values = np.unique(sample)
    bad = [int(v) for v in values if not 0 <= v < n_classes and v != IGNORE_LABEL]
    if bad:
        raise ConfigError(
            f"class raster '{labels.path}' holds values {bad[:5]} outside the class ids "
            f"0..{n_classes - 1} (and {IGNORE_LABEL}, unlabelled); recode it or give matching "
            "classes",
            path=labels.path,
        )


def check_raster_overlap(scene: Scene, labels: Scene) -> None:
    from rasterio.warp import transform_bounds

    lb = transform_bounds(labels.crs, scene.crs, *labels.bounds)
    ib = scene.bounds
    if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
        raise ConfigError(
            f"labels '{labels.path}' do not overlap image '{scene.path}' (labels bounds "
            f"{[round(v, 1) for v in lb]}, image bounds {[round(v, 1) for v in ib]} in "
            f"{scene.crs.to_string()}); give labels for the same area",
            path=labels.path,
        )
