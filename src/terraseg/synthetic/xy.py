"""Coordinate-encoding rasters: every pixel holds its own row and column.

For exact tests of tiling and stitching (odc-geo's ``gen_test_image_xy``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pyproj
import rasterio
from affine import Affine
from rasterio.windows import Window

from terraseg.errors import ConfigError, ExportError
from terraseg.io.atomic import atomic_output
from terraseg.synthetic.georef import crs_string, norm_crs, norm_shape, scene_transform
from terraseg.synthetic.geotiff import BLOCK_PX, geotiff_profile

__all__ = ["make_xy_image"]


def make_xy_image(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    *,
    crs: str | int | pyproj.CRS = "EPSG:32633",
    transform: Affine | None = None,
    dtype: Literal["uint16", "uint32", "int32", "float32", "float64"] | str = "uint16",
    bands: int = 2,
    nodata: float | None = None,
    nodata_border_px: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a coordinate-encoding raster: every pixel holds its own position.

    Band 0 is the global row index, band 1 the global column index, band 2
    (if any) ``row + col`` and bands 3 and up ``row * cols + col`` (the linear
    index), each wrapped to the range of ``dtype``. Tiling such a raster,
    running an identity model and stitching must give it back exactly, so any
    off-by-one or transform error shows (odc-geo's ``gen_test_image_xy``).

    Parameters
    ----------
    path
        Output GeoTIFF (tiled 512 x 512, deflate), written window by window.
    shape
        ``(rows, cols)``.
    crs, transform
        Georeferencing; ``transform`` defaults to :func:`scene_transform` at
        1 m per pixel (a non-zero origin inside the CRS's area of use).
    dtype
        Pixel type; rows and columns must fit in it.
    bands
        At least 1.
    nodata
        Nodata value written to the file's metadata (not to any pixel unless
        ``nodata_border_px`` is set).
    nodata_border_px
        Width of a border of ``nodata`` pixels around the raster.
    overwrite
        Replace an existing ``path``.

    Returns
    -------
    Path
        ``path``.
    """
    rows, cols = norm_shape(tuple(shape))  # type: ignore[arg-type]
    if bands < 1:
        raise ConfigError(f"bands must be at least 1, got {bands}", bands=bands)
    dt = np.dtype(dtype)
    if dt.kind in "ui" and max(rows, cols) - 1 > np.iinfo(dt).max:
        raise ConfigError(
            f"shape {shape} does not fit dtype {dt.name}; pass dtype='uint32'", dtype=dt.name
        )
    if nodata_border_px and nodata is None:
        raise ConfigError("nodata_border_px needs a nodata value", nodata=nodata)
    crs_ = norm_crs(crs)
    tr = transform if transform is not None else scene_transform(crs_, (rows, cols), 1.0)
    profile = geotiff_profile((rows, cols), bands, dt.name, crs_string(crs_), tr)
    if nodata is not None:
        profile["nodata"] = nodata
    out = Path(path)
    try:
        with (
            atomic_output(out, overwrite=overwrite) as tmp,
            rasterio.open(tmp, "w", **profile) as dst,
        ):
            for r in range(0, rows, BLOCK_PX):
                h = min(BLOCK_PX, rows - r)
                rr = np.arange(r, r + h, dtype=np.int64)[:, None]
                cc = np.arange(cols, dtype=np.int64)[None, :]
                planes = [rr + 0 * cc, cc + 0 * rr, rr + cc] + [rr * cols + cc] * max(0, bands - 3)
                data = np.stack(planes[:bands])
                if dt.kind in "ui":
                    data = (data % (int(np.iinfo(dt).max) + 1)).astype(dt)
                else:
                    data = data.astype(dt)
                if nodata_border_px:
                    b = nodata_border_px
                    edge = (rr < b) | (rr >= rows - b) | (cc < b) | (cc >= cols - b)
                    data[:, edge] = nodata
                dst.write(data, window=Window(0, r, cols, h))
    except OSError as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"cannot write '{out}': {exc}", path=out) from exc
    return out
