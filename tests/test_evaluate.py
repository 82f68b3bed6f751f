"""Tests for terraseg.evaluate.scores (buildings, roads, APLS, pixels) and ``terraseg evaluate``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from shapely import LineString, box

from terraseg.errors import ConfigError, CRSMismatchError, SceneReadError
from terraseg.evaluate.apls import apls, lines_to_graph, path_length_similarity
from terraseg.evaluate.scores import (
    EvaluationWarning,
    confusion_matrix,
    evaluate,
    score_buildings,
    score_pixels,
    score_roads,
)

UTM = "EPSG:32633"
X0, Y0 = 478_150.0, 4_647_680.0  # a point inside UTM zone 33N
TERRASEG = Path(sys.executable).with_name("terraseg")


def at(geom: shapely.Geometry) -> shapely.Geometry:
    """``geom`` moved from a local (0, 0) origin into UTM 33N."""
    return shapely.transform(geom, lambda xy: xy + [X0, Y0])


def write(path: Path, geoms: list[shapely.Geometry], crs: str = UTM, layer: str | None = None):
    gdf = gpd.GeoDataFrame({"id": np.arange(len(geoms))}, geometry=geoms, crs=crs)
    gdf.to_file(path, layer=layer, engine="pyogrio")
    return path


# --------------------------------------------------------------------------- buildings


def test_buildings_perfect_match() -> None:
    polys = [box(0, 0, 10, 10), box(20, 0, 28, 6), box(0, 30, 5, 40)]
    s = score_buildings(polys, polys)
    assert (s.tp, s.fp, s.fn) == (3, 0, 0)
    assert s.precision == s.recall == s.f1 == s.mean_iou == 1.0


def test_buildings_shifted() -> None:
    truth = [box(0, 0, 10, 10)]
    # shifted 2 m: intersection 8 x 10 = 80, union 100 + 100 - 80 = 120 -> IoU 2/3
    s = score_buildings([box(2, 0, 12, 10)], truth)
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    assert s.mean_iou == pytest.approx(2 / 3)
    assert s.f1 == 1.0
    # shifted 4 m: 60 / 140 = 0.43 < 0.5 -> a false positive and a false negative
    s = score_buildings([box(4, 0, 14, 10)], truth)
    assert (s.tp, s.fp, s.fn) == (0, 1, 1)
    assert s.precision == s.recall == s.f1 == s.mean_iou == 0.0


def test_buildings_split_and_merged() -> None:
    whole = box(0, 0, 10, 10)
    left, right = box(0, 0, 6, 10), box(6, 0, 10, 10)  # IoU with whole: 0.6 and 0.4
    # one true building split into two predictions: at most one TP, the other an FP
    s = score_buildings([left, right], [whole])
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert (s.precision, s.recall) == (0.5, 1.0)
    assert s.f1 == pytest.approx(2 / 3)
    assert s.mean_iou == pytest.approx(0.6)
    # two true buildings merged into one prediction: one TP, one FN
    s = score_buildings([whole], [left, right])
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    # a merge of two halves matches neither (IoU 0.5 each is a match; 0.4 is not)
    s = score_buildings([box(0, 0, 10, 10)], [box(0, 0, 4, 10), box(6, 0, 10, 10)])
    assert (s.tp, s.fp, s.fn) == (0, 1, 2)


def test_buildings_one_to_one_greedy_by_iou() -> None:
    # both predictions overlap the truth; the better one (IoU 0.9) wins
    s = score_buildings([box(0, 0, 10, 8), box(0, 0, 10, 9)], [box(0, 0, 10, 10)])
    assert (s.tp, s.fp) == (1, 1)
    assert s.mean_iou == pytest.approx(0.9)


def test_buildings_empty_sides() -> None:
    polys = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    s = score_buildings([], polys)  # empty prediction
    assert (s.tp, s.fn, s.precision, s.recall, s.f1, s.mean_iou) == (0, 2, 0.0, 0.0, 0.0, 0.0)
    s = score_buildings(polys, [])  # empty truth (SpaceNet: F1 = 0)
    assert (s.fp, s.precision, s.recall, s.f1) == (2, 0.0, 0.0, 0.0)
    s = score_buildings([], [])  # both empty: a perfect score
    assert (s.precision, s.recall, s.f1, s.mean_iou) == (1.0, 1.0, 1.0, 1.0)


def test_buildings_min_area_applies_to_both_sides() -> None:
    truth = [box(0, 0, 10, 10), box(50, 50, 51, 51)]  # a 1 m² speck in the truth
    pred = [box(0, 0, 10, 10), box(80, 80, 81, 81.5)]  # and a 1.5 m² one predicted
    assert score_buildings(pred, truth).f1 == 0.5
    s = score_buildings(pred, truth, min_area_m2=2.0)
    assert (s.n_pred, s.n_truth, s.f1) == (1, 1, 1.0)
    with pytest.raises(ConfigError, match="min_area_m2"):
        score_buildings(pred, truth, min_area_m2=-1)


# --------------------------------------------------------------------------- roads


def test_road_length_metrics() -> None:
    truth = [LineString([(0, 0), (100, 0)])]
    s = score_roads([LineString([(0, 1), (100, 1)])], truth)  # 1 m off: inside 2 m
    assert (s.precision, s.recall, s.f1) == pytest.approx((1.0, 1.0, 1.0))
    s = score_roads([LineString([(0, 3), (100, 3)])], truth)  # 3 m off: outside
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    assert s.truth_length_m == s.pred_length_m == pytest.approx(100)
    # half the road: all of it is right; the truth is covered over 50 m + the 2 m cap
    s = score_roads([LineString([(0, 0), (50, 0)])], truth)
    assert s.precision == pytest.approx(1.0)
    assert s.recall == pytest.approx(0.52)
    assert s.f1 == pytest.approx(2 * 0.52 / 1.52)
    # a wider buffer catches the 3 m offset
    assert score_roads([LineString([(0, 3), (100, 3)])], truth, buffer_m=4).f1 == pytest.approx(1)


def test_road_empty_sides() -> None:
    line = [LineString([(0, 0), (100, 0)])]
    assert score_roads([], line).f1 == 0.0
    s = score_roads(line, [])
    assert (s.f1, s.apls.apls) == (0.0, 0.0)
    s = score_roads([], [])
    assert (s.precision, s.recall, s.f1, s.apls.apls) == (1.0, 1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- APLS

A, B, C = (0.0, 0.0), (100.0, 0.0), (200.0, 0.0)


def test_apls_identical_graph_is_one() -> None:
    grid = [LineString([(x, 0), (x, 300)]) for x in (0, 150, 300)]
    grid += [LineString([(0, y), (300, y)]) for y in (0, 150, 300)]
    g = lines_to_graph(grid)
    # T junctions (line ends on another line) split lines; the X crossing at (150, 150),
    # where no line ends, is an overpass: 8 nodes
    assert g.number_of_nodes() == 8
    r = apls(g, g)  # control nodes every 50 m
    assert r.apls == r.truth_to_pred == r.pred_to_truth == 1.0
    assert r.n_pairs_truth > 100
    # the same roads drawn as different pieces (split at other points) give 1.0 too
    pieces = [LineString([(0, 0), (0, 40)]), LineString([(0, 40), (0, 300)]), *grid[1:]]
    assert apls(g, lines_to_graph(pieces)).apls == pytest.approx(1.0)


def test_apls_missing_edge_disconnects_a_node() -> None:
    # truth A-B-D with D = (100, 100); the prediction lacks B-D
    d = (100.0, 100.0)
    truth = lines_to_graph([LineString([A, B]), LineString([B, d])])
    pred = lines_to_graph([LineString([A, B])])
    r = apls(truth, pred, spacing_m=1000)  # control nodes: the graph nodes only
    # truth -> pred: pairs (A,B) cost 0; (A,D), (B,D): D has no snap -> cost 1 each
    assert r.truth_to_pred == pytest.approx(1 - 2 / 3)
    # pred -> truth: the one pair (A,B) is exact
    assert r.pred_to_truth == 1.0
    assert r.apls == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # = 0.5
    assert (r.n_pairs_truth, r.n_pairs_pred) == (3, 1)


def test_apls_detour_fifty_percent_longer() -> None:
    # truth A-B-C straight; prediction A-B straight, B-C by a 150 m detour
    h = math.sqrt(50**2 - 25**2)  # 25 + 50 + 25 m horizontally -> 50 + 50 + 50 m long
    detour = LineString([B, (125, h), (175, h), C])
    assert detour.length == pytest.approx(150)
    truth = lines_to_graph([LineString([A, B]), LineString([B, C])])
    pred = lines_to_graph([LineString([A, B]), detour])
    r = apls(truth, pred, spacing_m=1000)
    # truth -> pred: (A,B) 0; (A,C) |200-250|/200 = 1/4; (B,C) |100-150|/100 = 1/2
    assert r.truth_to_pred == pytest.approx(1 - (0 + 1 / 4 + 1 / 2) / 3)  # 3/4
    # pred -> truth: (A,B) 0; (A,C) 50/250 = 1/5; (B,C) 50/150 = 1/3
    assert r.pred_to_truth == pytest.approx(1 - (1 / 5 + 1 / 3) / 3)  # 37/45
    assert r.apls == pytest.approx(222 / 283)  # harmonic mean of 3/4 and 37/45


def test_apls_sampled_pairs_are_seeded() -> None:
    grid = [LineString([(x, 0), (x, 1000)]) for x in range(0, 1001, 250)]
    grid += [LineString([(0, y), (1000, y)]) for y in range(0, 1001, 250)]
    truth = lines_to_graph(grid)
    pred = lines_to_graph(grid[:-1])  # one street missing
    c1, n1 = path_length_similarity(truth, pred, max_pairs=400, seed=1)
    c2, n2 = path_length_similarity(truth, pred, max_pairs=400, seed=1)
    assert (c1, n1) == (c2, n2)
    assert 0 < c1 < 1 and 0 < n1 <= 400
    full, n_full = path_length_similarity(truth, pred, max_pairs=10**6)
    assert n_full > 10_000 and abs(full - c1) < 0.1
    with pytest.raises(ConfigError, match="spacing_m"):
        apls(truth, pred, spacing_m=0)


# --------------------------------------------------------------------------- pixels


def write_classes(path: Path, arr: np.ndarray, *, transform: Affine | None = None, crs=UTM):
    transform = transform or Affine(0.5, 0, X0, 0, -0.5, Y0)
    with rasterio.open(
        path, "w", driver="GTiff", height=arr.shape[0], width=arr.shape[1], count=1,
        dtype="uint8", crs=crs, transform=transform, nodata=255,
    ) as ds:  # fmt: skip
        ds.write(arr.astype(np.uint8), 1)
    return path


def test_confusion_matrix_ignores_nodata() -> None:
    cm = confusion_matrix(np.array([1, 1, 2, 255, 0]), np.array([1, 2, 2, 1, 255]))
    assert cm.sum() == 3 and cm[1, 1] == 1 and cm[2, 1] == 1 and cm[2, 2] == 1
    with pytest.raises(ConfigError, match="0-255"):
        confusion_matrix(np.array([300]), np.array([1]))


def test_pixel_metrics_hand_computed(tmp_path: Path) -> None:
    truth = np.zeros((8, 10), np.uint8)
    truth[0:4, 0:4] = 1  # 16 building px
    truth[6, :] = 2  # 10 road px
    truth[7, 9] = 255  # nodata
    pred = truth.copy()
    pred[0:4, 3] = 0  # 4 building px missed
    pred[4, 0:2] = 1  # 2 building px too many
    pred[7, 0] = 255  # nodata in the prediction
    pred[7, 9] = 1  # under truth nodata: ignored
    t = write_classes(tmp_path / "t.tif", truth)
    p = write_classes(tmp_path / "p.tif", pred)
    s = score_pixels(p, t)
    assert (s.n_pixels, s.n_ignored) == (78, 2)
    b = s.per_class()[1]
    # TP 12, FP 2, FN 4: IoU 12/18, precision 12/14, recall 12/16
    assert b["iou"] == pytest.approx(12 / 18)
    assert b["precision"] == pytest.approx(12 / 14)
    assert b["recall"] == pytest.approx(12 / 16)
    assert b["f1"] == pytest.approx(2 * 12 / (2 * 12 + 2 + 4))
    assert s.per_class()[2]["iou"] == 1.0
    assert s.classes == (0, 1, 2)
    # streamed in 3 x 3 windows: the same matrix
    np.testing.assert_array_equal(score_pixels(p, t, window_px=3).confusion, s.confusion)
    via_files = evaluate(p, t).pixels
    assert via_files is not None
    np.testing.assert_array_equal(via_files.confusion, s.confusion)


def test_pixel_grid_mismatch(tmp_path: Path) -> None:
    arr = np.zeros((8, 10), np.uint8)
    t = write_classes(tmp_path / "t.tif", arr)
    moved = write_classes(tmp_path / "m.tif", arr, transform=Affine(0.5, 0, X0 + 1, 0, -0.5, Y0))
    with pytest.raises(ConfigError, match="not on the same grid"):
        score_pixels(moved, t)
    with pytest.raises(ConfigError, match="not on the same grid"):
        score_pixels(write_classes(tmp_path / "s.tif", arr[:7]), t)
    with pytest.raises(CRSMismatchError, match="EPSG:32632"):
        score_pixels(write_classes(tmp_path / "c.tif", arr, crs="EPSG:32632"), t)


# --------------------------------------------------------------------------- files


def test_crs_handling_geographic_truth(tmp_path: Path) -> None:
    truth = [at(box(0, 0, 10, 10)), at(box(30, 0, 42, 8)), at(box(0, 40, 6, 46))]
    pred = [at(box(1, 0, 11, 10)), at(box(30, 1, 42, 9)), at(box(60, 60, 70, 70))]
    roads_t = [at(LineString([(0, 20), (200, 20)]))]
    roads_p = [at(LineString([(0, 21), (150, 21)]))]
    utm_t, utm_p = tmp_path / "t_utm.gpkg", tmp_path / "p_utm.gpkg"
    write(utm_t, truth, layer="buildings")
    write(utm_t, roads_t, layer="road_centerlines")
    write(utm_p, pred, layer="buildings")
    write(utm_p, roads_p, layer="road_centerlines")
    geo_t = tmp_path / "t_4326.gpkg"
    write(geo_t, list(gpd.GeoSeries(truth, crs=UTM).to_crs(4326)), "EPSG:4326", "buildings")
    lines = list(gpd.GeoSeries(roads_t, crs=UTM).to_crs(4326))
    write(geo_t, lines, "EPSG:4326", "road_centerlines")
    a = evaluate(utm_p, utm_t)
    b = evaluate(utm_p, geo_t)
    assert b.metric_crs is not None and b.metric_crs.to_epsg() == 32633  # local UTM
    assert a.buildings is not None and b.buildings is not None
    assert (b.buildings.tp, b.buildings.fp, b.buildings.fn) == (2, 1, 1)
    for k, v in a.to_dict()["buildings"].items():
        assert b.to_dict()["buildings"][k] == pytest.approx(v, abs=1e-6)
    for k, v in a.to_dict()["roads"].items():
        assert b.to_dict()["roads"][k] == pytest.approx(v, abs=1e-4)
    assert a.roads is not None and a.roads.precision == pytest.approx(1.0)
    # 150 m, plus the round end of the 2 m buffer 1 m away: sqrt(2² - 1²) m
    assert a.roads.recall == pytest.approx((150 + math.sqrt(3)) / 200, abs=1e-4)


def test_layers_invalid_and_empty(tmp_path: Path) -> None:
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # invalid
    t = write(tmp_path / "t.geojson", [at(box(0, 0, 10, 10)), at(bowtie)])
    p = write(tmp_path / "p.fgb", [at(box(0, 0, 10, 10))])
    with pytest.warns(EvaluationWarning, match="repaired 1 invalid"):
        r = evaluate(p, t, task="buildings")
    assert r.buildings is not None and r.buildings.n_truth == 2
    assert any("repaired 1 invalid" in w for w in r.warnings)
    with pytest.raises(ConfigError, match=r"no layer 'x'; its layers: t \(Polygon\)"):
        evaluate(p, t, truth_layer="x")
    with pytest.raises(SceneReadError, match="file not found"):
        evaluate(tmp_path / "nope.gpkg", t)
    empty = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=UTM)).to_file(empty, layer="buildings")
    with pytest.warns(EvaluationWarning, match="has no buildings"):
        r = evaluate(p, empty, task="buildings")
    assert r.buildings is not None and (r.buildings.f1, r.buildings.fp) == (0.0, 1)
    with pytest.warns(EvaluationWarning):
        r = evaluate(empty, empty, task="buildings")
    assert r.buildings is not None and r.buildings.f1 == 1.0
    with pytest.raises(ConfigError, match="is a raster but"):
        evaluate(write_classes(tmp_path / "c.tif", np.zeros((2, 2))), t)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.synthetic import make_city

    path = tmp_path_factory.mktemp("evalcity") / "c.tif"
    make_city(path, size_px=512, seed=3)
    return path


def test_synthetic_truth_against_itself(city: Path) -> None:
    gpkg, tif = city.with_name("c.truth.gpkg"), city.with_name("c.truth.tif")
    r = evaluate(gpkg, gpkg)
    assert r.tasks == ("buildings", "roads")
    assert r.layers == {
        "buildings": ("buildings", "buildings"),
        "roads": ("road_centerlines", "road_centerlines"),
    }
    assert r.buildings is not None and r.roads is not None
    assert r.buildings.n_truth > 10
    for v in (r.buildings.precision, r.buildings.recall, r.buildings.f1, r.buildings.mean_iou):
        assert v == pytest.approx(1.0)
    assert (r.roads.precision, r.roads.recall, r.roads.f1) == pytest.approx((1.0, 1.0, 1.0))
    assert r.roads.apls.apls == 1.0 and r.roads.apls.n_pairs_truth > 50
    assert r.errors is not None and len(r.errors) == 0
    px = evaluate(tif, tif).pixels
    assert px is not None and px.classes == (0, 1, 2)
    assert px.accuracy == px.mean_iou == 1.0


def test_cli_json_and_figure(city: Path, tmp_path: Path) -> None:
    gpkg = city.with_name("c.truth.gpkg")
    b = gpd.read_file(gpkg, layer="buildings")
    b = b.set_geometry(b.geometry.translate(3.0, 0.0)).iloc[: len(b) - 2]  # shift, drop 2
    pred = tmp_path / "pred.gpkg"
    b.to_file(pred, layer="buildings")
    out = subprocess.run(
        [TERRASEG, "evaluate", pred, gpkg, "--json", "--min-area-m2", "5"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["tasks"] == ["buildings"]
    bd = report["buildings"]
    assert bd["fn"] >= 2 and 0 < bd["f1"] < 1 and bd["min_area_m2"] == 5
    assert bd["tp"] + bd["fn"] == bd["n_truth"]
    pytest.importorskip("matplotlib")
    fig = tmp_path / "errors.png"
    out = subprocess.run(
        [TERRASEG, "evaluate", pred, gpkg, "--figure", fig, "--image", city],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Buildings" in out.stdout and fig.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_one_line_exit_2(city: Path) -> None:
    gpkg = city.with_name("c.truth.gpkg")
    out = subprocess.run(
        [TERRASEG, "evaluate", gpkg, gpkg, "--truth-layer", "nope"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terraseg: error:")
    assert "buildings (Polygon), roads (MultiPolygon), road_centerlines (LineString)" in lines[0]
