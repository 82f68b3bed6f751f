"""Building regularization: square corners, edges aligned to the dominant orientation.

For each building:

1. The outline is simplified (Douglas-Peucker, ``tolerance_m``, vectorized over
   all rings at once); the simplified edges give the building's structure.
2. The dominant orientation is the minimum rotated rectangle's (of the
   unsimplified outline: far steadier than the simplified edges' mean angle).
   Each simplified edge is snapped to that orientation or the perpendicular one
   (optionally also the diagonals); consecutive edges with the same direction
   form a run.
3. Each run becomes one straight line, placed by a length-weighted least-squares
   fit to the midpoints of all the unsimplified edges it covers. For a pixel
   outline these are the midpoints of the pixel edges, which lie on the true
   edge of a shape rasterized at pixel centres (the staircase corners lie up to
   half a pixel off it, which is why fitting the simplified vertices is worse).
4. The corners are the intersections of consecutive runs.

A building falls back to its simplified outline when the result is invalid,
degenerate, or has an IoU below ``min_iou`` with the input outline.

Everything is vectorized over arrays of polygons (flat coordinate arrays, one
numpy pass per step, no Python loop per building); large arrays are split over
threads, one per CPU (each building is regularized on its own, so the result does
not depend on the split; numpy and GEOS release the GIL). Coordinates must be in a
metric frame (metres, equal scale on both axes); :func:`regularize_buildings`
reprojects a GeoDataFrame for you. Pure module: numpy, shapely and pyproj only.

The flat ring arrays and the Douglas-Peucker of step 1 are in
:mod:`terraseg.vector.rings`, the orientation, runs, line fits and corners of steps
2 to 4 in :mod:`terraseg.vector.orthogonal`; this module chains them, checks the
result and falls back, and spreads large arrays over threads.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from numpy.typing import NDArray

from terraseg.core.metric import MetricFrame
from terraseg.errors import ConfigError
from terraseg.vector.orthogonal import _envelope_angle, _fit, _mean_angle, _samples
from terraseg.vector.polygonize import cpu_threads
from terraseg.vector.rings import _douglas_peucker, _Edges, _merge, _Rings

__all__ = [
    "dominant_angle",
    "regularize_building",
    "regularize_buildings",
    "regularize_polygons",
]

Geoms = NDArray[np.object_]


def _check(tolerance_m: float, min_iou: float) -> None:
    if not (tolerance_m > 0 and math.isfinite(tolerance_m)):
        raise ConfigError(
            f"tolerance_m must be a finite number > 0, got {tolerance_m}; use e.g. 1.0 "
            "(about two pixels at 0.5 m)",
            tolerance_m=tolerance_m,
        )
    if not 0.0 <= min_iou <= 1.0:
        raise ConfigError(f"min_iou must lie in [0, 1], got {min_iou}", min_iou=min_iou)


def dominant_angle(geoms: Geoms | list[Any]) -> NDArray[np.float64]:
    """Dominant edge orientation of each polygon, radians in ``[-pi/4, pi/4)``.

    The edge-length-weighted circular mean of the edge angles modulo 90°
    (angles are multiplied by 4 so that 0°, 90°, 180° and 270° coincide).
    NaN for empty geometries.

    Examples
    --------
    >>> from shapely import box
    >>> from shapely.affinity import rotate
    >>> round(math.degrees(dominant_angle([rotate(box(0, 0, 10, 4), 30)])[0]), 6)
    30.0
    >>> round(math.degrees(dominant_angle([rotate(box(0, 0, 10, 4), 80)])[0]), 6)
    -10.0
    """
    arr = np.asarray(geoms, object)
    return _mean_angle(_Edges(_Rings.from_geoms(arr)), len(arr))


def regularize_polygons(
    geoms: Geoms | list[Any],
    *,
    tolerance_m: float = 0.75,
    min_iou: float = 0.85,
    allow_diagonal: bool = False,
    diagonal_min_m: float | None = None,
    threads: int | None = None,
) -> Geoms:
    """Regularize an array of building (multi)polygons in a metric frame.

    Parameters
    ----------
    geoms
        Polygons or MultiPolygons, coordinates in metres (a projected CRS).
    tolerance_m
        Douglas-Peucker tolerance of the structure, metres: deviations smaller than
        this become straight edges. For pixel outlines it must flatten the staircase
        of a rotated edge: 1 to 2 pixels (more for noisy model output).
    min_iou
        A result whose IoU with the input is below this (or that is invalid,
        empty or degenerate) is replaced by the simplified input (or the input
        itself when the simplification is degenerate). 0.85 rather than 0.8: a
        4 m square at 35° on 0.5 m pixels came out as a 9-vertex shape with IoU
        0.84 to its outline and 0.81 to the truth (the outline has 0.885);
        well-regularized small buildings score 0.87 and up.
    allow_diagonal
        Also snap edges within 15° of the diagonal (45° to the dominant orientation)
        and at least ``diagonal_min_m`` long (default ``4 * tolerance_m``) to it,
        rather than to a staircase.
    diagonal_min_m
        See ``allow_diagonal``.
    threads
        Most threads to spread the array over (default: one per CPU), each taking at
        least 256 buildings; the result does not depend on it.

    Returns
    -------
    numpy.ndarray
        Object array of valid Polygons/MultiPolygons, same length and order; holes kept
        (regularized like the outline; a hole that collapses is dropped). Empty or
        degenerate inputs come back unchanged.

    Examples
    --------
    >>> from shapely import Polygon
    >>> wobbly = Polygon([(0, 0), (10, 0.3), (10.2, 5), (0.1, 4.8)])
    >>> out = regularize_polygons([wobbly], tolerance_m=0.5)[0]
    >>> len(out.exterior.coords), round(out.area / wobbly.area, 2)
    (5, 1.0)
    """
    _check(tolerance_m, min_iou)
    arr = np.asarray(geoms, object)
    n = len(arr)
    if n == 0:
        return arr
    diag_min = diagonal_min_m or 4 * tolerance_m
    parts = min(threads or cpu_threads(), n // _MIN_PER_THREAD)
    if parts <= 1:
        return _regularize(arr, tolerance_m, min_iou, allow_diagonal, diag_min)
    # every building is regularized on its own: contiguous parts on threads give the
    # same result (numpy and GEOS release the GIL for most of the work)
    cuts = np.linspace(0, n, parts + 1).astype(np.int64)
    with ThreadPoolExecutor(parts - 1) as pool:
        rest = [
            pool.submit(_regularize, arr[a:b], tolerance_m, min_iou, allow_diagonal, diag_min)
            for a, b in zip(cuts[1:-1], cuts[2:], strict=True)
        ]
        first = _regularize(arr[: cuts[1]], tolerance_m, min_iou, allow_diagonal, diag_min)
        out: Geoms = np.concatenate([first, *(f.result() for f in rest)])
    return out


_MIN_PER_THREAD = 256
"""Buildings per thread below which :func:`regularize_polygons` stays on one thread."""


def _regularize(
    arr: Geoms, tolerance_m: float, min_iou: float, allow_diagonal: bool, diag_min: float
) -> Geoms:
    """:func:`regularize_polygons` of a non-empty array, on the calling thread."""
    n = len(arr)
    src = _Rings.from_geoms(arr)
    keep = _douglas_peucker(src, tolerance_m)
    simple_all = src.select(keep)
    ring_ok = simple_all.final_mask(simple_all.count >= 4)
    simple = simple_all.drop(ring_ok)
    if len(simple.xy) == 0:
        return _fallback(arr, simple, np.ones(n, bool))
    e = _Edges(simple)
    smp = _samples(src, keep, ring_ok)
    rebuilt, ok, swept = _fit(e, smp, n, _envelope_angle(arr), allow_diagonal, diag_min)
    # the rectangle snaps small, slightly rotated buildings to the pixel axes: where the
    # simplified edges' mean orientation fits the outline better, take it instead
    alt, alt_ok, alt_swept = _fit(e, smp, n, _mean_angle(e, n), allow_diagonal, diag_min)
    better = alt_ok & (~ok | (alt_swept < 0.9 * swept))
    if better.any():
        rebuilt = _merge(rebuilt, alt, better)
        ok = np.where(better, alt_ok, ok)
        swept = np.where(better, alt_swept, swept)
    result = rebuilt.to_geoms()
    ok[ok] = shapely.is_valid(result[ok]) & ~shapely.is_empty(result[ok])
    # IoU with the input outline, estimated from the area swept between the outline
    # points and the new edges and from the change of area against the simplified
    # outline; an exact overlay with the input only where the estimate comes near
    # min_iou (the margin covers the simplification's own deviation, which is large
    # for small buildings: a 6.4 x 4.3 m building at 53° scored 0.84 with its
    # simplified outline but 0.82 with the input, and 0.83 with the truth)
    a0, a1 = simple.areas(), rebuilt.areas()
    est = 1.0 - np.maximum(swept, np.abs(a1 - a0)) / np.maximum(np.maximum(a0, a1), 1e-300)
    check = ok & (est < min(1.0, min_iou + 0.1))
    if check.any():
        ref = arr[check]
        res = result[check]
        inter = shapely.area(shapely.intersection(res, ref))
        ra, rb = shapely.area(ref), shapely.area(res)
        iou = inter / np.maximum(ra + rb - inter, 1e-300)
        ok[np.flatnonzero(check)[iou < min_iou]] = False
    if not ok.all():
        result[~ok] = _fallback(arr[~ok], simple.subset(~ok), np.ones(int((~ok).sum()), bool))
    return result


def _fallback(arr: Geoms, simple: _Rings, want: NDArray[np.bool_]) -> Geoms:
    """The simplified outlines where valid, else the inputs themselves."""
    geoms = simple.to_geoms()
    good = np.array([g is not None for g in geoms], bool) & want
    good[good] = shapely.is_valid(geoms[good])
    return np.where(good, geoms, arr)


def regularize_building(
    poly: shapely.Polygon | shapely.MultiPolygon,
    *,
    tolerance_m: float = 0.75,
    min_iou: float = 0.85,
    allow_diagonal: bool = False,
) -> shapely.Polygon | shapely.MultiPolygon:
    """Regularize one building polygon (coordinates in metres).

    See :func:`regularize_polygons`; returns a valid Polygon (or MultiPolygon for a
    MultiPolygon input).

    Examples
    --------
    >>> from shapely import Polygon
    >>> stairs = Polygon([(0, 0), (6, 0), (6, 3), (5.9, 3), (5.9, 3.2), (0, 3.1)])
    >>> out = regularize_building(stairs, tolerance_m=0.3)
    >>> len(out.exterior.coords) - 1, round(out.area, 1)
    (4, 18.9)
    """
    out: shapely.Polygon | shapely.MultiPolygon = regularize_polygons(
        [poly], tolerance_m=tolerance_m, min_iou=min_iou, allow_diagonal=allow_diagonal
    )[0]
    return out


def regularize_buildings(
    gdf: gpd.GeoDataFrame,
    *,
    tolerance_m: float = 0.75,
    min_iou: float = 0.85,
    allow_diagonal: bool = False,
) -> gpd.GeoDataFrame:
    """Regularize the polygons of a GeoDataFrame, in metres whatever its CRS.

    Measured as :class:`terraseg.core.metric.MetricFrame` does: a geographic CRS,
    or a projected one whose scale is off by more than 0.5 % (Web Mercator away
    from the equator), is regularized in its local UTM zone and projected back; a
    projected CRS whose unit is not the metre is scaled to metres. An ``area_m2``
    column, when present, is recomputed (m²). Returns a new GeoDataFrame in the
    input's CRS; the input is not modified.

    Raises
    ------
    ConfigError
        If the GeoDataFrame has no CRS.
    """
    if gdf.crs is None:
        raise ConfigError(
            "GeoDataFrame has no CRS; set one (gdf.set_crs('EPSG:32633')) so that "
            "tolerance_m can be read in metres",
        )
    geoms = np.asarray(gdf.geometry.array, object)
    bounds = tuple(float(b) for b in gdf.total_bounds)
    frame = MetricFrame.from_bounds(gdf.crs, bounds)  # type: ignore[arg-type]
    reg = regularize_polygons(
        frame.crs_to_metric(geoms), tolerance_m=tolerance_m, min_iou=min_iou,
        allow_diagonal=allow_diagonal,
    )
    back = gpd.GeoSeries(frame.metric_to_crs(reg), crs=gdf.crs, index=gdf.index)
    out = gdf.copy()
    out = out.set_geometry(back)
    if "area_m2" in out.columns:
        out["area_m2"] = shapely.area(reg)
    return out
