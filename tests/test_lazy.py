"""Lazy xarray in and out: ``terraseg.predict`` on a Dask-backed DataArray.

The input is read per engine chunk, never whole; the result is a Dask array
chunked by the engine's chunk cores and equal to the path-based run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from rasterio.transform import from_origin

import terraseg
from terraseg.api import predict_to_dir
from terraseg.core.grid import ChunkGrid
from terraseg.errors import CRSError

SIZE = 2048  # 16x the area of one 512-px chunk
TILE_PX, OVERLAP_PX, CHUNK_PX = 256, 32, 512


@pytest.fixture(scope="module")
def scene_2048(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2048² RGB noise scene, UTM, non-zero origin, a nodata (0) border 40 px wide."""
    path = tmp_path_factory.mktemp("lazy") / "scene.tif"
    rng = np.random.default_rng(3)
    arr = rng.integers(1, 255, (3, SIZE, SIZE), dtype=np.uint8)
    arr[:, :40, :] = 0
    arr[:, :, -40:] = 0
    with rasterio.open(path, "w", driver="GTiff", height=SIZE, width=SIZE, count=3,
                       dtype="uint8", crs="EPSG:32633", nodata=0, tiled=True,
                       blockxsize=256, blockysize=256,
                       transform=from_origin(433_001.0, 4_650_003.0, 0.5, 0.5)) as ds:
        ds.write(arr)
    return path


@pytest.fixture(scope="module")
def path_run(scene_2048: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The path-based run's classes.tif and its traced peak memory (MiB)."""
    out = tmp_path_factory.mktemp("path_run")
    tracemalloc.start()
    try:
        res = predict_to_dir(scene_2048, out, model="cheap", tile_px=TILE_PX,
                             overlap_px=OVERLAP_PX, chunk_px=CHUNK_PX, device="cpu",
                             show_progress=False)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return res.classes_path, peak


class ReadLog:
    """Counts the input blocks a Dask graph reads, and how many are alive at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reads = self.alive = self.max_alive = 0

    def _freed(self) -> None:
        with self.lock:
            self.alive -= 1

    def __call__(self, block: np.ndarray) -> np.ndarray:
        out = np.array(block)  # a block of our own, so its lifetime can be watched
        with self.lock:
            self.reads += 1
            self.alive += 1
            self.max_alive = max(self.max_alive, self.alive)
        weakref.finalize(out, self._freed)
        return out


def logged_input(path: Path, log: ReadLog) -> xr.DataArray:
    """``rioxarray.open_rasterio(path, chunks=256)``, each block read through ``log``."""
    da = rioxarray.open_rasterio(path, chunks={"band": -1, "y": 256, "x": 256})
    assert isinstance(da, xr.DataArray)
    return da.copy(data=da.data.map_blocks(log, dtype=da.dtype, meta=np.array((), da.dtype)))


def test_lazy_predict_streams_and_equals_the_path_run(
    scene_2048: Path, path_run: tuple[Path, float], tmp_path: Path
) -> None:
    log = ReadLog()
    da = logged_input(scene_2048, log)
    n_blocks = da.data.npartitions  # 64 blocks of 256²
    result = terraseg.predict(da, model="cheap", tile_px=TILE_PX, overlap_px=OVERLAP_PX,
                              chunk_px=CHUNK_PX, device="cpu")
    # lazy in: nothing read yet; lazy out: a Dask array chunked by the engine's chunk cores
    assert log.reads == 0
    assert isinstance(result.data, dsa.Array)
    grid = ChunkGrid.from_shape((SIZE, SIZE), tile_px=TILE_PX, overlap_px=OVERLAP_PX,
                                chunk_px=CHUNK_PX)
    rows, cols = grid.shape_in_chunks
    assert result.chunks == (
        tuple(grid.chunk(i, 0).core.height for i in range(rows)),
        tuple(grid.chunk(0, j).core.width for j in range(cols)),
    )
    assert result.rio.crs.to_epsg() == 32633 and result.rio.nodata == 255
    np.testing.assert_array_equal(result["x"].values, da["x"].values)
    # stream it to a file (two scheduler threads: the same bound on any machine)
    out = tmp_path / "lazy.tif"
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="threads", num_workers=2):
            result.rio.to_raster(out, tiled=True, lock=True)
        lazy_peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    classes_path, path_peak = path_run
    with rasterio.open(out) as got, rasterio.open(classes_path) as want:
        np.testing.assert_array_equal(got.read(1), want.read(1))
        assert got.transform == want.transform
    whole_input_mib = 3 * SIZE * SIZE / 2**20
    print(f"traced peak: lazy {lazy_peak:.1f} MiB, path-based {path_peak:.1f} MiB; "
          f"input blocks alive at once: {log.max_alive} of {n_blocks} "
          f"(whole input {whole_input_mib:.1f} MiB), blocks read {log.reads}")
    # never the whole input at once: at most the blocks of the chunk windows in flight
    assert log.max_alive <= n_blocks // 3, (log.max_alive, n_blocks)
    assert log.reads >= n_blocks
    assert lazy_peak <= 2 * path_peak, (lazy_peak, path_peak)


def test_lazy_probabilities_and_windows_equal_the_eager_api(scene_2048: Path) -> None:
    da = rioxarray.open_rasterio(scene_2048, chunks={"band": -1, "y": 512, "x": 512})
    assert isinstance(da, xr.DataArray)
    crop = da.isel(y=slice(0, 700), x=slice(1400, SIZE))  # a lazy crop, nodata edges
    kw: dict[str, Any] = {"model": "cheap", "tile_px": 128, "overlap_px": 16,
                          "chunk_px": 256, "device": "cpu"}
    eager = terraseg.predict(crop.compute(), probabilities=True, **kw)
    lazy = terraseg.predict(crop, probabilities=True, **kw)
    assert isinstance(lazy.data, dsa.Array) and lazy.dims == ("class", "y", "x")
    np.testing.assert_array_equal(lazy.values, eager.values)  # NaN where nodata, alike
    assert list(lazy["class"].values) == list(eager["class"].values)
    labels = terraseg.predict(crop, **kw)
    window = terraseg.predict(crop, window=(100, 50, 300, 400), **kw)
    assert isinstance(window.data, dsa.Array) and window.shape == (300, 400)
    np.testing.assert_array_equal(window.values, labels.values[100:400, 50:450])
    np.testing.assert_array_equal(window["x"].values, crop["x"].values[50:450])


def test_lazy_predict_refuses_an_array_without_crs_or_with_too_few_bands() -> None:
    plain = xr.DataArray(dsa.zeros((3, 64, 64), dtype=np.uint8, chunks=32),
                         dims=("band", "y", "x"),
                         coords={"y": np.arange(64)[::-1] + 0.5, "x": np.arange(64) + 0.5})
    with pytest.raises(CRSError, match="no CRS.*write_crs"):
        terraseg.predict(plain, model="cheap")
    two_bands = plain.isel(band=[0, 1]).rio.write_crs("EPSG:32633")
    with pytest.raises(ValueError, match=r"reads bands \[1, 2, 3\].*2 band"):
        terraseg.predict(two_bands, model="cheap")
    # one band (panchromatic) is repeated to the model's three, with a warning
    from terraseg.engine.adapt import BandWarning

    one_band = plain.isel(band=[0]).rio.write_crs("EPSG:32633")
    with pytest.warns(BandWarning, match="one band; it is repeated"):
        assert terraseg.predict(one_band, model="cheap").shape == (64, 64)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, rasterio
    from rasterio.transform import from_origin
    size, tmp, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    path = f"{tmp}/s{size}.tif"
    if mode == "path":
        prof = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8",
                    crs="EPSG:32633", transform=from_origin(400000, 5000000, 0.5, 0.5),
                    tiled=True, blockxsize=512, blockysize=512, compress="deflate")
        block = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)
        with rasterio.open(path, "w", **prof) as ds:
            for r in range(0, size, 512):
                for c in range(0, size, 512):
                    ds.write(block, window=((r, r + 512), (c, c + 512)))
        from terraseg.api import predict_to_dir
        predict_to_dir(path, f"{tmp}/path", model="cheap", chunk_px=2048, device="cpu",
                       show_progress=False)
    else:
        import dask, rioxarray, terraseg
        da = rioxarray.open_rasterio(path, chunks={"band": -1, "x": 1024, "y": 1024})
        out = terraseg.predict(da, model="cheap", chunk_px=2048, device="cpu")
        with dask.config.set(scheduler="threads", num_workers=2):
            out.rio.to_raster(f"{tmp}/lazy.tif", tiled=True, lock=True, compress="deflate")
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


def _peak_mb(size: int, tmp: Path, mode: str) -> float:
    env = {"GDAL_CACHEMAX": "64", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(size), str(tmp), mode],
                         capture_output=True, text=True, timeout=900, env=env, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


@pytest.mark.slow
def test_lazy_peak_rss_within_the_path_run_bound_at_8192(tmp_path: Path) -> None:
    # the path-based run's own bound (test_pipeline): peak RSS within 1.2x. Measured on
    # 2 cores: path 956 MB, lazy 1087 MB (torch and its libraries are ~680 MB of each).
    path_mb = _peak_mb(8192, tmp_path, "path")  # also writes the scene
    lazy_mb = _peak_mb(8192, tmp_path, "lazy")
    with rasterio.open(tmp_path / "lazy.tif") as got, \
            rasterio.open(tmp_path / "path" / "classes.tif") as want:
        for _, window in want.block_windows(1):
            np.testing.assert_array_equal(got.read(1, window=window),
                                          want.read(1, window=window))
    print(f"8192² peak RSS: path-based {path_mb:.0f} MB, lazy {lazy_mb:.0f} MB")
    assert lazy_mb <= 1.2 * path_mb, (lazy_mb, path_mb)
