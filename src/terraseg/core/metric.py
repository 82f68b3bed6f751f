"""Metres for any CRS: the scene CRS scaled to metres, or a local UTM zone.

Areas and lengths in terraseg are in metres whatever the CRS (DESIGN.md). A
projected CRS whose scale at the area's centre is within :data:`MAX_SCALE_ERROR`
of 1 is measured in its own axes scaled by its unit (feet → metres). Any other
CRS is measured in the WGS 84 UTM zone of the area's centre: geographic CRSs,
Web Mercator (its scale is 1/cos(latitude): 2 at 60°; and even at the equator
it stretches north-south lengths by 0.67 % on the WGS 84 ellipsoid), conformal
projections far from their centre, and equal-area projections where lengths are
stretched. :func:`scale_error` measures the scale on the CRS's ellipsoid.
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
    "MAX_SCALE_ERROR",
    "MetricFrame",
    "SomeCRS",
    "estimate_utm_crs",
    "local_metric_crs",
    "norm_crs",
    "scale_error",
]

#: Largest departure of a projected CRS's scale from 1 (of a length in any
#: direction, or of an area, at the area's centre) for which it is still measured
#: in its own axes; beyond it, areas and lengths are measured in the local UTM zone.
MAX_SCALE_ERROR = 0.005

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


def scale_error(crs: SomeCRS, x: float, y: float) -> float:
    """How far a projected CRS's scale at ``(x, y)`` (CRS units) is from 1.

    The relative error of a length in the worst direction, or of an area, when
    measured in the CRS's own axes (scaled by their unit, so feet do not count)
    instead of on its ellipsoid. Measured, not taken from the projection's
    formulas: one CRS unit east and north of the point is measured on the
    ellipsoid (``pyproj.Geod.inv``), and the extreme scales are the singular
    values of that 2 × 2 Jacobian. ``pyproj.Proj.get_factors`` would give the
    same for a true ellipsoidal projection, but it reports Web Mercator's
    spherical factors: 1.0 at the equator, where it stretches north-south
    lengths and areas by 0.67 % on the WGS 84 ellipsoid.

    Returns ``0.0`` for a geographic CRS, or where PROJ cannot transform the
    point (engineering or unusual CRSs, points outside the projection's domain):
    no evidence of distortion.

    Examples
    --------
    >>> round(scale_error("EPSG:3857", 0.0, 0.0), 4)  # Web Mercator at the equator
    0.0067
    >>> round(scale_error("EPSG:3857", 1_669_792.4, 8_399_737.9), 2)  # 15°E 60°N
    2.99
    >>> scale_error("EPSG:32633", 500_000.0, 4_650_000.0) < MAX_SCALE_ERROR
    True
    """
    pcrs = norm_crs(crs)
    if not pcrs.is_projected:
        return 0.0
    try:
        base = pcrs.geodetic_crs or pyproj.CRS.from_epsg(4326)
        geod = base.get_geod() or pyproj.Geod(ellps="WGS84")
        to_base = pyproj.Transformer.from_crs(pcrs, base, always_xy=True)
        lon, lat = to_base.transform([x, x + 1.0, x], [y, y, y + 1.0], errcheck=True)
        az, _, dist = geod.inv([lon[0]] * 2, [lat[0]] * 2, lon[1:], lat[1:])
    except (pyproj.exceptions.ProjError, pyproj.exceptions.CRSError, ValueError):
        return 0.0
    unit = float(pcrs.axis_info[0].unit_conversion_factor) if pcrs.axis_info else 1.0
    rad = np.radians(np.asarray(az, np.float64))
    # true metres (east, north) per nominal metre of a step along x (column 0) and y (column 1)
    jac = np.vstack([np.sin(rad), np.cos(rad)]) * np.asarray(dist, np.float64) / unit
    sigma = np.linalg.svd(jac, compute_uv=False)
    if not (np.all(np.isfinite(sigma)) and sigma.min() > 0):
        return 0.0
    scales = (1.0 / sigma[0], 1.0 / sigma[1], 1.0 / (sigma[0] * sigma[1]))
    return float(max(abs(v - 1.0) for v in scales))


def _lonlat(pcrs: pyproj.CRS, x: float, y: float) -> tuple[float, float]:
    lon, lat = pyproj.Transformer.from_crs(pcrs, "EPSG:4326", always_xy=True).transform(x, y)
    return float(lon), float(lat)


def _utm_for(pcrs: pyproj.CRS, x: float, y: float, where: str) -> pyproj.CRS | None:
    """The UTM zone to measure in around ``(x, y)``, or None to measure in ``pcrs``.

    None when ``pcrs`` is projected with a scale within :data:`MAX_SCALE_ERROR`
    of 1 there, or when it is projected and no UTM zone covers the point (polar
    regions: the CRS's own axes are the best frame at hand). A geographic CRS
    with no UTM zone raises :class:`~terraseg.errors.CRSError`.
    """
    if pcrs.is_projected and scale_error(pcrs, x, y) <= MAX_SCALE_ERROR:
        return None
    lon, lat = _lonlat(pcrs, x, y)
    try:
        return estimate_utm_crs(lon, lat, where=where)
    except CRSError:
        if pcrs.is_projected:
            return None
        raise


def local_metric_crs(
    crs: SomeCRS, bounds: tuple[float, float, float, float], *, what: str = "data"
) -> pyproj.CRS:
    """A CRS whose axes are in metres, for measuring data with ``bounds`` in ``crs``.

    ``crs`` itself when it is projected in metres and its scale at the centre of
    ``bounds`` is within :data:`MAX_SCALE_ERROR` of 1 (see :func:`scale_error`);
    otherwise the WGS 84 UTM zone of the centre of ``bounds`` (``(minx, miny,
    maxx, maxy)`` in ``crs`` units). Web Mercator is never measured in itself.

    Examples
    --------
    >>> local_metric_crs("EPSG:32633", (500_000.0, 4_650_000.0, 500_001.0, 4_650_001.0)).to_epsg()
    32633
    >>> local_metric_crs("EPSG:4326", (15.0, 41.8, 15.1, 41.9)).to_epsg()
    32633
    >>> oslo = (1_669_700.0, 8_399_700.0, 1_669_800.0, 8_399_800.0)  # 15°E 60°N
    >>> local_metric_crs("EPSG:3857", oslo).to_epsg()
    32633
    >>> local_metric_crs("EPSG:3857", (1_669_700.0, -100.0, 1_669_800.0, 100.0)).to_epsg()
    32633
    """
    pcrs = norm_crs(crs, what=what)
    cx, cy = (bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0
    if not (math.isfinite(cx) and math.isfinite(cy)):
        cx, cy = 0.0, 0.0
    in_metres = bool(pcrs.axis_info) and float(pcrs.axis_info[0].unit_conversion_factor) == 1.0
    where = f"the centre of the {what}"
    if pcrs.is_projected and in_metres:
        return _utm_for(pcrs, cx, cy, where) or pcrs
    lon, lat = _lonlat(pcrs, cx, cy)
    return estimate_utm_crs(lon, lat, where=where)


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

    The metric frame is the scene CRS scaled to metres when it is projected with a
    scale within :data:`MAX_SCALE_ERROR` of 1 at the scene centre, and the UTM
    zone of the scene centre (WGS 84) otherwise: geographic CRSs, Web Mercator
    away from the equator, projections far from their centre.

    Attributes
    ----------
    transform
        Scene affine transform (pixel → CRS).
    crs
        Scene CRS.
    pixel_m
        Approximate size of a pixel in metres at the scene centre (square root of
        its ground area).
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
        """Frame for a scene of ``scene_shape = (rows, cols)`` with ``transform`` and ``crs``.

        Raises
        ------
        CRSError
            The CRS is geographic and no UTM zone covers the scene centre.
        """
        return cls._centred(transform, crs, (scene_shape[1] / 2.0, scene_shape[0] / 2.0))

    @classmethod
    def from_bounds(cls, crs: SomeCRS, bounds: tuple[float, float, float, float]) -> MetricFrame:
        """Frame for vector data with ``bounds = (minx, miny, maxx, maxy)`` in ``crs``.

        Its "pixels" are CRS units (the transform is the identity), so
        :meth:`px_to_metric` and :meth:`crs_to_metric` agree. Non-finite bounds
        (empty data) measure around ``(0, 0)``.

        Examples
        --------
        >>> import shapely
        >>> f = MetricFrame.from_bounds("EPSG:3857", (1_669_700, 8_399_700, 1_669_800, 8_399_800))
        >>> sq = np.array([shapely.box(1_669_700, 8_399_700, 1_669_800, 8_399_800)], object)
        >>> round(float(shapely.area(f.crs_to_metric(sq))[0]))  # 100 m of Web Mercator at 60°N
        2506
        """
        cx, cy = (bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0
        if not (math.isfinite(cx) and math.isfinite(cy)):
            cx, cy = 0.0, 0.0
        return cls._centred(Affine.identity(), crs, (cx, cy))

    @classmethod
    def _centred(
        cls, transform: Affine, crs: SomeCRS, mid_px: tuple[float, float]
    ) -> MetricFrame:
        """Frame measured around the pixel point ``mid_px = (col, row)``."""
        pcrs = norm_crs(crs)
        cx, cy = _xy(transform, *mid_px)
        try:
            utm = _utm_for(pcrs, cx, cy, "the scene centre")
        except CRSError:
            lon, lat = _lonlat(pcrs, cx, cy)
            raise CRSError(
                f"no UTM zone covers the scene centre ({lon:.4f}, {lat:.4f}); "
                "reproject the scene to a projected CRS",
                crs=crs,
            ) from None
        if utm is None:
            unit = float(pcrs.axis_info[0].unit_conversion_factor) if pcrs.axis_info else 1.0
            return cls(transform, pcrs, math.sqrt(abs(transform.determinant)) * unit, unit)
        to_m = pyproj.Transformer.from_crs(pcrs, utm, always_xy=True)
        from_m = pyproj.Transformer.from_crs(utm, pcrs, always_xy=True)
        x0, y0 = to_m.transform(cx, cy)
        x1, y1 = to_m.transform(*_xy(transform, mid_px[0] + 1, mid_px[1]))
        x2, y2 = to_m.transform(*_xy(transform, mid_px[0], mid_px[1] + 1))
        pixel_m = math.sqrt(abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)))
        return cls(transform, pcrs, pixel_m, None, to_m, from_m)

    @property
    def is_geographic(self) -> bool:
        """True when the metric frame is a UTM zone, not the scene CRS itself.

        The scene CRS is geographic, or projected with too much scale distortion
        (:data:`MAX_SCALE_ERROR`); geometries then go through a pyproj
        transformer, which is not to be shared between threads.
        """
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

    def crs_to_metric(self, geoms: Geoms) -> Geoms:
        """Scene-CRS geometries → metric frame (metres)."""
        if self._unit_m is not None:
            return _apply_affine(geoms, Affine.scale(self._unit_m))
        return self._pyproj(geoms, self._to_m)

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
