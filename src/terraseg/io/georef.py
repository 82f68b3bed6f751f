"""Georeferencing of rasters being opened: CRS parsing, ground pixel size, north-up check.

Helpers of :func:`~terraseg.io.scene.open_scene`: :func:`norm_crs` turns what a
user passes as a CRS into a rasterio CRS, :func:`gsd_xy_m` measures a pixel on
the ground at the scene centre (right for geographic CRSs and distorted
projections too), and :func:`check_georeferencing` rejects rasters without a
north-up geotransform.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeAlias

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError as RioCRSError

from terraseg.errors import CRSError, SceneReadError

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

__all__ = ["SomeCRS", "check_georeferencing", "gsd_xy_m", "norm_crs"]

SomeCRS: TypeAlias = str | int | CRS
"""A CRS as users pass it: ``"EPSG:32633"``, ``32633``, WKT or PROJ text, or a CRS."""


def norm_crs(crs: SomeCRS) -> CRS:
    """Convert ``"EPSG:32633"``, ``32633``, WKT, PROJ or a CRS to a rasterio CRS.

    Raises
    ------
    CRSError
        The CRS is unknown.

    Examples
    --------
    >>> norm_crs(32633).to_epsg()
    32633
    """
    if isinstance(crs, CRS):
        return crs
    import pyproj

    try:
        # pyproj first: it fails quietly, where GDAL would also print "ERROR 1: PROJ: ..."
        parsed = pyproj.CRS.from_user_input(crs)
        return CRS.from_wkt(parsed.to_wkt())
    except (pyproj.exceptions.CRSError, RioCRSError, ValueError, TypeError) as exc:
        raise CRSError(
            f"unknown CRS {crs!r}; pass an EPSG code such as EPSG:32633, or WKT/PROJ text",
            crs=crs,
        ) from exc


def gsd_xy_m(crs: CRS, transform: Affine, shape: tuple[int, int]) -> tuple[float, float]:
    """Ground size of one pixel ``(x, y)`` in metres at the scene centre."""
    res_x, res_y = abs(transform.a), abs(transform.e)
    # Scene centre (the transform is north-up: no rotation terms).
    cx = transform.c + transform.a * shape[1] / 2.0
    cy = transform.f + transform.e * shape[0] / 2.0
    try:
        import pyproj

        pcrs = pyproj.CRS.from_wkt(crs.to_wkt())
        if pcrs.is_geographic:
            geod = pcrs.get_geod() or pyproj.Geod(ellps="WGS84")
            gx = geod.inv(cx - res_x / 2, cy, cx + res_x / 2, cy)[2]
            gy = geod.inv(cx, cy - res_y / 2, cx, cy + res_y / 2)[2]
            return (float(gx), float(gy))
        unit = float(pcrs.axis_info[0].unit_conversion_factor) if pcrs.axis_info else 1.0
        to_geo = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
        lon, lat = to_geo.transform(cx, cy)
        factors = pyproj.Proj(pcrs).get_factors(lon, lat)
        k, h = float(factors.parallel_scale), float(factors.meridional_scale)
        if not (math.isfinite(k) and math.isfinite(h) and k > 0 and h > 0):
            k = h = 1.0
        return (res_x * unit / k, res_y * unit / h)
    except Exception:  # noqa: BLE001 - engineering/odd CRSs: nominal size in CRS units
        factor = crs.linear_units_factor[1] if not crs.is_geographic else 111_320.0
        return (res_x * factor, res_y * factor)


def check_georeferencing(ds: DatasetReader, name: str) -> None:
    """Raise :class:`~terraseg.errors.SceneReadError` unless ``ds`` has a north-up geotransform."""
    t: Affine = ds.transform
    if t == Affine.identity():
        extra = " (it has GCPs: warp it with gdalwarp first)" if ds.gcps[0] else ""
        raise SceneReadError(
            f"scene '{name}' has no geotransform (not georeferenced){extra}; georeference it, "
            f"e.g. gdal_translate -a_srs EPSG:<code> -a_ullr <ulx> <uly> <lrx> <lry> {name} "
            "out.tif",
            path=name,
        )
    if t.b != 0 or t.d != 0:
        raise SceneReadError(
            f"scene '{name}' has a rotated or sheared geotransform {tuple(t)[:6]}; terraseg needs "
            f"a north-up raster: run gdalwarp {name} {name.rsplit('.', 1)[0]}_northup.tif",
            path=name,
        )
