"""Tests for terraseg.vector.vectorization: chunked polygonization and chunk-edge dissolve."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio import features
from scipy import ndimage
from vector_helpers import TRANSFORM, UTM, chunk_windows, reader  # noqa: E402

from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError, CRSError
from terraseg.vector.polygonize import polygonize_labels
from terraseg.vector.vectorization import (
    EDGE_BOTTOM,
    EDGE_LEFT,
    EDGE_RIGHT,
    EDGE_TOP,
    ChunkLayout,
    GeometryDropWarning,
    MetricFrame,
    iter_buildings,
    match_polygons,
    polygonize_chunk,
    vectorize_buildings,
    vectorize_roads,
)

# --------------------------------------------------------------------------- synthetic city


def _city(tmp_path_factory: pytest.TempPathFactory, size_px: int, seed: int) -> Path:
    """Generate (once per session) a synthetic city; returns the image path stem."""
    synthetic = pytest.importorskip("terraseg.synthetic")
    root = tmp_path_factory.getbasetemp() / f"city-{size_px}-{seed}"
    image = root / "city.tif"
    if not image.exists():
        root.mkdir(parents=True, exist_ok=True)
        synthetic.make_city(image, size_px=size_px, seed=seed)
    return root / "city"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    stem = _city(tmp_path_factory, 2048, 0)
    with rasterio.open(f"{stem}.instances.tif") as ds:
        instances = ds.read(1)
        transform, crs = ds.transform, ds.crs
    with rasterio.open(f"{stem}.truth.tif") as ds:
        classes = ds.read(1)
    buildings = gpd.read_file(f"{stem}.truth.gpkg", layer="buildings")
    return {
        "instances": instances,
        "classes": classes,
        "transform": transform,
        "crs": crs,
        "buildings": buildings,
    }


def _iou_by_truth(pred: gpd.GeoDataFrame, truth: gpd.GeoDataFrame) -> np.ndarray[Any, Any]:
    m = match_polygons(pred.geometry.array, truth.geometry.array, iou_threshold=0.5)
    out = np.full(len(truth), np.nan)
    out[m.truth_index] = m.iou
    return out


@pytest.fixture(scope="module")
def city_buildings(city: dict[str, Any]) -> dict[int, dict[str, gpd.GeoDataFrame]]:
    out = {}
    for chunk_px in (300, 512):
        windows = chunk_windows(city["instances"].shape, chunk_px)
        read = reader(city["instances"])
        tr, crs = city["transform"], city["crs"]
        out[chunk_px] = {
            "raw": vectorize_buildings(read, windows, tr, crs, regularize=False, min_area_m2=0.0),
            "reg": vectorize_buildings(read, windows, tr, crs, min_area_m2=0.0),
        }
    return out


@pytest.mark.parametrize("chunk_px", [300, 512])
def test_city_buildings_oracle(
    city: dict[str, Any], city_buildings: dict[int, dict[str, gpd.GeoDataFrame]], chunk_px: int
) -> None:
    truth = city["buildings"]
    ids = np.unique(city["instances"])
    ids = ids[ids != 0]
    for kind in ("raw", "reg"):
        out = city_buildings[chunk_px][kind]
        # one polygon per instance id: nothing split at a chunk border, nothing lost
        assert len(out) == len(ids)
        assert np.array_equal(np.sort(out["building_id"].to_numpy()), ids)
        assert out.geometry.is_valid.all()
        assert not out.geometry.is_empty.any()
        assert pyproj.CRS(out.crs) == pyproj.CRS(city["crs"])
        assert set(out["class"]) == {"building"}
        assert out["score"].isna().all()
        # F1 at IoU 0.5 is 1.0 over buildings of at least 2 m² (a sliver of a building cut
        # by the scene edge can lose half its area to the pixel grid)
        big_truth = truth[truth.area >= 2.0]
        big_pred = out[out["area_m2"] >= 2.0]
        m = match_polygons(big_pred.geometry.array, big_truth.geometry.array)
        assert m.f1 == 1.0
    raw = _iou_by_truth(city_buildings[chunk_px]["raw"], truth)
    reg = _iou_by_truth(city_buildings[chunk_px]["reg"], truth)
    # the pixel outlines are exactly the rasterized truth, so their IoU is the grid's
    # ceiling (0.938 on this scene); regularization recovers the true outlines
    assert np.nanmean(raw) >= 0.93
    assert np.nanmean(reg) >= 0.95
    assert np.nanmean(reg) >= np.nanmean(raw)


def test_city_buildings_same_for_any_chunking(
    city_buildings: dict[int, dict[str, gpd.GeoDataFrame]],
) -> None:
    for kind in ("raw", "reg"):
        a, b = city_buildings[300][kind], city_buildings[512][kind]
        assert np.array_equal(a["building_id"], b["building_id"])
        assert shapely.equals_exact(a.geometry.array, b.geometry.array, tolerance=1e-6).all()


def test_city_buildings_rasterize_back_exactly(
    city: dict[str, Any], city_buildings: dict[int, dict[str, gpd.GeoDataFrame]]
) -> None:
    out = city_buildings[300]["raw"]
    back = features.rasterize(
        zip(out.geometry, out["building_id"], strict=True),
        out_shape=city["instances"].shape,
        transform=city["transform"],
        dtype="uint32",
    )
    assert np.array_equal(back, city["instances"])


def test_city_roads_oracle(city: dict[str, Any]) -> None:
    mask = city["classes"] == 2
    _, n_regions = ndimage.label(mask)
    results = []
    for chunk_px in (300, 512):
        log: list[PixelWindow] = []
        windows = chunk_windows(mask.shape, chunk_px)
        roads = vectorize_roads(
            reader(city["classes"], log), windows, city["transform"], city["crs"]
        )
        assert log == windows  # each chunk read once, no full-scene read
        assert len(roads) == n_regions
        assert roads.geometry.is_valid.all()
        assert pyproj.CRS(roads.crs) == pyproj.CRS(city["crs"])
        assert set(roads["class"]) == {"road"}
        assert roads["area_m2"].sum() == pytest.approx(mask.sum() * 0.25)
        back = features.rasterize(roads.geometry, out_shape=mask.shape, transform=city["transform"])
        assert np.array_equal(back == 1, mask)
        results.append(roads)
    assert shapely.equals_exact(
        results[0].geometry.array, results[1].geometry.array, tolerance=1e-6
    ).all()


# --------------------------------------------------------------------------- polygonize_chunk


def test_polygonize_chunk_flags_internal_edges_only() -> None:
    lab = np.zeros((6, 8), np.uint32)
    lab[0:2, 0:2] = 1  # touches the top and left scene edges
    lab[2:4, 3:5] = 2  # interior
    lab[4:6, 6:8] = 3  # touches the bottom and right chunk edges
    lab[0, 5] = 4  # touches the top chunk edge (internal: row_off > 0)
    window = PixelWindow(10, 0, 6, 8)
    cp = polygonize_chunk(lab, window, Affine.identity(), mode="instances", scene_shape=(40, 8))
    flags = dict(zip(cp.values.tolist(), cp.edges.tolist(), strict=True))
    assert flags == {1: EDGE_TOP, 2: 0, 3: EDGE_BOTTOM, 4: EDGE_TOP}
    assert cp.on_edge.tolist() == [True, False, True, True]
    assert cp.touches(EDGE_BOTTOM).tolist() == [False, False, True, False]
    # geometries are in scene pixels here: the window offset is applied
    assert cp.geometry[1].bounds == (3.0, 12.0, 5.0, 14.0)


def test_polygonize_chunk_instances_multipart_and_holes() -> None:
    lab = np.zeros((7, 7), np.int32)
    lab[1:6, 1:6] = 5
    lab[3, 3] = 0  # a courtyard
    lab[0, 6] = 5  # a second, diagonal-only part of the same id
    cp = polygonize_chunk(
        lab, PixelWindow(0, 0, 7, 7), TRANSFORM, mode="instances", scene_shape=(7, 7)
    )
    assert cp.values.tolist() == [5]
    geom = cp.geometry[0]
    assert geom.geom_type == "MultiPolygon" and geom.is_valid
    assert geom.area == pytest.approx((25 - 1 + 1) * 0.25)
    assert sum(len(p.interiors) for p in geom.geoms) == 1


def test_polygonize_chunk_classes_one_polygon_per_region() -> None:
    lab = np.zeros((5, 9), np.uint8)
    lab[0:2, 0:3] = 2
    lab[3:5, 0:3] = 2
    lab[1:4, 5:9] = 1
    window = PixelWindow(0, 4, 5, 9)
    cp = polygonize_chunk(lab, window, TRANSFORM, mode="classes", classes=[2])
    assert cp.values.tolist() == [2, 2]
    # without scene_shape the bottom and right edges count as internal
    assert cp.edges.tolist() == [EDGE_LEFT, EDGE_LEFT | EDGE_BOTTOM]
    cp_all = polygonize_chunk(lab, window, TRANSFORM, mode="classes")
    assert sorted(cp_all.values.tolist()) == [1, 2, 2]
    assert cp_all.edges[cp_all.values == 1].tolist() == [EDGE_RIGHT]


def test_polygonize_chunk_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="expected \\(2, 2\\)"):
        polygonize_chunk(
            np.zeros((3, 3)), PixelWindow(0, 0, 2, 2), Affine.identity(), mode="instances"
        )
    with pytest.raises(ConfigError, match="non-negative integers below 2\\*\\*31"):
        polygonize_chunk(
            np.full((2, 2), 2**31, np.uint32),
            PixelWindow(0, 0, 2, 2),
            Affine.identity(),
            mode="instances",
        )
    with pytest.raises(ConfigError, match="mode must be"):
        polygonize_chunk(
            np.zeros((2, 2), np.uint8),
            PixelWindow(0, 0, 2, 2),
            Affine.identity(),
            mode="blobs",  # type: ignore[arg-type]
        )


def test_chunk_layout_neighbours_and_validation() -> None:
    lay = ChunkLayout(chunk_windows((10, 7), 4))
    assert lay.scene_shape == (10, 7)
    assert lay.neighbours[0] == {EDGE_TOP: [], EDGE_BOTTOM: [2], EDGE_LEFT: [], EDGE_RIGHT: [1]}
    irregular = ChunkLayout(
        [PixelWindow(0, 0, 4, 6), PixelWindow(4, 0, 4, 2), PixelWindow(4, 2, 4, 4)]
    )
    assert irregular.neighbours[0][EDGE_BOTTOM] == [1, 2]
    with pytest.raises(ConfigError, match="partition the scene"):
        ChunkLayout([PixelWindow(0, 0, 4, 4), PixelWindow(0, 2, 4, 4)])
    with pytest.raises(ConfigError, match="no chunk windows"):
        ChunkLayout([])


# --------------------------------------------------------------------------- dissolve


def test_building_crossing_many_chunks_comes_out_whole() -> None:
    lab = np.zeros((40, 40), np.uint32)
    lab[3:37, 3:37] = 7  # crosses 16 chunks of 10 px
    lab[15:25, 15:25] = 0  # a courtyard
    lab[5:9, 37:40] = 8  # a neighbour touching building 7 (distinct ids)
    out = vectorize_buildings(
        reader(lab), chunk_windows(lab.shape, 10), TRANSFORM, UTM, regularize=False
    )
    assert out["building_id"].tolist() == [7, 8]
    geom = out.geometry.iloc[0]
    assert geom.geom_type == "Polygon" and geom.is_valid
    assert len(geom.interiors) == 1
    assert len(geom.exterior.coords) == 5  # no vertex left on the chunk seams
    assert out["area_m2"].tolist() == [pytest.approx((34 * 34 - 100) * 0.25), 3.0]


def test_iter_buildings_emits_each_building_once_as_soon_as_complete() -> None:
    lab = np.zeros((20, 30), np.uint32)
    lab[2:5, 2:5] = 1  # inside chunk 0
    lab[2:5, 8:12] = 2  # crosses chunks 0 and 1
    lab[12:18, 25:29] = 3  # inside the last chunk
    windows = chunk_windows(lab.shape, 10)
    log: list[PixelWindow] = []
    batches = iter_buildings(reader(lab, log), windows, TRANSFORM, UTM, regularize=False)
    assert next(batches)["building_id"].tolist() == [1]
    assert log == windows[:1]
    assert next(batches)["building_id"].tolist() == [2]  # complete once chunk 1 is read
    assert log == windows[:2]
    assert next(batches)["building_id"].tolist() == [3]
    assert log == windows
    assert list(batches) == []


def test_disconnected_id_comes_out_as_one_multipolygon() -> None:
    lab = np.zeros((30, 30), np.uint32)
    lab[2:5, 2:5] = 5  # chunk 0
    lab[22:26, 22:26] = 5  # the last chunk: the same id, never joined across an edge
    lab[12:16, 2:6] = 6
    out = vectorize_buildings(
        reader(lab), chunk_windows(lab.shape, 10), TRANSFORM, UTM, scores={5: 0.5}
    )
    assert out["building_id"].tolist() == [5, 6]
    assert out.geometry.iloc[0].geom_type == "MultiPolygon"
    assert out["area_m2"].tolist() == [pytest.approx(25 * 0.25), pytest.approx(16 * 0.25)]
    assert out["score"].iloc[0] == 0.5 and out["class"].tolist() == ["building"] * 2


def test_scores_and_drop_warning() -> None:
    lab = np.zeros((20, 20), np.uint32)
    lab[1:9, 1:9] = 1
    lab[12, 12] = 2  # 0.25 m²
    lab[15:17, 15] = 3  # 0.5 m²
    windows = chunk_windows(lab.shape, 7)
    with pytest.warns(GeometryDropWarning, match=r"dropped 2 geometries \(2 smaller than"):
        out = vectorize_buildings(
            reader(lab), windows, TRANSFORM, UTM, scores={1: 0.9, 3: 0.5}, min_area_m2=1.0
        )
    assert out["building_id"].tolist() == [1]
    assert out["score"].tolist() == [0.9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = vectorize_buildings(
            reader(lab), windows, TRANSFORM, UTM, scores={1: 0.9}, min_area_m2=0.0
        )
    assert out["score"].iloc[1:].isna().all()


def test_bad_options_and_crs() -> None:
    lab = np.zeros((4, 4), np.uint8)
    windows = chunk_windows(lab.shape, 4)
    with pytest.raises(ConfigError, match="min_area_m2"):
        vectorize_buildings(reader(lab), windows, TRANSFORM, UTM, min_area_m2=-1)
    with pytest.raises(ConfigError, match="simplify_m"):
        vectorize_roads(reader(lab), windows, TRANSFORM, UTM, simplify_m=math.nan)
    with pytest.raises(CRSError, match="no CRS"):
        vectorize_roads(reader(lab), windows, TRANSFORM, None)
    with pytest.raises(CRSError, match="unknown CRS"):
        vectorize_roads(reader(lab), windows, TRANSFORM, "EPSG:0")
    empty = vectorize_buildings(reader(lab), windows, TRANSFORM, UTM)
    assert len(empty) == 0 and list(empty.columns) == [
        "building_id",
        "score",
        "area_m2",
        "class",
        "geometry",
    ]


def test_simplify_roads_keeps_valid_polygons() -> None:
    lab = np.zeros((60, 60), np.uint8)
    rr, cc = np.mgrid[:60, :60]
    lab[np.abs(rr - 0.6 * cc - 10) < 4] = 2  # a slanted road with a staircase outline
    lab[20:40, 25:30] = 2
    windows = chunk_windows(lab.shape, 16)
    exact = vectorize_roads(reader(lab), windows, TRANSFORM, UTM)
    simple = vectorize_roads(reader(lab), windows, TRANSFORM, UTM, simplify_m=1.0)
    assert len(simple) == len(exact) == 1
    assert simple.geometry.is_valid.all()
    assert (
        shapely.get_num_coordinates(simple.geometry.array).sum()
        < shapely.get_num_coordinates(exact.geometry.array).sum()
    )
    assert simple["area_m2"].sum() == pytest.approx(exact["area_m2"].sum(), rel=0.1)


# --------------------------------------------------------------------------- metres


def _geo_grid(lon0: float, lat0: float, size_m: float, pixel_m: float) -> tuple[Affine, int]:
    """A north-up EPSG:4326 grid of about ``pixel_m`` pixels covering ``size_m``."""
    geod = pyproj.Geod(ellps="WGS84")
    lon1, _, _ = geod.fwd(lon0, lat0, 90, pixel_m)
    _, lat1, _ = geod.fwd(lon0, lat0, 0, pixel_m)
    n = int(size_m / pixel_m)
    return Affine(lon1 - lon0, 0, lon0, 0, -(lat1 - lat0), lat0), n


def test_geographic_crs_areas_in_metres() -> None:
    utm = pyproj.CRS(UTM)
    to_geo = pyproj.Transformer.from_crs(utm, "EPSG:4326", always_xy=True)
    # buildings built in UTM (metres), then given to vectorize in EPSG:4326
    shapes_m = [
        shapely.box(500_020, 5_000_020, 500_060, 5_000_050),
        shapely.affinity.rotate(shapely.box(500_100, 5_000_020, 500_150, 5_000_045), 25),
        shapely.box(500_020, 5_000_080, 500_090, 5_000_140).difference(
            shapely.box(500_050, 5_000_080, 500_090, 5_000_110)
        ),
    ]
    shapes_geo = [
        shapely.transform(s, lambda c: np.column_stack(to_geo.transform(c[:, 0], c[:, 1])))
        for s in shapes_m
    ]
    lon0, lat0 = to_geo.transform(500_000, 5_000_160)
    transform, n = _geo_grid(lon0, lat0, 170, 0.25)
    lab = features.rasterize(
        [(s, i + 1) for i, s in enumerate(shapes_geo)],
        out_shape=(n, n),
        transform=transform,
        dtype="uint32",
    )
    windows = chunk_windows(lab.shape, 256)
    for regularize in (False, True):
        out = vectorize_buildings(
            reader(lab), windows, transform, "EPSG:4326", regularize=regularize
        )
        assert pyproj.CRS(out.crs) == pyproj.CRS("EPSG:4326")
        assert out.geometry.is_valid.all()
        truth = np.array([s.area for s in shapes_m])
        assert out["area_m2"].to_numpy() == pytest.approx(truth, rel=0.01)
        # the geometries themselves are in degrees: measured in UTM they agree too
        in_utm = out.to_crs(utm).area.to_numpy()
        assert in_utm == pytest.approx(truth, rel=0.01)
    frame = MetricFrame.from_scene(transform, "EPSG:4326", lab.shape)
    assert frame.is_geographic and frame.pixel_m == pytest.approx(0.25, rel=0.01)
    feet = MetricFrame.from_scene(Affine(2.0, 0, 0, 0, -2.0, 0), "EPSG:2263", (10, 10))
    assert feet.pixel_m == pytest.approx(2 * 0.3048006, rel=1e-5)


# --------------------------------------------------------------------------- properties


@st.composite
def blob_rasters(draw: st.DrawFn) -> tuple[np.ndarray[Any, Any], int]:
    rows = draw(st.integers(5, 40))
    cols = draw(st.integers(5, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_blobs = draw(st.integers(0, 12))
    lab = np.zeros((rows, cols), np.uint32)
    for k in range(1, n_blobs + 1):
        r0, c0 = rng.integers(0, rows), rng.integers(0, cols)
        h, w = rng.integers(1, max(2, rows // 2)), rng.integers(1, max(2, cols // 2))
        blob = rng.random((h, w)) < draw(st.floats(0.4, 1.0))
        sub = lab[r0 : r0 + h, c0 : c0 + w]
        sub[blob[: sub.shape[0], : sub.shape[1]]] = k
    chunk_px = draw(st.integers(3, 45))
    return lab, chunk_px


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob_rasters())
def test_property_vectorize_then_rasterize_is_identity(
    case: tuple[np.ndarray[Any, Any], int],
) -> None:
    lab, chunk_px = case
    windows = chunk_windows(lab.shape, chunk_px)
    out = vectorize_buildings(
        reader(lab), windows, TRANSFORM, UTM, regularize=False, min_area_m2=0.0
    )
    assert out.geometry.is_valid.all()
    ids = np.unique(lab)
    assert out["building_id"].tolist() == ids[ids != 0].tolist()
    back = np.zeros(lab.shape, np.uint32)
    if len(out):
        back = features.rasterize(
            zip(out.geometry, out["building_id"], strict=True),
            out_shape=lab.shape,
            transform=TRANSFORM,
            dtype="uint32",
        )
    assert np.array_equal(back, lab)
    # roads: any non-zero label is "road"; 4-connected regions come out one each
    classes = np.where(lab != 0, 2, 0).astype(np.uint8)
    roads = vectorize_roads(reader(classes), windows, TRANSFORM, UTM)
    assert roads.geometry.is_valid.all()
    assert len(roads) == ndimage.label(classes == 2)[1]
    back = np.zeros(lab.shape, np.uint8)
    if len(roads):
        back = features.rasterize(roads.geometry, out_shape=lab.shape, transform=TRANSFORM)
    assert np.array_equal(back == 1, classes == 2)


def _gdal_polygons(
    lab: np.ndarray[Any, Any], row_off: int, col_off: int
) -> list[tuple[int, bytes]]:
    """``rasterio.features.shapes`` (GDAL), normalized: the reference of the numpy tracer."""
    shift = Affine.translation(col_off, row_off)
    lab32 = lab.astype(np.int32)
    out = [
        (int(v), shapely.normalize(shapely.geometry.shape(g)).wkb)
        for g, v in features.shapes(lab32, mask=lab32 != 0, connectivity=4, transform=shift)
    ]
    return sorted(out)


def _numpy_polygons(
    lab: np.ndarray[Any, Any], row_off: int, col_off: int
) -> list[tuple[int, bytes]]:
    values, polys = polygonize_labels(lab, row_off, col_off)
    assert shapely.is_valid(polys).all()
    return sorted(zip(values.tolist(), [g.wkb for g in shapely.normalize(polys)], strict=True))


@st.composite
def label_rasters(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    """Small rasters of a few values, noisy enough for holes, islands and corner touches."""
    rows, cols = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_values = draw(st.integers(1, 4))
    fill = draw(st.floats(0.2, 0.95))
    values = rng.integers(1, n_values + 1, (rows, cols))
    return np.where(rng.random((rows, cols)) < fill, values, 0).astype(np.int32)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_rasters(), st.integers(0, 5000), st.integers(0, 5000))
def test_property_numpy_tracer_equals_gdal_polygonize(
    lab: np.ndarray[Any, Any], row_off: int, col_off: int
) -> None:
    # same polygons (once normalized: same rings, same vertices) as GDAL's, all valid
    assert _numpy_polygons(lab, row_off, col_off) == _gdal_polygons(lab, row_off, col_off)


@pytest.mark.parametrize(
    "rows",
    [
        ["111", "101", "110"],  # a hole touching the outline at a corner: exterior + hole
        ["10", "01"],  # one value, two regions touching at a corner: two polygons
        ["01", "10"],
        ["11111", "10001", "10101", "10001", "11111"],  # an island of the value in its hole
        ["1111111", "1000001", "1011101", "1010101", "1011101", "1000001", "1111111"],
        ["110", "101", "011"],  # two holes touching the outline, a diagonal chain
        ["0110", "1001", "1001", "0110"],  # four regions around a hole of background
        ["1212", "2121", "1212"],  # a checkerboard: only corner touches
        ["1111", "1221", "1221", "1111"],  # another value filling the hole
    ],
)
def test_numpy_tracer_corner_cases(rows: list[str]) -> None:
    lab = np.array([[int(c) for c in r] for r in rows], np.int32)
    assert _numpy_polygons(lab, 3, 7) == _gdal_polygons(lab, 3, 7)


@pytest.mark.parametrize("threads", [1, 2])
def test_numpy_tracer_on_the_city(
    city: dict[str, Any], threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import terraseg.vector.polygonize as tracer

    monkeypatch.setattr(tracer, "cpu_threads", lambda: threads)
    monkeypatch.setattr(tracer, "_MIN_PX_THREADED", 1000)
    lab = city["instances"][:700, :900]
    assert _numpy_polygons(lab, 100, 2000) == _gdal_polygons(lab, 100, 2000)
    roads = ndimage.label(city["classes"][:700, :900] == 2)[0]
    assert _numpy_polygons(roads, 0, 0) == _gdal_polygons(roads, 0, 0)
    empty = polygonize_labels(np.zeros((5, 0), np.int32))
    assert len(empty[0]) == len(empty[1]) == 0
    assert len(polygonize_labels(np.zeros((4, 4), np.uint8))[1]) == 0


def test_threads_do_not_change_the_result(
    city: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import terraseg.vector.vectorization as vec

    lab = city["instances"][:1024, :1024]
    windows = chunk_windows(lab.shape, 512)

    def run() -> gpd.GeoDataFrame:
        return vectorize_buildings(reader(lab), windows, TRANSFORM, UTM, min_area_m2=0.0)

    monkeypatch.setattr(vec, "cpu_threads", lambda: 1)
    one = run()
    monkeypatch.setattr(vec, "cpu_threads", lambda: 3)
    monkeypatch.setattr(vec, "_MIN_PER_THREAD", 16)
    three = run()
    assert one["building_id"].tolist() == three["building_id"].tolist()
    assert np.array_equal(one["area_m2"].to_numpy(), three["area_m2"].to_numpy())
    assert [g.wkb for g in one.geometry] == [g.wkb for g in three.geometry]


def test_match_polygons_is_one_to_one() -> None:
    a = shapely.box(0, 0, 10, 10)
    pred = [a, shapely.box(0.5, 0, 10, 10), shapely.box(50, 50, 51, 51)]
    m = match_polygons(pred, [a])
    assert m.pred_index.tolist() == [0] and m.truth_index.tolist() == [0]
    assert m.precision == pytest.approx(1 / 3) and m.recall == 1.0
    assert match_polygons([], [a]).f1 == 0.0
    assert match_polygons([], []).f1 == 1.0
