"""Tests for terraseg.core.metric: true metres in distorted CRSs (Web Mercator and others).

The reference is the geodesic area/length on the WGS 84 ellipsoid (pyproj.Geod),
which no projection distorts; UTM is within 0.1 % of it near its central meridian.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import shapely
import shapely.affinity
from affine import Affine

from terraseg.core.metric import (
    MAX_SCALE_ERROR,
    MetricFrame,
    local_metric_crs,
    scale_error,
)
from terraseg.vector.regularize import regularize_buildings

GEOD = pyproj.Geod(ellps="WGS84")
LATITUDES = {0.0: {32633, 32733}, 37.0: {32633}, 60.0: {32633}, -45.0: {32733}}
"""Latitude -> the UTM zone the frame must measure in at 15°E (N or S on the equator).
Even at the equator Web Mercator is 0.67 % off north-south on the WGS 84 ellipsoid
(it is a spherical projection)."""


def _geodesic(geom: shapely.Geometry, crs: str) -> float:
    """Area (polygon) or length (line) on the ellipsoid of a geometry in ``crs``."""
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    dense = shapely.segmentize(geom, 0.5)
    ll = shapely.transform(dense, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    area, length = GEOD.geometry_area_perimeter(ll)
    return abs(area) if isinstance(geom, shapely.Polygon) else float(GEOD.geometry_length(ll))


def _mercator_scene(lat: float, lon: float = 15.0, px_m: float = 0.5) -> Affine:
    """Transform of a Web Mercator scene whose pixels are about ``px_m`` on the ground."""
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)
    step = px_m / np.cos(np.radians(lat))
    return Affine(step, 0.0, x, 0.0, -step, y)


@pytest.mark.parametrize("lat", sorted(LATITUDES))
def test_web_mercator_areas_and_lengths_are_true_metres(lat: float) -> None:
    transform = _mercator_scene(lat)
    frame = MetricFrame.from_scene(transform, "EPSG:3857", (1000, 1000))
    assert frame.is_geographic  # measured through the UTM zone, not in its own axes
    square_px = shapely.box(100, 100, 180, 180)  # 80 px: about 40 m on the ground
    line_px = shapely.LineString([(100, 500), (900, 520)])
    [square_crs, line_crs] = frame.px_to_crs(np.array([square_px, line_px], object))
    [square_m, line_m] = frame.px_to_metric(np.array([square_px, line_px], object))
    assert shapely.area(square_m) == pytest.approx(_geodesic(square_crs, "EPSG:3857"), rel=2e-3)
    assert shapely.length(line_m) == pytest.approx(_geodesic(line_crs, "EPSG:3857"), rel=2e-3)
    assert frame.pixel_m == pytest.approx(0.5, rel=5e-3)
    # back to the scene CRS: the round trip is exact to the millimetre
    back = frame.metric_to_crs(np.array([square_m], object))[0]
    assert shapely.equals_exact(back, square_crs, tolerance=1e-3)
    # what Web Mercator's own axes would say: 1/cos²(lat) times the area, and more
    own_axes = shapely.area(square_crs) / shapely.area(square_m)
    assert own_axes == pytest.approx(1 / np.cos(np.radians(lat)) ** 2, rel=0.01)
    bounds = shapely.bounds(square_crs)
    assert local_metric_crs("EPSG:3857", tuple(bounds)).to_epsg() in LATITUDES[lat]


def test_scale_error_of_common_crss() -> None:
    merc = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    # Web Mercator is spherical: 0.67 % north-south at the equator, areas x 3.99 at 60°N
    assert scale_error("EPSG:3857", *merc.transform(15.0, 0.0)) == pytest.approx(0.0067, abs=1e-4)
    assert scale_error("EPSG:3857", *merc.transform(15.0, 60.0)) == pytest.approx(2.99, abs=0.01)
    assert scale_error("EPSG:2263", 985_000.0, 200_000.0) < 1e-4  # feet do not count
    assert scale_error("EPSG:32633", 500_000.0, 5_000_000.0) < MAX_SCALE_ERROR  # 0.9996
    assert scale_error("EPSG:4326", 15.0, 45.0) == 0.0


def test_conformal_projection_far_from_its_centre_is_measured_in_local_utm() -> None:
    """UTM zone 33 used 10° west of its central meridian: scale 1.007 (areas +1.5 %)."""
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True).transform(5.0, 45.0)
    assert scale_error("EPSG:32633", x, y) > MAX_SCALE_ERROR
    transform = Affine(0.5, 0.0, x, 0.0, -0.5, y)
    frame = MetricFrame.from_scene(transform, "EPSG:32633", (400, 400))
    assert frame.is_geographic  # measured through zone 31, not in its own axes
    square_crs = frame.px_to_crs(np.array([shapely.box(0, 0, 200, 200)], object))[0]
    area = shapely.area(frame.px_to_metric(np.array([shapely.box(0, 0, 200, 200)], object)))[0]
    assert area == pytest.approx(_geodesic(square_crs, "EPSG:32633"), rel=2e-3)
    assert abs(shapely.area(square_crs) / area - 1) > 0.01  # its own axes would be 1.5 % off
    assert local_metric_crs("EPSG:32633", shapely.bounds(square_crs)).to_epsg() == 32631
    # near its central meridian the zone measures itself, through the fast affine path
    near = MetricFrame.from_scene(Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000), "EPSG:32633",
                                  (400, 400))  # fmt: skip
    assert not near.is_geographic


def test_equal_area_projection_with_stretched_lengths_is_measured_in_utm() -> None:
    """EPSG:6933 keeps areas but stretches east-west lengths by 1.7 at 60°N."""
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:6933", always_xy=True).transform(15.0, 60.0)
    frame = MetricFrame.from_scene(Affine(1.0, 0, x, 0, -1.0, y), "EPSG:6933", (100, 100))
    line = np.array([shapely.LineString([(0, 50), (100, 50)])], object)
    length = shapely.length(frame.px_to_metric(line))[0]
    assert length == pytest.approx(_geodesic(frame.px_to_crs(line)[0], "EPSG:6933"), rel=2e-3)


def test_feet_crs_near_its_centre_is_scaled_not_reprojected() -> None:
    frame = MetricFrame.from_scene(Affine(2.0, 0, 985_000, 0, -2.0, 200_000), "EPSG:2263", (10, 10))
    assert not frame.is_geographic
    assert frame.pixel_m == pytest.approx(2 * 0.3048006, rel=1e-5)


def test_from_bounds_measures_vector_data_in_crs_units() -> None:
    merc = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x, y = merc.transform(15.0, 60.0)
    box = shapely.box(x, y, x + 100, y + 100)
    frame = MetricFrame.from_bounds("EPSG:3857", shapely.bounds(box))
    area = shapely.area(frame.crs_to_metric(np.array([box], object)))[0]
    assert area == pytest.approx(_geodesic(box, "EPSG:3857"), rel=2e-3)  # about 2500, not 10 000
    empty = MetricFrame.from_bounds("EPSG:32633", (np.nan, np.nan, np.nan, np.nan))
    assert empty.crs_to_metric(np.array([], object)).size == 0


def test_regularize_buildings_area_in_web_mercator_is_true_m2() -> None:
    merc = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x, y = merc.transform(10.75, 60.0)
    # a 20 x 12 m building with a pixel stair, drawn in Web Mercator units (2 per metre)
    poly = shapely.Polygon([(0, 0), (40, 0), (40, 24), (20.5, 24), (20.5, 24.6), (0, 24.6)])
    gdf = gpd.GeoDataFrame({"area_m2": [0.0]}, geometry=[shapely.affinity.translate(poly, x, y)],
                           crs="EPSG:3857")  # fmt: skip
    out = regularize_buildings(gdf, tolerance_m=0.5)
    truth = _geodesic(out.geometry.iloc[0], "EPSG:3857")
    assert out["area_m2"].iloc[0] == pytest.approx(truth, rel=5e-3)
    assert 230 < out["area_m2"].iloc[0] < 250  # about 20 x 12 m, not 4 times that


# --------------------------------------------------------------------------- callers


def test_evaluate_buffers_and_min_area_are_true_metres_in_web_mercator(tmp_path: Any) -> None:
    """At 60°N one Web Mercator unit is 0.5 m: a 2 m buffer is 4 units, 5 m² is 20 units²."""
    from terraseg.evaluate.scores import evaluate

    x, y = pyproj.Transformer.from_crs(4326, 3857, always_xy=True).transform(10.75, 60.0)
    road = shapely.LineString([(x, y), (x + 400, y)])  # 200 m
    moved = shapely.affinity.translate(road, 0, 3.0)  # 1.5 m on the ground: inside 2 m
    house = shapely.box(x, y + 50, x + 20, y + 70)  # 10 x 10 m = 100 m²
    shed = shapely.box(x + 100, y + 50, x + 104, y + 53)  # 2 x 1.5 m = 3 m² (12 units²)
    for name, line, houses in (("t", road, [house, shed]), ("p", moved, [house])):
        gpd.GeoDataFrame(geometry=[line], crs=3857).to_file(tmp_path / f"{name}.gpkg",
                                                            layer="road_centerlines")
        gpd.GeoDataFrame(geometry=houses, crs=3857).to_file(tmp_path / f"{name}.gpkg",
                                                            layer="buildings")
    report = evaluate(tmp_path / "p.gpkg", tmp_path / "t.gpkg", buffer_m=2.0, min_area_m2=5.0)
    assert report.metric_crs is not None and report.metric_crs.to_epsg() == 32632
    assert report.roads is not None and report.roads.f1 == pytest.approx(1.0)
    assert report.roads.truth_length_m == pytest.approx(200.0, rel=0.01)
    assert report.buildings is not None and (report.buildings.n_truth, report.buildings.f1) == (1, 1.0)


def test_scene_gsd_in_web_mercator_is_ground_metres(tmp_path: Any) -> None:
    import rasterio

    from terraseg.io.scene import open_scene

    for lat in (0.0, 60.0):
        path = tmp_path / f"m{lat:g}.tif"
        with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=1, dtype="uint8",
                           crs="EPSG:3857", transform=_mercator_scene(lat)) as ds:  # fmt: skip
            ds.write(np.zeros((1, 64, 64), np.uint8))
        assert open_scene(path).gsd_m == pytest.approx(0.5, rel=0.01)
