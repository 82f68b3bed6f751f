"""Burning exact vectors into pixel grids: GDAL shapes, burns and the truth rasters.

Polygons go to GDAL as GeoJSON built straight from their coordinate arrays, so
a window burns exactly the pixels the whole scene would; the truth rasters are
burned with ``all_touched=ALL_TOUCHED`` (pixel centres).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize

from terraseg.core.grid import PixelWindow
from terraseg.synthetic.layout import GeomArray, PixelBlock, TruthFeatures

__all__ = ["ALL_TOUCHED", "burn", "cat", "rasterize_truth", "select"]

ALL_TOUCHED = False
"""The ``all_touched`` setting of every truth rasterization (pixel centres)."""

def cat(blocks: list[PixelBlock], name: str) -> NDArray[Any]:
    """The ``name`` arrays of ``blocks``, concatenated (empty when there is none)."""
    arrays = [getattr(b, name) for b in blocks]
    return np.concatenate(arrays) if arrays else np.empty(0)


def _shapes(
    geoms: GeomArray, values: NDArray[np.generic]
) -> list[tuple[dict[str, object], object]]:
    """``(GeoJSON polygon, value)`` pairs built straight from coordinate arrays.

    Much faster than ``__geo_interface__`` for thousands of small polygons, and
    the same coordinates (Python floats from the same float64 values), so GDAL
    burns exactly the same pixels. MultiPolygons are split into their parts.
    """
    parts, index = shapely.get_parts(geoms, return_index=True)
    keep = (shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)
    parts, index = parts[keep], index[keep]
    if len(parts) == 0:
        return []
    _, coords, (ring_off, geom_off) = shapely.to_ragged_array(parts)
    pts = coords.tolist()
    ro = ring_off.tolist()
    go = geom_off.tolist()
    vals = values[index].tolist()
    return [
        (
            {
                "type": "Polygon",
                "coordinates": [pts[ro[r] : ro[r + 1]] for r in range(go[k], go[k + 1])],
            },
            vals[k],
        )
        for k in range(len(parts))
    ]


def burn(
    geoms: GeomArray,
    values: NDArray[np.generic] | int,
    shape: tuple[int, int],
    transform: Affine,
    dtype: str,
    all_touched: bool = False,
    out: NDArray[Any] | None = None,
) -> NDArray[Any]:
    """Burn polygons into ``out`` (new zeros if not given); later shapes win."""
    if out is None:
        out = np.zeros(shape, dtype=dtype)
    if len(geoms) == 0:
        return out
    vals = np.broadcast_to(np.asarray(values), (len(geoms),))
    pairs = _shapes(geoms, vals)
    if not pairs:
        return out
    burned: NDArray[Any] = rasterize(pairs, out=out, transform=transform, all_touched=all_touched)
    return burned


def rasterize_truth(
    truth: TruthFeatures, window: PixelWindow, transform: Affine
) -> tuple[NDArray[np.uint8], NDArray[np.uint32]]:
    """Class (0 background, 1 building, 2 road) and instance rasters of a window.

    ``transform`` is the scene's; the vectors are in the scene CRS. Roads are
    burned before buildings and buildings in ascending ``building_id``, with
    ``all_touched=ALL_TOUCHED``; rasterizing the written GeoPackage the same
    way gives the written truth rasters exactly.
    """
    wt = transform * Affine.translation(window.col_off, window.row_off)
    shape = window.shape
    order = np.argsort(truth.building_id, kind="stable")
    blds = truth.buildings[order]
    classes = burn(truth.roads, 2, shape, wt, "uint8", ALL_TOUCHED)
    burn(blds, 1, shape, wt, "uint8", ALL_TOUCHED, out=classes)
    inst = burn(blds, truth.building_id[order].astype(np.uint32), shape, wt, "uint32", ALL_TOUCHED)
    return classes.astype(np.uint8), inst.astype(np.uint32)


def select(geoms: GeomArray, region: shapely.Geometry) -> NDArray[np.bool_]:
    """Which of ``geoms`` intersect ``region``."""
    if len(geoms) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(shapely.intersects(geoms, region), dtype=bool)
