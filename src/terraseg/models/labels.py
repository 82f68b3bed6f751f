"""Labels for training: vector layers burned onto an image's grid, class rasters checked.

Vector labels are rasterized block by block into a uint8 class GeoTIFF on the
image grid (later layers are burned over earlier ones: roads, then buildings,
as the synthetic truth does); a class raster given instead is checked for
overlap with the image and for values outside the class ids.
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
    "DEFAULT_LAYERS",
    "RASTER_SUFFIXES",
    "LabelWarning",
    "PathLike",
    "check_label_values",
    "check_raster_overlap",
    "rasterize_labels",
]

PathLike = str | os.PathLike[str]

DEFAULT_LAYERS: dict[str, int] = {"roads": 2, "buildings": 1}
"""Vector layer → class value, in burn order (later over earlier)."""

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")
"""Label files with these suffixes are class rasters; others are vector files."""


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
    if n_invalid:
        warnings.warn(
            f"labels '{labels}': repaired {n_invalid} invalid geometr"
            f"{'y' if n_invalid == 1 else 'ies'} with shapely.make_valid",
            LabelWarning,
            stacklevel=3,
        )
    if n_empty:
        warnings.warn(
            f"labels '{labels}': skipped {n_empty} empty or missing geometr"
            f"{'y' if n_empty == 1 else 'ies'}",
            LabelWarning,
            stacklevel=3,
        )
    return shapes


def rasterize_labels(
    labels: PathLike,
    image: PathLike | Scene,
    out: PathLike,
    *,
    layers: Mapping[str, int] | None = None,
    block_rows: int = 1024,
    edge_px: int | None = None,
    building_class: int = 1,
) -> Path:
    """Rasterize vector labels onto an image's grid as a uint8 class GeoTIFF.

    Parameters
    ----------
    labels
        A vector file (GeoPackage with one layer per class, shapefile, GeoJSON).
    image
        The image whose grid (CRS, transform, shape) the classes are burned on.
    out
        Output GeoTIFF (tiled, LZW), 0 where no label falls.
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

    Raises
    ------
    ConfigError
        Unreadable labels, missing layers, no CRS, or no overlap with the image.

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
    src = Path(labels)
    shapes = read_layers(src, layers or DEFAULT_LAYERS, scene)
    geoms = np.asarray([g for g, _ in shapes], dtype=object)
    values = np.asarray([v for _, v in shapes], dtype=np.uint8)
    left, bottom, right, top = scene.bounds
    if not len(geoms):
        raise ConfigError(
            f"labels '{src}' hold no geometries in layer(s) "
            f"{', '.join(layers or DEFAULT_LAYERS)}; give labels with features",
            path=src,
        )
    tree = shapely.STRtree(geoms)
    hits = tree.query(shapely.box(left, bottom, right, top), predicate="intersects")
    if hits.size == 0:
        extent = shapely.total_bounds(geoms) if len(geoms) else None
        raise ConfigError(
            f"labels '{src}' do not overlap image '{scene.path}' (labels bounds "
            f"{None if extent is None else [round(float(v), 1) for v in extent]}, image bounds "
            f"{[round(v, 1) for v in (left, bottom, right, top)]} in {scene.crs.to_string()}); "
            "give labels for the same area",
            path=src,
        )
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
            block = np.zeros((int(win.height), cols), np.uint8)
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
