"""Metres for any CRS: the scene CRS scaled to metres, or a local UTM zone.

Areas and lengths in terraseg are in metres whatever the CRS (DESIGN.md). A
projected CRS is measured in its own axes scaled by its unit (feet → metres); a
geographic CRS is measured in the WGS 84 UTM zone of the area's centre.
:class:`MetricFrame` does this for a raster scene (pixel frame → CRS → metres);
:func:`estimate_utm_crs` and :func:`local_metric_crs` do it for vector data.

Pure module: numpy, shapely, affine, pyproj; opens no file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pyproj
import shapely
from affine import Affine
from numpy.typing import NDArray

from terraseg.errors import CRSError

__all__ = [
    "MetricFrame",
    "SomeCRS",
    "estimate_utm_crs",
    "local_metric_crs",
    "norm_crs",
]

SomeCRS: TypeAlias = "str | int | pyproj.CRS | Any"
Geoms: TypeAlias = "NDArray[np.object_]"


def norm_crs(crs: SomeCRS, *, what: str = "scene") -> pyproj.CRS:
    """Convert any CRS input (EPSG code, ``"EPSG:…"``, WKT, pyproj/rasterio CRS) once.

    Raises
    ------
    CRSError
        If ``crs`` is None (``"<what> has no CRS"``) or unknown.

    Examples
    --------
    >>> norm_crs(32633).to_epsg()
    32633
    """
    if crs is None:
        raise CRSError(f"{what} has no CRS; pass the {what}'s CRS (e.g. crs='EPSG:32633')", crs=crs)
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise CRSError(
            f"unknown CRS {crs!r}; pass an EPSG code or WKT, e.g. 'EPSG:32633'", crs=crs
        ) from exc


def estimate_utm_crs(lon: float, lat: float, *, where: str = "the point") -> pyproj.CRS:
    """The WGS 84 UTM zone containing ``(lon, lat)`` (degrees).

    Parameters
    ----------
    lon, lat
        Longitude and latitude in degrees (WGS 84).
    where
        Names the point in the error message.

    Raises
    ------
    CRSError
        If no UTM zone covers the point (polar regions).

    Examples
    --------
    >>> estimate_utm_crs(15.2, 41.9).to_epsg()
    32633
    >>> estimate_utm_crs(-70.6, -33.4).to_epsg()
    32719
    """
    infos = pyproj.database.query_utm_crs_info(
        datum_name="WGS 84",
        area_of_interest=pyproj.aoi.AreaOfInterest(lon, lat, lon, lat),
    )
    if not infos:
        raise CRSError(
            f"no UTM zone covers {where} ({lon:.4f}, {lat:.4f}); "
            "reproject the data to a projected CRS",
            lon=lon,
            lat=lat,
        )
    return pyproj.CRS.from_epsg(int(infos[0].code))


def local_metric_crs(
    crs: SomeCRS, bounds: tuple[float, float, float, float], *, what: str = "data"
) -> pyproj.CRS:
    """A CRS whose axes are in metres, for measuring data with ``bounds`` in ``crs``.

    ``crs`` itself when it is projected in metres; otherwise the WGS 84 UTM zone of
    the centre of ``bounds`` (``(minx, miny, maxx, maxy)`` in ``crs`` units).

    Examples
    --------
    >>> local_metric_crs("EPSG:32633", (0.0, 0.0, 1.0, 1.0)).to_epsg()
    32633
    >>> local_metric_crs("EPSG:4326", (15.0, 41.8, 15.1, 41.9)).to_epsg()
    32633
    """
    pcrs = norm_crs(crs, what=what)
    if pcrs.is_projected and pcrs.axis_info:
        if float(pcrs.axis_info[0].unit_conversion_factor) == 1.0:
            return pcrs
    cx, cy = (bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0
    if not (math.isfinite(cx) and math.isfinite(cy)):
        cx, cy = 0.0, 0.0
    lon, lat = pyproj.Transformer.from_crs(pcrs, "EPSG:4326", always_xy=True).transform(cx, cy)
    return estimate_utm_crs(lon, lat, where=f"the centre of the {what}")


def _apply_affine(geoms: Geoms, aff: Affine) -> Geoms:
    if aff == Affine.identity():
        return geoms
    a, b, c, d, e, f = aff.a, aff.b, aff.c, aff.d, aff.e, aff.f

    def fn(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return np.asarray(shapely.transform(geoms, fn), object)


def _xy(t: Affine, col: float, row: float) -> tuple[float, float]:
    """``t`` applied to the pixel point ``(col, row)``."""
    return (t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f)


@dataclass(frozen=True)
class MetricFrame:
    """Converts scene-pixel geometries to the scene CRS and to a metric frame.

    The metric frame is the scene CRS scaled to metres when it is projected, and
    the UTM zone of the scene centre (WGS 84) when it is geographic.

    Attributes
    ----------
    transform
        Scene affine transform (pixel → CRS).
    crs
        Scene CRS.
    pixel_m
        Approximate size of a pixel in metres (square root of its area).
    """

    transform: Affine
    crs: pyproj.CRS
    pixel_m: float
    _unit_m: float | None = None
    _to_m: pyproj.Transformer | None = field(default=None, repr=False)
    _from_m: pyproj.Transformer | None = field(default=None, repr=False)

    @classmethod
    def from_scene(
        cls, transform: Affine, crs: SomeCRS, scene_shape: tuple[int, int]
    ) -> MetricFrame:
        """Frame for a scene of ``scene_shape = (rows, cols)`` with ``transform`` and ``crs``."""
        pcrs = norm_crs(crs)
        det = abs(transform.determinant)
        if pcrs.is_geographic:
            cx, cy = _xy(transform, scene_shape[1] / 2.0, scene_shape[0] / 2.0)
            lonlat = pyproj.Transformer.from_crs(pcrs, "EPSG:4326", always_xy=True)
            lon, lat = lonlat.transform(cx, cy)
            try:
                utm = estimate_utm_crs(lon, lat)
            except CRSError:
                raise CRSError(
                    f"no UTM zone covers the scene centre ({lon:.4f}, {lat:.4f}); "
                    "reproject the scene to a projected CRS",
                    crs=crs,
                ) from None
            to_m = pyproj.Transformer.from_crs(pcrs, utm, always_xy=True)
            from_m = pyproj.Transformer.from_crs(utm, pcrs, always_xy=True)
            x0, y0 = to_m.transform(cx, cy)
            x1, y1 = to_m.transform(*_xy(transform, scene_shape[1] / 2.0 + 1, scene_shape[0] / 2.0))
            x2, y2 = to_m.transform(*_xy(transform, scene_shape[1] / 2.0, scene_shape[0] / 2.0 + 1))
            pixel_m = math.sqrt(abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)))
            return cls(transform, pcrs, pixel_m, None, to_m, from_m)
        unit = float(pcrs.axis_info[0].unit_conversion_factor) if pcrs.axis_info else 1.0
        return cls(transform, pcrs, math.sqrt(det) * unit, unit)

    @property
    def is_geographic(self) -> bool:
        """True when the metric frame is a UTM zone, not the scene CRS itself."""
        return self._unit_m is None

    def px_to_crs(self, geoms: Geoms) -> Geoms:
        """Scene-pixel geometries → scene CRS."""
        return _apply_affine(geoms, self.transform)

    def px_to_metric(self, geoms: Geoms) -> Geoms:
        """Scene-pixel geometries → metric frame (metres)."""
        if self._unit_m is not None:
            t, u = self.transform, self._unit_m
            return _apply_affine(
                geoms, Affine(t.a * u, t.b * u, t.c * u, t.d * u, t.e * u, t.f * u)
            )
        return self._pyproj(self.px_to_crs(geoms), self._to_m)

    def metric_to_crs(self, geoms: Geoms) -> Geoms:
        """Metric-frame geometries → scene CRS."""
        if self._unit_m is not None:
            return _apply_affine(geoms, Affine.scale(1.0 / self._unit_m))
        return self._pyproj(geoms, self._from_m)

    @staticmethod
    def _pyproj(geoms: Geoms, tr: pyproj.Transformer | None) -> Geoms:
        assert tr is not None

        def fn(xy: NDArray[np.float64]) -> NDArray[np.float64]:
            x, y = tr.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        return np.asarray(shapely.transform(geoms, fn), object)
