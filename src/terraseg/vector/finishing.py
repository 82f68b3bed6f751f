"""Finishing vectorized polygons: repair, area filter, simplify or regularize, scene CRS.

Every polygon that :mod:`terraseg.vector.vectorization` emits goes through
:func:`_finish_part`: invalid geometries are repaired to their polygonal parts,
polygons smaller than ``min_area_m2`` (measured in metres by the scene's
:class:`terraseg.core.metric.MetricFrame`) or empty are dropped and counted
(:class:`_Drops`, reported as a :class:`GeometryDropWarning`), buildings are
regularized (:func:`terraseg.vector.regularize.regularize_polygons`) or outlines
simplified, and the result is moved from scene pixels to the scene CRS. The
settings travel as one :class:`_PolygonOptions`. Pure module: numpy and shapely;
it opens no file.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import shapely
from numpy.typing import NDArray

from terraseg.core.metric import MetricFrame
from terraseg.errors import ConfigError
from terraseg.vector.regularize import regularize_polygons

__all__ = ["GeometryDropWarning"]

Geoms: TypeAlias = "NDArray[np.object_]"


class GeometryDropWarning(UserWarning):
    """Some geometries were dropped (empty, invalid beyond repair, or too small)."""


@dataclass
class _Drops:
    small: int = 0
    empty: int = 0

    def warn(self, what: str, min_area_m2: float) -> None:
        total = self.small + self.empty
        if total:
            warnings.warn(
                f"{what}: dropped {total} geometries ({self.small} smaller than "
                f"min_area_m2={min_area_m2:g}, {self.empty} empty or invalid beyond repair)",
                GeometryDropWarning,
                stacklevel=3,
            )


def _polygonal(geoms: Geoms, check: NDArray[np.bool_] | None = None) -> Geoms:
    """Repair invalid geometries and keep only their polygonal parts (empty if none).

    Only the geometries in ``check`` (default: all) are checked: the pixel polygons of
    :func:`terraseg.vector.polygonize.polygonize_labels` are valid by construction.
    """
    geoms = np.asarray(geoms, object)
    if check is None:
        bad = ~shapely.is_valid(geoms)
    else:
        bad = np.zeros(len(geoms), bool)
        bad[check] = ~shapely.is_valid(geoms[check])
    if bad.any():
        fixed = shapely.make_valid(geoms[bad])
        types = shapely.get_type_id(fixed)
        coll = types == shapely.GeometryType.GEOMETRYCOLLECTION
        if coll.any():
            fixed[coll] = [
                shapely.union_all(
                    [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
                )
                for g in fixed[coll]
            ]
        nonpoly = ~np.isin(
            shapely.get_type_id(fixed),
            [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON],
        )
        fixed[nonpoly] = shapely.Polygon()
        geoms = geoms.copy()
        geoms[bad] = fixed
    return geoms


@dataclass(frozen=True)
class _PolygonOptions:
    frame: MetricFrame
    scene_shape: tuple[int, int]
    min_area_m2: float
    simplify_m: float
    regularize: bool
    regularize_tolerance_m: float
    min_iou: float


def _finish_part(
    geoms_px: Geoms, opts: _PolygonOptions, check: NDArray[np.bool_] | None
) -> tuple[Geoms, NDArray[np.float64], NDArray[np.bool_], int]:
    """:func:`terraseg.vector.vectorization._finish_polygons` of some geometries on the
    calling thread, and how many were empty (or invalid beyond repair)."""
    geoms_px = np.asarray(shapely.normalize(_polygonal(geoms_px, check)), object)
    metric = opts.frame.px_to_metric(geoms_px)
    area = shapely.area(metric)
    empty = shapely.is_empty(geoms_px)
    small = ~empty & (area < opts.min_area_m2)
    kept = ~(empty | small)
    metric = metric[kept]
    if opts.regularize:
        # a building cut by the scene edge has the scene's outline there, not its own:
        # it keeps its pixel outline
        bounds = shapely.bounds(geoms_px[kept])
        rows, cols = opts.scene_shape
        cut = (
            (bounds[:, 0] <= 0)
            | (bounds[:, 1] <= 0)
            | (bounds[:, 2] >= cols)
            | (bounds[:, 3] >= rows)
        )
        metric = metric.copy()
        metric[~cut] = regularize_polygons(
            metric[~cut], tolerance_m=opts.regularize_tolerance_m, min_iou=opts.min_iou, threads=1
        )
    elif opts.simplify_m > 0:
        metric = shapely.simplify(metric, opts.simplify_m, preserve_topology=True)
        metric = _polygonal(metric)
    if opts.regularize or opts.simplify_m > 0:
        # regularize_polygons returns valid polygons (its fallbacks included)
        out = opts.frame.metric_to_crs(metric)
        area = shapely.area(metric)
    else:
        out = opts.frame.px_to_crs(geoms_px[kept])
        area = area[kept]
    geoms = np.asarray(shapely.normalize(out), object)
    return geoms, np.asarray(area, np.float64), kept, int(empty.sum())


def _check_options(min_area_m2: float, simplify_m: float) -> None:
    if not (min_area_m2 >= 0 and math.isfinite(min_area_m2)):
        raise ConfigError(
            f"min_area_m2 must be a finite number >= 0, got {min_area_m2}", min_area_m2=min_area_m2
        )
    if not (simplify_m >= 0 and math.isfinite(simplify_m)):
        raise ConfigError(
            f"simplify_m must be a finite number >= 0, got {simplify_m}", simplify_m=simplify_m
        )


def _options(
    frame: MetricFrame,
    scene_shape: tuple[int, int],
    min_area_m2: float,
    simplify_m: float,
    regularize: bool,
    regularize_tolerance_m: float | None,
    min_iou: float,
) -> _PolygonOptions:
    _check_options(min_area_m2, simplify_m)
    tol = regularize_tolerance_m
    if tol is None:
        tol = max(simplify_m, 1.5 * frame.pixel_m)
    return _PolygonOptions(
        frame, scene_shape, min_area_m2, simplify_m, regularize, float(tol), min_iou
    )
