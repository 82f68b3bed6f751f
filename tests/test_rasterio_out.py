"""Tests for terraseg.io.raster_sink: chunked COG writing, atomicity, metadata."""

from __future__ import annotations

import builtins
import itertools
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError, ExportError, GridError, OutputExistsError
from terraseg.io.raster_sink import (
    CLASS_NAMES_TAG,
    RasterSink,
    _basic_cog_problems,
    read_class_names,
    validate_cog,
)
from terraseg.io.scene import open_scene

ROWS, COLS = 1100, 1300  # > 512 so overviews are required; not multiples of 512
CHUNK = 300
TRANSFORM = from_origin(500_123.5, 5_400_456.0, 0.5, 0.5)
LIKE: dict[str, Any] = {"crs": "EPSG:32633", "transform": TRANSFORM, "shape": (ROWS, COLS)}
CLASSES = {0: "background", 1: "building", 2: "road"}
COLORS = {0: (0, 0, 0), 1: (230, 60, 40), 2: (250, 250, 120)}


def chunk_windows(rows: int = ROWS, cols: int = COLS, step: int = CHUNK) -> list[PixelWindow]:
    return [
        PixelWindow(r, c, min(step, rows - r), min(step, cols - c))
        for r, c in itertools.product(range(0, rows, step), range(0, cols, step))
    ]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 3, size=(ROWS, COLS), dtype=np.uint8)
    arr[:50, :50] = 255  # nodata corner
    return arr


def write_labels(path: Path, labels: np.ndarray, **kwargs: Any) -> Path:
    windows = chunk_windows()
    random.Random(3).shuffle(windows)  # any order
    options: dict[str, Any] = {"like": LIKE, "class_names": CLASSES, "colormap": COLORS, **kwargs}
    with RasterSink(path, **options) as sink:
        for w in windows:
            sink.write(w, labels[w.to_slices()][None])
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, labels: np.ndarray) -> Path:
    out = tmp_path_factory.mktemp("out") / "classes.tif"
    return write_labels(out, labels, band_names=["class"], resampling="mode")


def test_grid_values_and_nodata(written: Path, labels: np.ndarray) -> None:
    with rasterio.open(written) as ds:
        assert ds.crs.to_epsg() == 32633
        assert ds.transform == TRANSFORM
        assert ds.shape == (ROWS, COLS) and ds.count == 1 and ds.dtypes[0] == "uint8"
        assert ds.nodata == 255
        np.testing.assert_array_equal(ds.read(1), labels)


def test_valid_cog_with_overviews(written: Path) -> None:
    assert validate_cog(written) == []
    assert _basic_cog_problems(written) == []
    with rasterio.open(written) as ds:
        assert ds.overviews(1) == [2, 4]
        assert ds.block_shapes[0] == (512, 512)
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"


def test_colour_table_names_and_descriptions(written: Path) -> None:
    with rasterio.open(written) as ds:
        cmap = ds.colormap(1)
        assert cmap[1] == (230, 60, 40, 255) and cmap[2] == (250, 250, 120, 255)
        assert ds.descriptions == ("class",)
        assert CLASS_NAMES_TAG in ds.tags(1)
    assert read_class_names(written) == CLASSES
    aux = written.with_name(written.name + ".aux.xml")
    cats = [c.text or "" for c in ET.parse(aux).getroot().iter("Category")]
    assert cats == ["background", "building", "road"]


def test_no_temporary_files_left(written: Path) -> None:
    assert sorted(p.name for p in written.parent.iterdir()) == [
        "classes.tif",
        "classes.tif.aux.xml",
    ]


def test_like_scene_and_multiband(tmp_path: Path) -> None:
    src = tmp_path / "src.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        height=70,
        width=90,
        count=1,
        dtype="uint16",
        crs="EPSG:32616",
        transform=from_origin(733_000.0, 3_725_000.0, 0.5, 0.5),
    ) as ds:
        ds.write(np.ones((1, 70, 90), np.uint16))
    scene = open_scene(src)
    probs = np.arange(3 * 70 * 90, dtype=np.int64).reshape(3, 70, 90) % 200
    out = tmp_path / "probs.tif"
    with RasterSink(
        out, like=scene, count=3, band_names=["a", "b", "c"], resampling="average"
    ) as s:
        s.write(PixelWindow(40, 50, 30, 40), probs[:, 40:, 50:])  # int64 -> uint8 (same kind)
        s.write(PixelWindow(0, 0, 40, 90), probs[:, :40])
        s.write(PixelWindow(40, -10, 30, 60), np.pad(probs[:, 40:, :50], ((0, 0), (0, 0), (10, 0))))
    with rasterio.open(out) as ds:
        assert ds.crs == scene.crs and ds.transform == scene.transform and ds.shape == scene.shape
        assert ds.descriptions == ("a", "b", "c")
        np.testing.assert_array_equal(ds.read(), probs)
    assert validate_cog(out) == []
    assert not out.with_name(out.name + ".aux.xml").exists()


def test_unwritten_windows_read_as_nodata(tmp_path: Path) -> None:
    out = tmp_path / "sparse.tif"
    with RasterSink(out, like=LIKE) as sink:
        sink.write(PixelWindow(0, 0, 10, 10), np.ones((1, 10, 10), np.uint8))
    with rasterio.open(out) as ds:
        arr = ds.read(1)
    assert (arr[:10, :10] == 1).all() and (arr[10:] == 255).all()


def test_failure_inside_with_leaves_nothing(tmp_path: Path, labels: np.ndarray) -> None:
    out = tmp_path / "fail.tif"
    with pytest.raises(RuntimeError, match="boom"), RasterSink(out, like=LIKE) as sink:
        sink.write(PixelWindow(0, 0, 10, 10), labels[:10, :10])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_output(tmp_path: Path, labels: np.ndarray) -> None:
    out = write_labels(tmp_path / "keep.tif", labels)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(KeyboardInterrupt), RasterSink(out, like=LIKE, overwrite=True) as sink:
        sink.write(PixelWindow(0, 0, 10, 10), np.zeros((10, 10), np.uint8))
        raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failure_while_finishing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_copy(*args: Any, **kwargs: Any) -> None:
        raise rasterio.errors.RasterioIOError("disk full")

    monkeypatch.setattr(rasterio.shutil, "copy", broken_copy)
    out = tmp_path / "finish.tif"
    with pytest.raises(
        ExportError, match=r"cannot finish raster output '.*finish\.tif': disk full"
    ):
        with RasterSink(out, like=LIKE, class_names=CLASSES) as sink:
            sink.write(PixelWindow(0, 0, 10, 10), np.zeros((10, 10), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "exists.tif"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        RasterSink(out, like=LIKE).__enter__()
    assert out.read_bytes() == b"old" and list(tmp_path.iterdir()) == [out]


def test_overwrite_replaces_and_drops_stale_sidecar(tmp_path: Path, labels: np.ndarray) -> None:
    out = write_labels(tmp_path / "over.tif", labels)
    assert out.with_name("over.tif.aux.xml").exists()
    with RasterSink(out, like=LIKE, overwrite=True) as sink:
        sink.write(PixelWindow(0, 0, 5, 5), np.full((5, 5), 9, np.uint8))
    with rasterio.open(out) as ds:
        assert ds.read(1, window=((0, 5), (0, 5))).tolist() == [[9] * 5] * 5
    assert read_class_names(out) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["over.tif"]


def test_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot create output folder"):
        RasterSink(blocker / "out.tif", like=LIKE).__enter__()


@pytest.mark.parametrize(
    ("window", "array", "error", "match"),
    [
        (PixelWindow(0, 0, 10, 10), np.zeros((1, 5, 5), np.uint8), GridError, "does not fit"),
        (PixelWindow(0, 0, 4, 4), np.zeros((4, 4), np.float32), ExportError, "float32 values"),
        (PixelWindow(ROWS, 0, 4, 4), np.zeros((4, 4), np.uint8), GridError, "outside"),
        (PixelWindow(0, 0, 2, 2), np.array([[0, 1], [2, 256]]), ExportError, "do not fit"),
    ],
)
def test_write_errors(
    tmp_path: Path, window: PixelWindow, array: np.ndarray, error: type[Exception], match: str
) -> None:
    with RasterSink(tmp_path / "e.tif", like=LIKE) as sink, pytest.raises(error, match=match):
        sink.write(window, array)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": 0}, "count must be"),
        ({"band_names": ["a", "b"]}, "band_names"),
        ({"dtype": "float32", "colormap": COLORS}, "colour table needs"),
        ({"nodata": 300}, "does not fit dtype"),
        ({"resampling": "fancy"}, "unknown resampling"),
        ({"compress": "bzip9"}, "unknown compression"),
        ({"like": {"crs": "EPSG:32633"}}, "'like' must give"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    options: dict[str, Any] = {"like": LIKE, **kwargs}
    with pytest.raises(ConfigError, match=match):
        RasterSink(tmp_path / "x.tif", **options)
    assert list(tmp_path.iterdir()) == []


def test_write_outside_with_block(tmp_path: Path) -> None:
    sink = RasterSink(tmp_path / "x.tif", like=LIKE)
    with pytest.raises(RuntimeError, match="not open"):
        sink.write(PixelWindow(0, 0, 1, 1), np.zeros((1, 1), np.uint8))


def test_validate_cog_reports_plain_tiff(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain,
        "w",
        driver="GTiff",
        height=ROWS,
        width=COLS,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=TRANSFORM,
    ) as ds:
        ds.write(np.zeros((1, ROWS, COLS), np.uint8))
    assert validate_cog(plain)
    problems = _basic_cog_problems(plain)
    assert any("LAYOUT=COG" in p for p in problems) and any("overviews" in p for p in problems)


def test_validate_cog_without_rio_cogeo(
    written: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_cogeo(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("rio_cogeo"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cogeo)
    assert validate_cog(written) == []
    bad = tmp_path / "bad.tif"
    bad.write_text("nope")
    assert validate_cog(bad)[0].startswith("cannot open")


def test_gdal_cache_bounded_unless_user_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio.env

    from terraseg.io.raster_sink import GDAL_CACHE_BYTES, bounded_gdal_cache

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with bounded_gdal_cache():
        assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) == GDAL_CACHE_BYTES
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    with bounded_gdal_cache():  # the user's setting wins: nothing changed here
        assert "GDAL_CACHEMAX" not in (rasterio.env.getenv() if rasterio.env.hasenv() else {})
