"""Synthetic city scenes: georeferencing, exact truth, determinism, streaming, errors."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from conftest import CITY_SEED, CITY_SHAPE, XY_SHAPE
from numpy.typing import NDArray
from rasterio.enums import ColorInterp
from rasterio.features import rasterize

import terraseg.synthetic as synthetic
import terraseg.synthetic.layout
import terraseg.synthetic.noise
import terraseg.synthetic.streets
from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError, CRSError, ExportError, OutputExistsError
from terraseg.synthetic import (
    ROAD_CLASSES,
    CityLayout,
    CityScene,
    CityStyle,
    make_city,
    make_xy_image,
    render_window,
    scene_transform,
    truth_paths,
)

Arrays = tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint32]]


def _read(path: Path) -> NDArray[Any]:
    with rasterio.open(path) as ds:
        data: NDArray[Any] = ds.read()
    return data


def _area_of_use(crs: str) -> tuple[float, float, float, float]:
    aou = pyproj.CRS(crs).area_of_use
    assert aou is not None
    return aou.bounds


def _rasterize_gpkg(scene: CityScene) -> tuple[NDArray[np.uint8], NDArray[np.uint32]]:
    """Burn the GeoPackage the documented way: roads, then buildings by ascending id."""
    roads = gpd.read_file(scene.truth_gpkg, layer="roads")
    blds = gpd.read_file(scene.truth_gpkg, layer="buildings").sort_values("building_id")
    classes = rasterize(
        [(g, 2) for g in roads.geometry],
        out_shape=scene.shape,
        transform=scene.transform,
        dtype="uint8",
        all_touched=synthetic.ALL_TOUCHED,
    )
    rasterize(
        [(g, 1) for g in blds.geometry],
        out=classes,
        transform=scene.transform,
        all_touched=synthetic.ALL_TOUCHED,
    )
    inst = rasterize(
        [(g, int(i)) for g, i in zip(blds.geometry, blds.building_id, strict=True)],
        out_shape=scene.shape,
        transform=scene.transform,
        dtype="uint32",
        all_touched=synthetic.ALL_TOUCHED,
    )
    return classes, inst


# -- georeferencing ------------------------------------------------------------------------
def test_utm_scene_is_georeferenced_inside_the_zone(city_scene: CityScene) -> None:
    with rasterio.open(city_scene.image) as ds:
        assert ds.crs.to_epsg() == 32633 and city_scene.crs == "EPSG:32633"
        t = ds.transform
        assert t == city_scene.transform
        assert (t.a, t.b, t.d, t.e) == (0.5, 0.0, 0.0, -0.5)  # north up, 0.5 m pixels
        assert t.c != 0 and t.f != 0
        assert 300_000 < t.c < 700_000 and 1_000_000 < t.f < 9_000_000
        left, bottom, right, top = ds.bounds
    to_lonlat = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    west, south, east, north = _area_of_use("EPSG:32633")
    for x, y in [(left, bottom), (right, top), (left, top), (right, bottom)]:
        lon, lat = to_lonlat.transform(x, y)
        assert west <= lon <= east and south <= lat <= north


def test_origin_depends_on_seed_and_stays_in_area_of_use() -> None:
    origins = {scene_transform("EPSG:32633", (512, 512), 0.5, seed).c for seed in range(5)}
    assert len(origins) == 5
    # another projected CRS in feet: the pixel is still 0.5 m on the ground
    t = scene_transform("EPSG:2263", (512, 512), 0.5, 1)
    assert t.a == pytest.approx(0.5 / 0.3048006096, rel=1e-6)
    to_lonlat = pyproj.Transformer.from_crs("EPSG:2263", "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(t.c, t.f)
    west, south, east, north = _area_of_use("EPSG:2263")
    assert west <= lon <= east and south <= lat <= north


def test_geographic_crs_converts_gsd_to_degrees(tmp_path: Path) -> None:
    scene = make_city(tmp_path / "geo.tif", size_px=(300, 200), seed=2, crs="EPSG:4326")
    with rasterio.open(scene.image) as ds:
        assert ds.crs.to_epsg() == 4326
        t = ds.transform
    assert scene.crs == "EPSG:4326" and t.b == t.d == 0 and t.a > 0 > t.e
    assert -180 < t.c < 180 and -80 < t.f < 80 and t.c != 0
    geod = pyproj.Geod(ellps="WGS84")
    lat = t.f + t.e * 150
    _, _, dx = geod.inv(t.c, lat, t.c + t.a, lat)
    _, _, dy = geod.inv(t.c, lat, t.c, lat + t.e)
    assert dx == pytest.approx(0.5, rel=0.01) and dy == pytest.approx(0.5, rel=0.01)
    classes, inst = _rasterize_gpkg(scene)  # truth is exact in degrees too
    np.testing.assert_array_equal(classes, _read(scene.truth_classes)[0])
    np.testing.assert_array_equal(inst, _read(scene.truth_instances)[0])


# -- the written files ---------------------------------------------------------------------
def test_files_profiles_and_band_names(city_scene: CityScene) -> None:
    assert city_scene.shape == CITY_SHAPE
    assert (city_scene.truth_gpkg, city_scene.truth_classes, city_scene.truth_instances) == (
        truth_paths(city_scene.image)
    )
    with rasterio.open(city_scene.image) as ds:
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.shape == CITY_SHAPE
        assert ds.block_shapes == [(512, 512)] * 3 and ds.compression.value == "DEFLATE"
        assert ds.descriptions == ("red", "green", "blue")
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        profile = ds.profile
    for path, dtype in (
        (city_scene.truth_classes, "uint8"),
        (city_scene.truth_instances, "uint32"),
    ):
        with rasterio.open(path) as ds:
            assert ds.count == 1 and ds.dtypes == (dtype,) and ds.nodata is None
            assert ds.block_shapes == [(512, 512)] and ds.compression.value == "DEFLATE"
            assert ds.transform == profile["transform"] and ds.crs == profile["crs"]
            assert ds.shape == CITY_SHAPE


def test_four_band_image_has_nir(tmp_path: Path) -> None:
    scene = make_city(tmp_path / "nir.tif", size_px=(256, 300), seed=1, bands=4)
    with rasterio.open(scene.image) as ds:
        assert ds.count == 4 and ds.descriptions == ("red", "green", "blue", "nir")
        img = ds.read()
    classes = _read(scene.truth_classes)[0]
    veg = (classes == 0) & (img[1] > img[0] + 10)  # green things: NIR is bright there
    if veg.sum() > 100:
        assert img[3][veg].mean() > img[3][classes == 2].mean()


def test_truth_layers_fields_and_crs(city_scene: CityScene) -> None:
    blds = gpd.read_file(city_scene.truth_gpkg, layer="buildings")
    roads = gpd.read_file(city_scene.truth_gpkg, layer="roads")
    lines = gpd.read_file(city_scene.truth_gpkg, layer="road_centerlines")
    for gdf in (blds, roads, lines):
        assert gdf.crs.to_epsg() == 32633
    assert set(blds.geom_type) == {"Polygon"} and set(roads.geom_type) == {"MultiPolygon"}
    assert set(lines.geom_type) == {"LineString"}
    assert blds.building_id.is_unique and blds.building_id.min() >= 1
    assert len(blds) == city_scene.n_buildings > 100
    assert set(roads.road_class) <= set(ROAD_CLASSES) and (roads.width_m > 0).all()
    assert (lines.width_m > 0).all()
    assert city_scene.road_length_m == pytest.approx(lines.length.sum(), rel=1e-6)
    assert blds.is_valid.all() and roads.is_valid.all()
    # everything lies inside the scene
    with rasterio.open(city_scene.image) as ds:
        scene_box = shapely.box(*ds.bounds).buffer(1e-6)
    for gdf in (blds, roads, lines):
        assert gdf.within(scene_box).all()
    text = city_scene.describe()
    assert str(city_scene.image) in text and str(city_scene.truth_gpkg) in text
    assert f"{city_scene.n_buildings} buildings" in text and "EPSG:32633" in text


def test_truth_rasters_equal_rasterized_vectors(city_scene: CityScene) -> None:
    classes, inst = _rasterize_gpkg(city_scene)
    np.testing.assert_array_equal(classes, _read(city_scene.truth_classes)[0])
    np.testing.assert_array_equal(inst, _read(city_scene.truth_instances)[0])
    assert set(np.unique(classes)) == {0, 1, 2}


def test_buildings_never_overlap_roads(city_scene: CityScene) -> None:
    roads = gpd.read_file(city_scene.truth_gpkg, layer="roads")
    road_px = rasterize(roads.geometry, out_shape=city_scene.shape, transform=city_scene.transform)
    inst = _read(city_scene.truth_instances)[0]
    assert not ((road_px > 0) & (inst > 0)).any()
    blds = gpd.read_file(city_scene.truth_gpkg, layer="buildings")
    overlap = shapely.union_all(blds.geometry).area
    assert overlap == pytest.approx(blds.area.sum(), rel=1e-9)  # touching, never overlapping


def test_touching_buildings_keep_distinct_ids(city_scene: CityScene) -> None:
    inst = _read(city_scene.truth_instances)[0].astype(np.int64)
    across = (inst[:, 1:] != inst[:, :-1]) & (inst[:, 1:] > 0) & (inst[:, :-1] > 0)
    down = (inst[1:] != inst[:-1]) & (inst[1:] > 0) & (inst[:-1] > 0)
    assert across.sum() + down.sum() > 50
    blds = gpd.read_file(city_scene.truth_gpkg, layer="buildings")
    tree = shapely.STRtree(blds.geometry.values)
    a, b = tree.query(blds.geometry.values, predicate="touches")
    assert (a != b).sum() > 10


def test_image_statistics_look_like_a_city(city_arrays: Arrays) -> None:
    image, classes, _ = city_arrays
    assert image.dtype == np.uint8 and image.shape == (3, *CITY_SHAPE)
    frac = np.bincount(classes.ravel(), minlength=3) / classes.size
    assert 0.05 < frac[1] < 0.5 and 0.05 < frac[2] < 0.5
    for band in image:
        assert 20 < band.mean() < 200 and band.std() > 15
    # roads are darker and greyer than vegetation-dominated background
    assert image[:, classes == 2].mean() < image[:, classes == 0].mean() + 40


# -- determinism and streaming -------------------------------------------------------------
def test_file_equals_the_array_fixture(city_scene: CityScene, city_arrays: Arrays) -> None:
    image, classes, inst = city_arrays
    np.testing.assert_array_equal(_read(city_scene.image), image)
    np.testing.assert_array_equal(_read(city_scene.truth_classes)[0], classes)
    np.testing.assert_array_equal(_read(city_scene.truth_instances)[0], inst)


def test_same_seed_same_bytes_other_seed_differs(city_layout: CityLayout) -> None:
    win = PixelWindow(100, 300, 200, 260)
    a = render_window(city_layout, win)
    fresh = CityLayout.from_seed(CITY_SHAPE, CITY_SEED, 0.5, transform=city_layout.transform)
    b = render_window(fresh, win)
    for k in range(3):
        assert a[k].tobytes() == b[k].tobytes()
    other = CityLayout.from_seed(CITY_SHAPE, CITY_SEED + 1, 0.5, transform=city_layout.transform)
    c = render_window(other, win)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
    assert CityStyle.from_seed(1) != CityStyle.from_seed(2)
    rgbn = render_window(city_layout, win, bands=4)
    assert rgbn[0].shape == (4, 200, 260)
    np.testing.assert_array_equal(rgbn[0][:3], a[0])  # NIR is an extra band, RGB unchanged


def test_files_are_reproducible(tmp_path: Path) -> None:
    one = make_city(tmp_path / "a.tif", size_px=(200, 330), seed=11)
    two = make_city(tmp_path / "b.tif", size_px=(200, 330), seed=11)
    for p, q in (
        (one.image, two.image),
        (one.truth_classes, two.truth_classes),
        (one.truth_instances, two.truth_instances),
    ):
        np.testing.assert_array_equal(_read(p), _read(q))
    assert one.n_buildings == two.n_buildings


@pytest.mark.parametrize(
    "window",
    [
        PixelWindow(0, 0, 64, 64),
        PixelWindow(123, 457, 301, 255),
        PixelWindow(512, 1000, 188, 100),  # the bottom-right corner
        PixelWindow(600, 1050, 200, 100),  # runs past the scene
    ],
)
def test_separate_windows_equal_the_whole(
    city_scene: CityScene, city_layout: CityLayout, window: PixelWindow
) -> None:
    image, classes, inst = render_window(city_layout, window)
    rows, cols = CITY_SHAPE
    h = min(window.row_stop, rows) - window.row_off
    w = min(window.col_stop, cols) - window.col_off
    sl = (slice(window.row_off, window.row_off + h), slice(window.col_off, window.col_off + w))
    np.testing.assert_array_equal(image[:, :h, :w], _read(city_scene.image)[:, sl[0], sl[1]])
    np.testing.assert_array_equal(classes[:h, :w], _read(city_scene.truth_classes)[0][sl])
    np.testing.assert_array_equal(inst[:h, :w], _read(city_scene.truth_instances)[0][sl])
    assert not classes[h:].any() and not classes[:, w:].any()  # no truth outside the scene


def test_scene_layout_and_features_in(city_scene: CityScene, city_layout: CityLayout) -> None:
    assert city_scene.layout() == city_layout
    win = PixelWindow(200, 300, 256, 256)
    feats = city_layout.features_in(win)
    inst = _read(city_scene.truth_instances)[0][win.to_slices()]
    ids_in_raster = set(np.unique(inst).tolist()) - {0}
    assert ids_in_raster <= set(feats.building_id.tolist())
    assert len(feats.roads) > 0 and len(feats.centerlines) > 0


def test_progress_reports_every_window(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    make_city(
        tmp_path / "p.tif",
        size_px=(600, 1100),
        seed=5,
        window_px=512,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(k, 6) for k in range(1, 7)]


@pytest.mark.parametrize("size_px", [(37, 600), (513, 90), 1])
def test_odd_sizes(tmp_path: Path, size_px: int | tuple[int, int]) -> None:
    scene = make_city(tmp_path / "odd.tif", size_px=size_px, seed=4)
    shape = (size_px, size_px) if isinstance(size_px, int) else size_px
    assert scene.shape == shape
    for path in (scene.image, scene.truth_classes, scene.truth_instances):
        with rasterio.open(path) as ds:
            assert ds.shape == shape
    classes, inst = _rasterize_gpkg(scene)
    np.testing.assert_array_equal(inst, _read(scene.truth_instances)[0])


# -- memory --------------------------------------------------------------------------------
_PEAK = """
import json, resource, sys
from terraseg.synthetic import make_city
make_city(sys.argv[1], size_px=int(sys.argv[2]), seed=1)
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"peak_mb": (self_kb + kids_kb) / 1024}))
"""


def _peak_mb(tmp_path: Path, size_px: int) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, str(tmp_path / f"m{size_px}.tif"), str(size_px)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def test_peak_memory_does_not_grow_with_scene_size(tmp_path: Path) -> None:
    small, large = _peak_mb(tmp_path, 1024), _peak_mb(tmp_path, 4096)
    assert large <= 1.3 * small, (small, large)


@pytest.mark.slow
def test_peak_memory_8192_vs_2048(tmp_path: Path) -> None:
    small, large = _peak_mb(tmp_path, 2048), _peak_mb(tmp_path, 8192)
    assert large <= 1.3 * small, (small, large)
    assert large < 1024, large


# -- bad input -----------------------------------------------------------------------------
def test_unknown_crs_names_it_and_writes_nothing(tmp_path: Path) -> None:
    for crs in ("EPSG:999999", "not-a-crs"):
        with pytest.raises(CRSError, match=crs) as info:
            make_city(tmp_path / "x.tif", size_px=64, crs=crs)
        assert info.value.details["crs"] == crs
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size_px": 0}, "size_px"),
        ({"size_px": -3}, "size_px"),
        ({"size_px": (10, 0)}, "size_px"),
        ({"size_px": (10, 10, 10)}, "size_px"),
        ({"bands": 5}, "bands"),
        ({"gsd_m": 0.0}, "gsd_m"),
        ({"window_px": 1000}, "window_px"),
    ],
)
def test_bad_arguments_raise_config_error(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        make_city(tmp_path / "x.tif", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="file"):
        make_city(blocker / "x.tif", size_px=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    first = make_city(tmp_path / "c.tif", size_px=64, seed=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["c.instances.tif", "c.tif", "c.truth.gpkg", "c.truth.tif"]
    with pytest.raises(OutputExistsError, match="c.tif") as info:
        make_city(tmp_path / "c.tif", size_px=64, seed=2)
    assert info.value.details["path"] == first.image
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # any one existing output is enough to refuse, before anything is written
    for name in ("c.tif", "c.truth.tif", "c.instances.tif"):
        (tmp_path / name).unlink()
    with pytest.raises(OutputExistsError, match="c.truth.gpkg"):
        make_city(tmp_path / "c.tif", size_px=64, seed=2)
    assert [p.name for p in tmp_path.iterdir()] == ["c.truth.gpkg"]
    second = make_city(tmp_path / "c.tif", size_px=64, seed=2, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    assert second.truth_gpkg.read_bytes() != before["c.truth.gpkg"]


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from terraseg.synthetic.render import render_window_blocks as real

    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "render_window_blocks", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        make_city(tmp_path / "x.tif", size_px=(600, 600), window_px=512)
    assert list(tmp_path.iterdir()) == []


# -- coordinate-encoding raster ------------------------------------------------------------
def test_xy_image_values_equal_positions(xy_image_file: Path, xy_array: NDArray[np.uint16]) -> None:
    with rasterio.open(xy_image_file) as ds:
        data = ds.read()
        assert ds.shape == XY_SHAPE and ds.dtypes == ("uint16", "uint16")
        assert ds.crs.to_epsg() == 32633 and ds.transform.c != 0 and ds.transform.f != 0
        assert ds.block_shapes == [(512, 512)] * 2
        win = rasterio.windows.Window(700, 300, 90, 45)
        np.testing.assert_array_equal(ds.read(window=win), xy_array[:, 300:345, 700:790])
    np.testing.assert_array_equal(data, xy_array)


def test_xy_image_more_bands_dtypes_and_nodata(tmp_path: Path) -> None:
    path = make_xy_image(
        tmp_path / "xy4.tif",
        (70, 90),
        bands=4,
        dtype="float32",
        nodata=-1.0,
        nodata_border_px=3,
        transform=rasterio.Affine(2, 0, 1000, 0, -2, 5000),
    )
    with rasterio.open(path) as ds:
        data = ds.read()
        assert ds.nodata == -1.0 and ds.transform.c == 1000
    rows, cols = np.indices((70, 90))
    inner = (slice(3, -3), slice(3, -3))
    np.testing.assert_array_equal(data[0][inner], rows[inner])
    np.testing.assert_array_equal(data[2][inner], (rows + cols)[inner])
    np.testing.assert_array_equal(data[3][inner], (rows * 90 + cols)[inner])
    assert (data[:, :3] == -1).all() and (data[:, :, -3:] == -1).all()
    with pytest.raises(ConfigError, match="uint32"):
        make_xy_image(tmp_path / "big.tif", (70_000, 10))
    with pytest.raises(OutputExistsError):
        make_xy_image(path, (70, 90))


def test_doctests() -> None:
    for module in (
        synthetic,
        terraseg.synthetic.noise,
        terraseg.synthetic.streets,
        terraseg.synthetic.layout,
    ):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
