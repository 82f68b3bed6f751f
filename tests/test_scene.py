"""Tests for terraseg.io.scene: lazy open, validation, boundless reads, masks, stats."""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.io
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from real_data import real_file

from terraseg.core.grid import PixelWindow
from terraseg.errors import BandError, CRSError, GridError, SceneReadError, TerrasegError
from terraseg.io.bandstats import BandStats, compute_band_stats, normalize
from terraseg.io.scene import Scene, clear_handle_cache, open_scene

ROWS, COLS = 203, 317  # not divisible by the 64-px block
BLOCK = 64
BORDER = 5  # nodata border width in pixels
ORIGIN = (500_123.5, 5_400_456.0)  # UTM 33N, non-zero origin
RES = 0.5
UTM = "EPSG:32633"




def write_tif(
    path: Path,
    array: np.ndarray,
    *,
    crs: str | None = UTM,
    transform: Affine | None = None,
    nodata: float | None = None,
    block: int | None = BLOCK,
    **extra: Any,
) -> Path:
    """Write ``array`` (band, y, x) as a GeoTIFF (tiled with ``block`` unless None)."""
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "count": array.shape[0],
        "height": array.shape[1],
        "width": array.shape[2],
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": transform if transform is not None else from_origin(*ORIGIN, RES, RES),
        "nodata": nodata,
        **extra,
    }
    if block is not None:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    return path


@pytest.fixture(scope="module")
def u16_array() -> np.ndarray:
    """3-band uint16 with a nodata (0) border and values 1..5000 elsewhere."""
    rng = np.random.default_rng(42)
    arr = rng.integers(1, 5000, size=(3, ROWS, COLS), dtype=np.uint16)
    arr[:, :BORDER, :] = 0
    arr[:, -BORDER:, :] = 0
    arr[:, :, :BORDER] = 0
    arr[:, :, -BORDER:] = 0
    return arr


@pytest.fixture(scope="module")
def u16_file(tmp_path_factory: pytest.TempPathFactory, u16_array: np.ndarray) -> Path:
    return write_tif(tmp_path_factory.mktemp("u16") / "utm.tif", u16_array, nodata=0)


@pytest.fixture(scope="module")
def u16_scene(u16_file: Path) -> Scene:
    return open_scene(u16_file)


@pytest.fixture(scope="module")
def rgba_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(4, 150, 170), dtype=np.uint8)
    arr[3] = 255
    arr[3, 20:40, 30:60] = 0  # transparent patch
    path = write_tif(tmp_path_factory.mktemp("rgba") / "rgba.tif", arr, photometric="RGB")
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path, arr


# ----------------------------------------------------------------------------- properties


def test_properties_utm(u16_scene: Scene, u16_file: Path) -> None:
    s = u16_scene
    assert s.path == str(u16_file)
    assert s.crs.to_epsg() == 32633 and not s.crs_assumed
    assert s.transform == from_origin(*ORIGIN, RES, RES)
    assert s.shape == (ROWS, COLS)
    assert s.count == 3
    assert s.dtypes == ("uint16",) * 3 and s.dtype == np.uint16
    assert s.nodata == 0
    assert s.block_shape == (BLOCK, BLOCK)
    assert s.res == (RES, RES)
    assert s.gsd_m == pytest.approx(RES, rel=2e-3)  # UTM scale factor ~0.9996
    assert s.bounds.left == ORIGIN[0] and s.bounds.top == ORIGIN[1]
    assert s.bounds.right == pytest.approx(ORIGIN[0] + COLS * RES)
    assert s.bounds.bottom == pytest.approx(ORIGIN[1] - ROWS * RES)
    assert not s.has_alpha and s.alpha_band is None
    assert s.band_descriptions == (None, None, None)
    assert "utm.tif" in repr(s) and "EPSG:32633" in repr(s)


def test_gsd_geographic(tmp_path: Path) -> None:
    arr = np.ones((1, 100, 100), np.uint8)
    t = from_origin(10.0, 45.0 + 50e-5, 1e-5, 1e-5)  # centred on 45 deg N
    s = open_scene(write_tif(tmp_path / "geo.tif", arr, crs="EPSG:4326", transform=t))
    gx, gy = s.gsd_xy_m
    assert gx == pytest.approx(1e-5 * 111_320 * np.cos(np.radians(45)), rel=5e-3)
    assert gy == pytest.approx(1.111, rel=5e-3)
    assert s.gsd_m == pytest.approx(np.sqrt(gx * gy))


def test_scene_pickles_small_and_reads_after_unpickle(u16_scene: Scene) -> None:
    blob = pickle.dumps(u16_scene)
    assert len(blob) < 4000  # metadata only, no handle, no pixels
    again = pickle.loads(blob)
    w = PixelWindow(10, 10, 20, 20)
    np.testing.assert_array_equal(again.read_window(w)[0], u16_scene.read_window(w)[0])


def test_dask_token_is_deterministic(u16_scene: Scene) -> None:
    from dask.base import tokenize

    assert tokenize(u16_scene) == tokenize(pickle.loads(pickle.dumps(u16_scene)))


# ----------------------------------------------------------------------------- reads

P = 400  # more than the raster size: exercises repeated reflection


@pytest.mark.parametrize(
    "window",
    [
        PixelWindow(30, 40, 50, 60),  # inside
        PixelWindow(-20, 40, 50, 60),  # top
        PixelWindow(180, 40, 50, 60),  # bottom
        PixelWindow(30, -25, 50, 60),  # left
        PixelWindow(30, 290, 50, 60),  # right
        PixelWindow(-7, -9, 40, 40),  # top-left corner
        PixelWindow(190, 300, 40, 40),  # bottom-right corner
        PixelWindow(-300, -350, ROWS + 600, COLS + 700),  # far larger than the raster
        PixelWindow(-100, -100, 30, 30),  # entirely outside
    ],
)
def test_read_window_reflect_matches_np_pad(
    u16_scene: Scene, u16_array: np.ndarray, window: PixelWindow
) -> None:
    padded = np.pad(u16_array, ((0, 0), (P, P), (P, P)), mode="reflect")
    expected = padded[
        :, window.row_off + P : window.row_stop + P, window.col_off + P : window.col_stop + P
    ]
    data, transform = u16_scene.read_window(window)
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, expected)
    t = u16_scene.transform
    assert transform == Affine(
        t.a, 0.0, t.c + t.a * window.col_off, 0.0, t.e, t.f + t.e * window.row_off
    )


@pytest.mark.parametrize(
    "window",
    [PixelWindow(-20, -30, 60, 70), PixelWindow(180, 290, 50, 60), PixelWindow(500, 500, 8, 8)],
)
def test_read_window_nodata_pad(
    u16_scene: Scene, u16_array: np.ndarray, window: PixelWindow
) -> None:
    big = np.full((3, ROWS + 1200, COLS + 1200), 0, np.uint16)
    big[:, 600 : 600 + ROWS, 600 : 600 + COLS] = u16_array
    expected = big[
        :,
        window.row_off + 600 : window.row_stop + 600,
        window.col_off + 600 : window.col_stop + 600,
    ]
    data, transform = u16_scene.read_window(window, pad="nodata")
    np.testing.assert_array_equal(data, expected)
    x, y = transform.c, transform.f
    assert x == pytest.approx(ORIGIN[0] + window.col_off * RES)
    assert y == pytest.approx(ORIGIN[1] - window.row_off * RES)


def test_nodata_pad_uses_zero_without_nodata(tmp_path: Path) -> None:
    arr = np.full((1, 20, 20), 7, np.uint8)
    s = open_scene(write_tif(tmp_path / "n.tif", arr, block=None))
    data, _ = s.read_window(PixelWindow(-2, -2, 5, 5), pad="nodata")
    assert data[0, 0, 0] == 0 and data[0, 4, 4] == 7


def test_one_windowed_read_per_call(u16_scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    original: Callable[..., Any] = rasterio.io.DatasetReader.read

    def counting_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("window"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", counting_read)
    u16_scene.read_window(PixelWindow(-50, -50, 120, 500), bands=[3, 1, 1])
    assert len(calls) == 1


def test_band_selection_and_repetition(u16_scene: Scene, u16_array: np.ndarray) -> None:
    w = PixelWindow(10, 20, 30, 40)
    data, _ = u16_scene.read_window(w, bands=[3, 1, 1])
    sl = (slice(None), *w.to_slices())
    np.testing.assert_array_equal(data, u16_array[[2, 0, 0]][sl])


@pytest.mark.parametrize("bands", [[0], [4], [1, 5], []])
def test_bad_bands(u16_scene: Scene, bands: list[int]) -> None:
    with pytest.raises(BandError, match="band"):
        u16_scene.read_window(PixelWindow(0, 0, 4, 4), bands=bands)


def test_empty_window_rejected(u16_scene: Scene) -> None:
    with pytest.raises(GridError, match="empty"):
        u16_scene.read_window(PixelWindow(0, 0, 0, 4))


def test_concurrent_reads_are_consistent(u16_scene: Scene, u16_array: np.ndarray) -> None:
    windows = [PixelWindow(r, c, 64, 64) for r in range(0, 150, 30) for c in range(0, 250, 40)]

    def read(w: PixelWindow) -> bool:
        data, _ = u16_scene.read_window(w)
        return bool(np.array_equal(data, u16_array[(slice(None), *w.to_slices())]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(read, windows * 3))
    clear_handle_cache()


# ----------------------------------------------------------------------------- masks


def test_mask_from_nodata_and_outside(u16_scene: Scene, u16_array: np.ndarray) -> None:
    w = PixelWindow(-10, -10, 40, 40)
    data, valid, _ = u16_scene.read_window_with_mask(w)
    assert valid.shape == (40, 40) and valid.dtype == bool
    assert not valid[:10].any() and not valid[:, :10].any()  # outside the raster
    assert not valid[10 : 10 + BORDER].any()  # nodata border
    assert valid[10 + BORDER :, 10 + BORDER :].all()
    plain, _ = u16_scene.read_window(w)
    np.testing.assert_array_equal(data, plain)


def test_mask_nodata_needs_all_bands(tmp_path: Path) -> None:
    """GDAL's dataset-mask rule: nodata only where every selected band is nodata."""
    arr = np.full((2, 30, 30), 9, np.uint16)
    arr[1, 5, 5] = 0  # only band 2 is 0 here: a dark pixel, still data
    arr[:, 7, 8] = 0  # both bands: nodata
    s = open_scene(write_tif(tmp_path / "b.tif", arr, nodata=0))
    _, valid, _ = s.read_window_with_mask(PixelWindow(0, 0, 30, 30))
    assert valid[5, 5] and not valid[7, 8] and valid.sum() == 30 * 30 - 1
    _, valid2, _ = s.read_window_with_mask(PixelWindow(0, 0, 30, 30), bands=[2])
    assert not valid2[5, 5] and not valid2[7, 8] and valid2.sum() == 30 * 30 - 2


def test_mask_from_alpha(rgba_file: tuple[Path, np.ndarray]) -> None:
    path, arr = rgba_file
    s = open_scene(path)
    assert s.has_alpha and s.alpha_band == 4 and s.count == 4
    for bands in ([1, 2, 3], [1], None):
        data, valid, _ = s.read_window_with_mask(PixelWindow(0, 0, 150, 170), bands=bands)
        np.testing.assert_array_equal(valid, arr[3] > 0)
    _, valid, _ = s.read_window_with_mask(
        PixelWindow(10, 20, 40, 50), bands=[1, 2, 3], pad="nodata"
    )
    assert valid.sum() == 40 * 50 - 20 * 30


def test_mask_from_nan(tmp_path: Path) -> None:
    arr = np.ones((2, 40, 50), np.float32)
    arr[0, 3, 4] = np.nan
    s = open_scene(write_tif(tmp_path / "f.tif", arr, block=None))
    _, valid, _ = s.read_window_with_mask(PixelWindow(0, 0, 40, 50))
    assert not valid[3, 4] and valid.sum() == 40 * 50 - 1


# ----------------------------------------------------------------------------- xarray


def test_to_xarray(u16_scene: Scene, u16_array: np.ndarray) -> None:
    da = u16_scene.to_xarray()
    assert da.dims == ("band", "y", "x") and da.shape == (3, ROWS, COLS)
    assert da.rio.crs.to_epsg() == 32633
    assert da.x.values[0] == pytest.approx(ORIGIN[0] + RES / 2)
    assert da.y.values[0] == pytest.approx(ORIGIN[1] - RES / 2)
    assert da.chunks is not None  # dask-backed, lazy
    ychunks, xchunks = da.chunks[1], da.chunks[2]
    assert all(c % BLOCK == 0 for c in ychunks[:-1]) and all(c % BLOCK == 0 for c in xchunks[:-1])
    np.testing.assert_array_equal(
        da.isel(y=slice(0, 70), x=slice(0, 90)).values, u16_array[:, :70, :90]
    )
    small = u16_scene.to_xarray(target_px=100)
    assert small.chunks is not None and small.chunks[1][0] == 64 and small.chunks[2][0] == 64


def test_to_xarray_with_assumed_crs(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "nocrs.tif", np.ones((1, 10, 10), np.uint8), crs=None)
    da = open_scene(path, assume_crs="EPSG:32633").to_xarray()
    assert da.rio.crs.to_epsg() == 32633


# ----------------------------------------------------------------------------- stats


def _full_stats(arr: np.ndarray) -> dict[str, list[float]]:
    valid = (arr != 0).all(axis=0)
    out: dict[str, list[float]] = {k: [] for k in ("mean", "std", "p2", "p98")}
    for band in arr:
        v = band[valid].astype(np.float64)
        out["mean"].append(v.mean())
        out["std"].append(v.std())
        p2, p98 = np.percentile(v, [2, 98])
        out["p2"].append(p2)
        out["p98"].append(p98)
    return out


def test_band_stats_decimated_close_to_full(u16_scene: Scene, u16_array: np.ndarray) -> None:
    full = _full_stats(u16_array)
    stats = compute_band_stats(u16_scene, max_pixels=8_000)
    assert stats.decimation > 1 and stats.count <= 8_000
    assert stats.bands == (1, 2, 3)
    np.testing.assert_allclose(stats.mean, full["mean"], rtol=0.05)
    np.testing.assert_allclose(stats.std, full["std"], rtol=0.05)
    np.testing.assert_allclose(stats.p98, full["p98"], rtol=0.05)
    assert min(stats.min) >= 1  # nodata border ignored
    exact = compute_band_stats(u16_scene)
    assert exact.decimation == 1
    np.testing.assert_allclose(exact.mean, full["mean"])
    np.testing.assert_allclose(exact.p2, full["p2"])


def test_band_stats_never_read_full_resolution(
    u16_scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes: list[Any] = []
    original: Callable[..., Any] = rasterio.io.DatasetReader.read

    def recording_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        shapes.append(kwargs.get("out_shape"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recording_read)
    compute_band_stats(u16_scene, [1], max_pixels=1_000)
    assert len(shapes) == 1 and shapes[0] is not None
    assert shapes[0][1] * shapes[0][2] <= 1_000


def test_band_stats_cached_and_json(u16_scene: Scene) -> None:
    a = compute_band_stats(u16_scene, [2, 1])
    assert compute_band_stats(u16_scene, [2, 1]) is a
    assert a.bands == (2, 1)
    again = BandStats.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again == a


def test_band_stats_use_overviews(tmp_path: Path, u16_array: np.ndarray) -> None:
    path = write_tif(tmp_path / "ov.tif", u16_array, nodata=0)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4])
    s = open_scene(path)
    assert s.overview_factors == (2, 4)
    stats = compute_band_stats(s, max_pixels=5_000)
    np.testing.assert_allclose(stats.mean, _full_stats(u16_array)["mean"], rtol=0.05)


def test_band_stats_ignore_alpha(rgba_file: tuple[Path, np.ndarray]) -> None:
    path, arr = rgba_file
    stats = compute_band_stats(open_scene(path), [1])
    assert stats.count == int((arr[3] > 0).sum())
    assert stats.mean[0] == pytest.approx(arr[0][arr[3] > 0].mean())


def test_band_stats_no_valid_pixels(tmp_path: Path) -> None:
    s = open_scene(
        write_tif(tmp_path / "z.tif", np.zeros((1, 8, 8), np.uint8), nodata=0, block=None)
    )
    with pytest.raises(BandError, match="no valid pixels"):
        compute_band_stats(s)


def test_normalize_methods() -> None:
    s = BandStats(
        (1, 2), (10.0, 0.0), (2.0, 0.0), (0.0, 5.0), (20.0, 5.0), (5.0, 5.0), (15.0, 5.0), 4, 1
    )
    x = np.array([[[0, 10, 20]], [[5, 5, 5]]], dtype=np.uint16)
    out = normalize(x, s, method="meanstd")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-5, 0, 5])
    np.testing.assert_allclose(out[1, 0], [5, 5, 5])  # zero std -> divide by 1
    np.testing.assert_allclose(normalize(x, s, method="minmax")[0, 0], [0, 0.5, 1])
    np.testing.assert_allclose(normalize(x, s, method="percentile")[0, 0], [0, 0.5, 1])
    np.testing.assert_allclose(normalize(x, None, method="scale", scale=20)[0, 0], [0, 0.5, 1])
    with pytest.raises(BandError, match="statistics cover 2"):
        normalize(x[:1], s, method="meanstd")
    with pytest.raises(ValueError, match="statistics"):
        normalize(x, None, method="minmax")


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        SceneReadError, match=r"cannot read scene '.*nope\.tif': file not found; check"
    ):
        open_scene(tmp_path / "nope.tif")


def test_text_file_named_tif(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("this is not a raster\n")
    with pytest.raises(SceneReadError, match=r"'.*notes\.tif': not a raster.*re-download/repair"):
        open_scene(path)


def test_truncated_tiff_fails_at_open(tmp_path: Path, u16_array: np.ndarray) -> None:
    good = write_tif(tmp_path / "good.tif", u16_array, nodata=0)
    bad = tmp_path / "truncated.tif"
    blob = good.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        SceneReadError,
        match=r"cannot read scene '.*truncated\.tif': the file is truncated or corrupt",
    ):
        open_scene(bad)


def test_file_broken_mid_run_names_window(tmp_path: Path, u16_array: np.ndarray) -> None:
    path = write_tif(tmp_path / "vanish.tif", u16_array, nodata=0)
    s = open_scene(path)
    path.unlink()
    with pytest.raises(SceneReadError, match=r"window PixelWindow\(row_off=1.*vanish\.tif") as ei:
        s.read_window(PixelWindow(1, 2, 3, 4))
    assert ei.value.window == PixelWindow(1, 2, 3, 4)  # type: ignore[attr-defined]
    assert isinstance(ei.value, OSError) and isinstance(ei.value, TerrasegError)


def test_no_crs(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "a.tif", np.ones((1, 10, 10), np.uint8), crs=None)
    with pytest.raises(CRSError, match=r"scene '.*a\.tif' has no CRS; pass --assume-crs EPSG:"):
        open_scene(path)


@pytest.mark.parametrize("assume", ["EPSG:32633", 32633, "+proj=utm +zone=33 +datum=WGS84"])
def test_assume_crs(tmp_path: Path, assume: str | int) -> None:
    path = write_tif(tmp_path / "a.tif", np.ones((1, 10, 10), np.uint8), crs=None)
    s = open_scene(path, assume_crs=assume)
    assert s.crs_assumed and s.crs.to_epsg() == 32633
    assert "assumed" in repr(s)


def test_assume_crs_ignored_when_file_has_one(u16_file: Path) -> None:
    s = open_scene(u16_file, assume_crs=4326)
    assert s.crs.to_epsg() == 32633 and not s.crs_assumed


def test_unknown_assume_crs(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "a.tif", np.ones((1, 10, 10), np.uint8), crs=None)
    with pytest.raises(CRSError, match="unknown CRS 'EPSG:999999'"):
        open_scene(path, assume_crs="EPSG:999999")


def test_no_geotransform(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "plain.tif",
        np.ones((1, 10, 10), np.uint8),
        crs=None,
        transform=Affine.identity(),
    )
    with pytest.raises(SceneReadError, match=r"'.*plain\.tif' has no geotransform.*gdal_translate"):
        open_scene(path, assume_crs=32633)


def test_rotated_transform(tmp_path: Path) -> None:
    t = Affine(0.48, 0.13, ORIGIN[0], 0.13, -0.48, ORIGIN[1])  # rotated by ~15 degrees
    path = write_tif(tmp_path / "rot.tif", np.ones((1, 10, 10), np.uint8), transform=t)
    with pytest.raises(SceneReadError, match=r"rotated or sheared.*north-up.*gdalwarp"):
        open_scene(path)


def test_zero_size_raster(tmp_path: Path) -> None:
    vrt = tmp_path / "empty.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="0" rasterYSize="10">'
        '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>'
    )
    with pytest.raises(SceneReadError, match=r"'.*empty\.vrt': the raster has zero size"):
        open_scene(vrt)


# ----------------------------------------------------------------------------- real data


def test_real_atlanta_uint16_nodata() -> None:
    s = open_scene(real_file("spacenet4_atlanta_buildings/sample_geotiff.tif"))
    assert (s.count, s.dtype.name, s.nodata, s.shape) == (1, "uint16", 0.0, (900, 900))
    assert s.crs.to_epsg() == 32616 and s.gsd_m == pytest.approx(0.5, rel=2e-3)
    data, valid, _ = s.read_window_with_mask(PixelWindow(-16, -16, 256, 256), bands=[1, 1, 1])
    assert data.shape == (3, 256, 256) and np.array_equal(data[0], data[2])
    assert not valid[:16].any() and valid[16:, 16:].any()


def test_real_kampala_rgba_alpha() -> None:
    s = open_scene(real_file("kampala_block_a_buildings/kampala_oam_z21_block_a.tif"))
    assert s.crs.to_epsg() == 3857 and s.has_alpha and s.alpha_band == 4
    assert s.gsd_m == pytest.approx(0.0746, rel=0.01)
    rows, cols = s.shape
    _, valid, _ = s.read_window_with_mask(PixelWindow(0, 0, rows, cols), bands=[1, 2, 3])
    alpha, _ = s.read_window(PixelWindow(0, 0, rows, cols), bands=[4])
    np.testing.assert_array_equal(valid, alpha[0] > 0)
    assert 0.0 < 1 - valid.mean() < 0.01  # about 0.3 % transparent


def test_real_vegas_geographic_gsd() -> None:
    s = open_scene(real_file("spacenet3_vegas_pan_roads/road_mask_input.tif"))
    assert s.crs.to_epsg() == 4326
    gx, gy = s.gsd_xy_m
    assert gy == pytest.approx(0.30, abs=0.01)  # ~0.3 m north-south
    assert gx == pytest.approx(0.30 * np.cos(np.radians(36.1)), abs=0.01)  # degrees shrink E-W
    assert 0.25 < s.gsd_m < 0.31


def test_real_landsat_nodata_collar() -> None:
    s = open_scene(real_file("landsat7_rgb/RGB.byte.tif"))
    assert s.crs.to_epsg() == 32618 and s.nodata == 0 and s.count == 3
    _, valid, _ = s.read_window_with_mask(PixelWindow(0, 0, *s.shape))
    assert 0.3 < valid.mean() < 0.9  # a collar of nodata around a tilted footprint
    assert not valid[0, 0] and valid[s.shape[0] // 2, s.shape[1] // 2]
    stats = compute_band_stats(s)
    assert min(stats.p2) >= 1  # the collar does not drag the statistics to 0


def test_mask_from_gdal_dataset_mask(tmp_path: Path) -> None:
    arr = np.full((2, 40, 60), 5, np.uint8)
    path = write_tif(tmp_path / "msk.tif", arr, block=None)
    mask = np.full((40, 60), 255, np.uint8)
    mask[10:20, 30:50] = 0
    with rasterio.open(path, "r+") as ds:
        ds.write_mask(mask)
    s = open_scene(path)
    _, valid, _ = s.read_window_with_mask(PixelWindow(0, 0, 40, 60), bands=[2])
    np.testing.assert_array_equal(valid, mask > 0)


def test_gdal_virtual_path(u16_array: np.ndarray) -> None:
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            count=3,
            height=ROWS,
            width=COLS,
            dtype="uint16",
            crs=UTM,
            transform=from_origin(*ORIGIN, RES, RES),
            nodata=0,
        ) as ds:
            ds.write(u16_array)
        s = open_scene(mem.name)
        assert s.path.startswith("/vsimem/") and s.mtime_ns is None
        data, _ = s.read_window(PixelWindow(-3, -3, 10, 10), pad="nodata")
        np.testing.assert_array_equal(data[:, 3:, 3:], u16_array[:, :7, :7])
        clear_handle_cache()


def test_quicklook_plot_is_decimated_and_georeferenced(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from terraseg.io.quicklook import read_quicklook

    arr = np.random.default_rng(0).integers(1, 255, (3, 700, 500), dtype=np.uint8)
    s = open_scene(write_tif(tmp_path / "q.tif", arr))
    data, valid = read_quicklook(s, max_px=100)
    assert max(data.shape[1:]) <= 100 and valid.all()
    ax = s.plot(max_px=100)
    left, right, bottom, top = ax.images[0].get_extent()
    assert (left, bottom, right, top) == pytest.approx(tuple(s.bounds))
