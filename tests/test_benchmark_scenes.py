"""The benchmark scenes: a VRT mosaic must read back as k x k copies of its base.

The 32768² memory and throughput figures in ``benchmarks/`` are measured on such
mosaics, so a wrong offset or georeference there would make them meaningless.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import mosaic_vrt  # noqa: E402

from terraseg.io.scene import open_scene  # noqa: E402


def test_mosaic_vrt_is_k_by_k_copies(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 40, 56), dtype=np.uint8)
    base = tmp_path / "base.tif"
    transform = from_origin(500_000.0, 4_600_000.0, 0.5, 0.5)
    with rasterio.open(base, "w", driver="GTiff", height=40, width=56, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=transform, tiled=True, blockxsize=16,
                       blockysize=16) as ds:
        ds.write(data)
    vrt = mosaic_vrt(base, 3)
    with rasterio.open(vrt) as ds:
        assert (ds.height, ds.width, ds.count) == (120, 168, 3)
        assert ds.crs.to_epsg() == 32633 and ds.transform == transform
        np.testing.assert_array_equal(ds.read(), np.tile(data, (1, 3, 3)))
    scene = open_scene(vrt)  # the engine opens it like any GeoTIFF
    assert scene.shape == (120, 168) and scene.count == 3
