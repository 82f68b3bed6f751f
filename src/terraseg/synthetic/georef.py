"""Where a synthetic scene lies: size and CRS checks, and its north-up transform.

:func:`scene_transform` places a scene of a given size and ground sample
distance inside a CRS's area of use, as a function of the seed.
"""

from __future__ import annotations

import math

import numpy as np
import pyproj
from affine import Affine
from pyproj.exceptions import CRSError as ProjCRSError

from terraseg.errors import ConfigError, CRSError

__all__ = ["crs_string", "norm_crs", "norm_shape", "scene_transform"]


def norm_shape(size_px: int | tuple[int, int]) -> tuple[int, int]:
    """``(rows, cols)`` from an int (a square) or a pair of positive ints."""
    dims = (size_px, size_px) if isinstance(size_px, int | np.integer) else tuple(size_px)
    if len(dims) != 2 or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) for d in dims
    ):
        raise ConfigError(
            f"size_px must be an int or (rows, cols) of ints, got {size_px!r}", size_px=size_px
        )
    rows, cols = int(dims[0]), int(dims[1])
    if rows <= 0 or cols <= 0:
        raise ConfigError(
            f"size_px must be positive, got {size_px!r}; pass e.g. size_px=4096", size_px=size_px
        )
    return rows, cols


def norm_crs(crs: str | int | pyproj.CRS) -> pyproj.CRS:
    """A projected or geographic 2-D CRS from what the user passed."""
    try:
        out = pyproj.CRS.from_user_input(crs)
    except (ProjCRSError, TypeError, ValueError) as exc:
        raise CRSError(
            f"unknown CRS {crs!r}; pass a projected CRS such as 'EPSG:32633' (or 'EPSG:4326')",
            crs=crs,
        ) from exc
    if not (out.is_projected or out.is_geographic) or len(out.axis_info) < 2:
        raise CRSError(
            f"CRS {crs!r} is neither projected nor geographic 2-D; pass e.g. 'EPSG:32633'",
            crs=crs,
        )
    return out


def crs_string(crs: pyproj.CRS) -> str:
    """``"AUTH:CODE"`` where the CRS has one, else WKT."""
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


def scene_transform(
    crs: str | int | pyproj.CRS, shape: tuple[int, int], gsd_m: float, seed: int = 0
) -> Affine:
    """A north-up transform for a scene of ``shape`` pixels inside ``crs``'s area of use.

    The scene centre is a seed-dependent point in the middle part of the CRS's
    area of use (so for UTM the easting is near the zone's central meridian
    and the northing fits the zone's latitudes), snapped to whole metres.
    For a geographic CRS ``gsd_m`` is converted to degrees at that latitude
    (so pixels are square on the ground, not in degrees).

    Examples
    --------
    >>> t = scene_transform("EPSG:32633", (1000, 1000), 0.5, seed=1)
    >>> 166000 < t.c < 834000 and 0 < t.f < 9_400_000, t.a, t.e
    (True, 0.5, -0.5)
    """
    crs_ = norm_crs(crs)
    rows, cols = shape
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x6E0])
    lon, lat = 0.0, 0.0
    aou = crs_.area_of_use
    if aou is not None:
        west, south, east, north = aou.bounds
        if east < west:
            east += 360.0
        lon = west + (east - west) * rng.uniform(0.35, 0.65)
        lat = south + (north - south) * rng.uniform(0.35, 0.65)
        lat = min(max(lat, -70.0), 70.0)
        lon = (lon + 180.0) % 360.0 - 180.0
    if crs_.is_geographic:
        phi = math.radians(lat)
        m_lon = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)
        m_lat = 111132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)
        res_x, res_y = gsd_m / m_lon, gsd_m / m_lat
        x0 = round(lon - cols * res_x / 2, 4)
        y0 = round(lat + rows * res_y / 2, 4)
        return Affine(res_x, 0.0, x0, 0.0, -res_y, y0)
    factor = crs_.axis_info[0].unit_conversion_factor or 1.0
    res = gsd_m / factor
    if aou is not None:
        to_crs = pyproj.Transformer.from_crs("EPSG:4326", crs_, always_xy=True)
        cx, cy = to_crs.transform(lon, lat)
    else:
        cx, cy = (
            250_000.0 + 1000.0 * rng.uniform(0, 100),
            4_000_000.0 + 1000.0 * rng.uniform(0, 100),
        )
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise CRSError(f"cannot place a scene in CRS {crs!r}; pass e.g. 'EPSG:32633'", crs=crs)
    x0 = float(round(cx - cols * res / 2)) or 1000.0
    y0 = float(round(cy + rows * res / 2)) or 1000.0
    return Affine(res, 0.0, x0, 0.0, -res, y0)
