"""Tests for terraseg.vector.centerlines: road skeletons, chunk joins and the road graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import networkx as nx
import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio import features
from vector_helpers import TRANSFORM, UTM, chunk_windows, reader  # noqa: E402

from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError
from terraseg.vector.centerlines import (
    RoadNetwork,
    build_road_graph,
    extract_centerlines,
    to_networkx,
    trace_skeleton,
)


def precision_recall(pred: Any, truth: Any, tol_m: float) -> tuple[float, float]:
    """Length-weighted share of ``pred`` within ``tol_m`` of ``truth``, and vice versa."""
    p, t = shapely.union_all(pred), shapely.union_all(truth)
    precision = shapely.intersection(p, shapely.buffer(t, tol_m)).length / p.length
    recall = shapely.intersection(t, shapely.buffer(p, tol_m)).length / t.length
    return float(precision), float(recall)


def line_components(lines: Any, snap_m: float = 1.0) -> int:
    """Connected components of lines, joining lines closer than ``snap_m``."""
    arr = np.asarray(lines, object)
    a, b = shapely.STRtree(arr).query(arr, predicate="dwithin", distance=snap_m)
    g = nx.Graph()
    g.add_nodes_from(range(len(arr)))
    g.add_edges_from(zip(a.tolist(), b.tolist(), strict=True))
    return int(nx.number_connected_components(g))


# --------------------------------------------------------------------------- tracing


def test_trace_skeleton_plus_loop_and_isolated() -> None:
    sk = np.zeros((20, 30), bool)
    sk[5, 1:12] = True  # a plus: one junction, four arms
    sk[1:10, 6] = True
    sk[14:18, 20] = sk[14:18, 24] = True  # a loop
    sk[14, 20:25] = sk[17, 20:25] = True
    sk[18, 2] = True  # an isolated pixel
    paths = trace_skeleton(sk)
    arms = [p for p in paths if p[0, 0] < 15]
    loops = [p for p in paths if p[0, 0] >= 15]
    assert len(arms) == 4 and len(loops) == 1
    assert all((6.5, 5.5) in (tuple(p[0]), tuple(p[-1])) for p in arms)  # meet at the junction
    assert sorted(len(p) for p in arms) == [5, 5, 6, 6]
    assert np.array_equal(loops[0][0], loops[0][-1]) and len(loops[0]) == 15
    assert trace_skeleton(np.zeros((4, 4), bool)) == []


def test_trace_skeleton_diagonal_line_is_one_path() -> None:
    sk = np.eye(8, dtype=bool) | np.eye(8, k=1, dtype=bool)  # a thick-ish staircase
    paths = trace_skeleton(sk)
    assert len(paths) == 1
    assert len(paths[0]) == 15


# --------------------------------------------------------------------------- synthetic grid


def grid_city(shape: tuple[int, int] = (300, 420)) -> np.ndarray[Any, Any]:
    """A small road grid: two avenues, three streets, a dead end and a loop."""
    lab = np.zeros(shape, np.uint8)
    lab[60:76, :] = 2  # avenue crossing the scene
    lab[200:212, 30:400] = 2
    for c in (40, 180, 330):
        lab[:, c : c + 10] = 2
    lab[76:150, 250:258] = 2  # a dead end
    lab[240:290, 100:160] = 2  # a square block of road with a courtyard: a loop
    lab[252:278, 112:148] = 0
    lab[212:240, 100:108] = 2  # joins the loop to the lower avenue
    return lab


def test_grid_city_network() -> None:
    lab = grid_city()
    results = {}
    for chunk_px in (64, 100, 420):
        log: list[PixelWindow] = []
        net = extract_centerlines(
            reader(lab, log), chunk_windows(lab.shape, chunk_px), TRANSFORM, UTM
        )
        assert isinstance(net, RoadNetwork)
        assert len(log) == len(chunk_windows(lab.shape, chunk_px))
        g = net.to_networkx()
        assert nx.number_connected_components(g) == 1
        assert net.centerlines.geometry.is_valid.all()
        assert pyproj.CRS(net.centerlines.crs) == pyproj.CRS(UTM)
        assert (net.centerlines["length_m"] > 0).all()
        # two dead ends inside the scene (the stub and the lower avenue's east end); the
        # avenue's west end, 5 m past the first street, is a spur and is pruned
        deg1 = net.nodes[net.nodes["degree"] == 1].geometry
        inner = deg1[deg1.within(shapely.box(*TRANSFORM_BOX(lab.shape)).buffer(-5))]
        assert len(inner) == 2
        results[chunk_px] = net
    ref = results[420].centerlines.geometry.array
    for chunk_px in (64, 100):
        other = results[chunk_px].centerlines.geometry.array
        p, r = precision_recall(other, ref, 0.5)
        assert p == pytest.approx(1.0) and r == pytest.approx(1.0)
        assert results[chunk_px].centerlines["length_m"].sum() == pytest.approx(
            results[420].centerlines["length_m"].sum(), rel=0.005
        )


def TRANSFORM_BOX(shape: tuple[int, int]) -> tuple[float, float, float, float]:  # noqa: N802
    west, north = TRANSFORM.c, TRANSFORM.f
    return (west, north - shape[0] * 0.5, west + shape[1] * 0.5, north)


def test_graph_is_consistent() -> None:
    lab = grid_city()
    net = extract_centerlines(reader(lab), chunk_windows(lab.shape, 128), TRANSFORM, UTM)
    nodes, edges = net.nodes, net.edges
    assert set(nodes.columns) == {"node_id", "degree", "geometry"}
    assert set(edges.columns) == {"u", "v", "length_m", "geometry"}
    pts = dict(zip(nodes["node_id"], nodes.geometry, strict=True))
    for u, v, geom in zip(edges["u"], edges["v"], edges.geometry, strict=True):
        assert shapely.Point(geom.coords[0]).equals(pts[u])
        assert shapely.Point(geom.coords[-1]).equals(pts[v])
    g = to_networkx(nodes, edges)
    assert g.number_of_nodes() == len(nodes) and g.number_of_edges() == len(edges)
    assert dict(g.degree()) == dict(zip(nodes["node_id"], nodes["degree"], strict=True))
    node = next(iter(g.nodes(data=True)))[1]
    assert {"x", "y"} <= set(node)
    assert all(d["length"] > 0 for _, _, d in g.edges(data=True))
    assert sum(d["length"] for _, _, d in g.edges(data=True)) == pytest.approx(
        net.centerlines["length_m"].sum()
    )
    # no degree-2 node: lines are merged between junctions and dead ends (loops aside)
    assert (nodes["degree"] != 2).all() or (edges["u"] == edges["v"]).any()


def test_pruning_removes_short_spurs() -> None:
    lab = np.zeros((120, 200), np.uint8)
    lab[50:70, 10:190] = 2
    lab[40:50, 100:104] = 2  # a 5 m stub: pruned at prune_m=12, kept at prune_m=2
    windows = chunk_windows(lab.shape, 64)
    pruned = extract_centerlines(reader(lab), windows, TRANSFORM, UTM, prune_m=12)
    kept = extract_centerlines(reader(lab), windows, TRANSFORM, UTM, prune_m=2)
    assert len(pruned.centerlines) == 1
    assert len(kept.centerlines) == 3
    # the road reaches the ends of its pixels within a road half width
    assert pruned.centerlines["length_m"].sum() == pytest.approx(90 - 10, abs=6)


def test_geographic_lengths_in_metres() -> None:
    utm = pyproj.CRS(UTM)
    to_geo = pyproj.Transformer.from_crs(utm, "EPSG:4326", always_xy=True)
    road_m = shapely.LineString([(500_010, 5_000_050), (500_150, 5_000_120)]).buffer(4)
    road_geo = shapely.transform(
        road_m, lambda c: np.column_stack(to_geo.transform(c[:, 0], c[:, 1]))
    )
    lon0, lat0 = to_geo.transform(500_000, 5_000_160)
    lon1, lat1 = to_geo.transform(500_160, 5_000_000)
    n = 320
    transform = Affine((lon1 - lon0) / n, 0, lon0, 0, (lat1 - lat0) / n, lat0)
    lab = features.rasterize([(road_geo, 2)], out_shape=(n, n), transform=transform, dtype="uint8")
    net = extract_centerlines(reader(lab), chunk_windows(lab.shape, 100), transform, "EPSG:4326")
    assert pyproj.CRS(net.centerlines.crs) == pyproj.CRS("EPSG:4326")
    assert len(net.centerlines) == 1
    true_len = shapely.LineString([(500_010, 5_000_050), (500_150, 5_000_120)]).length
    # the skeleton runs into the rounded ends (up to a half width past the axis ends)
    assert net.centerlines["length_m"].iloc[0] == pytest.approx(true_len, abs=8)
    in_utm = net.centerlines.to_crs(utm).length.iloc[0]
    assert in_utm == pytest.approx(net.centerlines["length_m"].iloc[0], rel=0.005)


def test_empty_and_bad_arguments() -> None:
    lab = np.zeros((50, 50), np.uint8)
    net = extract_centerlines(reader(lab), chunk_windows(lab.shape, 20), TRANSFORM, UTM)
    assert len(net.centerlines) == len(net.nodes) == len(net.edges) == 0
    assert net.to_networkx().number_of_nodes() == 0
    with pytest.raises(ConfigError, match="halo_px"):
        extract_centerlines(reader(lab), chunk_windows(lab.shape, 20), TRANSFORM, UTM, halo_px=-1)
    nodes, edges = build_road_graph(gpd.GeoSeries([], crs=UTM))
    assert len(nodes) == len(edges) == 0


# --------------------------------------------------------------------------- synthetic city


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    synthetic = pytest.importorskip("terraseg.synthetic")
    root = tmp_path_factory.getbasetemp() / "city-2048-0"
    image = root / "city.tif"
    if not image.exists():
        root.mkdir(parents=True, exist_ok=True)
        synthetic.make_city(image, size_px=2048, seed=0)
    stem = Path(root / "city")
    with rasterio.open(f"{stem}.truth.tif") as ds:
        classes = ds.read(1)
        transform, crs = ds.transform, ds.crs
    lines = gpd.read_file(f"{stem}.truth.gpkg", layer="road_centerlines")
    return {"classes": classes, "transform": transform, "crs": crs, "lines": lines}


def test_city_centerlines_against_truth(city: dict[str, Any]) -> None:
    truth = city["lines"].geometry.array
    nets = {}
    for chunk_px in (300, 512):
        windows = chunk_windows(city["classes"].shape, chunk_px)
        net = extract_centerlines(reader(city["classes"]), windows, city["transform"], city["crs"])
        precision, recall = precision_recall(net.centerlines.geometry.array, truth, 2.0)
        assert precision >= 0.9 and recall >= 0.9
        assert nx.number_connected_components(net.to_networkx()) == line_components(truth)
        assert pyproj.CRS(net.centerlines.crs) == pyproj.CRS(city["crs"])
        nets[chunk_px] = net
    a, b = (nets[c].centerlines for c in (300, 512))
    p, r = precision_recall(a.geometry.array, b.geometry.array, 0.5)
    assert p >= 0.99 and r >= 0.99
    assert a["length_m"].sum() == pytest.approx(b["length_m"].sum(), rel=0.005)
