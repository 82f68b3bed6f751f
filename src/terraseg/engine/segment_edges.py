"""``terraseg segment --method canny``: Canny edges per chunk, then lines.

Each chunk runs :func:`~terraseg.engine.segment_methods.canny_window` over its
core plus :data:`CANNY_HALO_PX` (read with reflection past the scene edge) on
bands scaled by the scene sample's 2nd..98th percentiles, with absolute
thresholds, so every chunk sees the same gradient scale. The cores go to
``edges.tif`` (uint8: 1 edge, 0 none, 255 nodata); the edge pixels are then
traced into lines chunk by chunk by the road-centerline machinery
(:func:`terraseg.vector.centerlines.extract_centerlines`), which joins lines
across chunk borders and prunes stubs shorter than ``min_length_m``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from numpy.typing import NDArray

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.stitch import NODATA
from terraseg.engine.segment_methods import canny_window, normalize_bands
from terraseg.errors import ConfigError
from terraseg.io.raster_sink import RasterSink
from terraseg.io.scene import Scene, open_scene

__all__ = ["CANNY_HALO_PX", "check_canny", "run_canny"]

#: Halo of a Canny chunk, pixels: smoothing and gradient need ``4 sigma + 1``; the rest
#: keeps most hysteresis chains whole.
CANNY_HALO_PX = 32


def check_canny(
    sigma_px: float, edge_low: float, edge_high: float, min_length_m: float,
    params: dict[str, Any],
) -> None:
    """Raise :class:`ConfigError` on bad Canny parameters; record them in ``params``."""
    finite = all(math.isfinite(v) for v in (sigma_px, edge_low, edge_high, min_length_m))
    if not finite or sigma_px <= 0 or sigma_px > CANNY_HALO_PX / 4:
        raise ConfigError(
            f"sigma_px must be in (0, {CANNY_HALO_PX / 4:g}] pixels, got {sigma_px}; e.g. 1",
            sigma_px=sigma_px,
        )
    if not 0 <= edge_low <= edge_high:
        raise ConfigError(
            f"edge thresholds must satisfy 0 <= low <= high, got low {edge_low}, "
            f"high {edge_high}; e.g. 0.1 and 0.2",
            edge_low=edge_low, edge_high=edge_high,
        )
    if min_length_m < 0:
        raise ConfigError(f"min_length_m must be >= 0, got {min_length_m}; e.g. 2",
                          min_length_m=min_length_m)
    params.update(sigma_px=sigma_px, edge_low=edge_low, edge_high=edge_high,
                  min_length_m=min_length_m)


def _grown(core: PixelWindow, px: int) -> PixelWindow:
    return PixelWindow(core.row_off - px, core.col_off - px, core.height + 2 * px,
                       core.width + 2 * px)


def run_canny(
    scene: Scene, path: Path, grid: ChunkGrid, *, low_high: tuple[NDArray[np.float32],
                                                               NDArray[np.float32]],
    sigma_px: float, edge_low: float, edge_high: float, min_length_m: float, overwrite: bool,
) -> gpd.GeoDataFrame:
    """Write ``edges.tif`` and return the edge lines (``length_m``), in the scene CRS.

    ``low_high`` are the per-band ranges of bands 1..3 (or all bands of a
    1-2 band scene) that scale every window alike.
    """
    from terraseg.vector.centerlines import extract_centerlines

    bands = list(range(1, min(scene.count, 3) + 1))
    with RasterSink(path, like=scene, dtype="uint8", nodata=NODATA, overwrite=overwrite,
                    band_names=["edge"], class_names={0: "none", 1: "edge"}) as sink:
        for chunk in grid:
            win = _grown(chunk.core, CANNY_HALO_PX)
            data, valid, _ = scene.read_window_with_mask(win, bands=bands, pad="reflect")
            edges = canny_window(normalize_bands(data, *low_high), sigma_px=sigma_px,
                                 low=edge_low, high=edge_high).astype(np.uint8)
            edges[~valid] = NODATA
            core = chunk.core.relative_to(win).to_slices()
            sink.write(chunk.core, edges[core][None])
        sink.finish()
    raster = open_scene(path)

    def read(window: PixelWindow) -> NDArray[Any]:
        arr, _ = raster.read_window(window, bands=[1], pad="nodata")
        return np.asarray(arr[0])

    reader: Callable[[PixelWindow], NDArray[Any]] = read
    network = extract_centerlines(reader, [c.core for c in grid], scene.transform, scene.crs,
                                  road_class=1, halo_px=8, prune_m=min_length_m)
    lines = network.centerlines
    lines.insert(0, "edge_id", np.arange(1, len(lines) + 1, dtype=np.int64))
    return gpd.GeoDataFrame(lines, geometry="geometry", crs=scene.crs)
