"""The notebook API: ``terraseg.predict``, ``terraseg.vectorize`` and ``terraseg.run``.

xarray in, GeoDataFrames out, in the scene CRS. Uses the built-in ``cheap``
model (no weights, fast) on the shared synthetic city of ``conftest.py``
(700 x 1100 px, UTM 33N, non-zero origin, not a multiple of the tile size).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

import terraseg
from terraseg.api import vectorize
from terraseg.config import (
    ClusterConfig,
    InputsConfig,
    ModelsConfig,
    OutputsConfig,
    TilingConfig,
    Workflow,
)
from terraseg.core.grid import PixelWindow
from terraseg.errors import CRSError, TerrasegError
from terraseg.io.scene import Scene
from terraseg.synthetic import CityScene

MODEL = "cheap"
TILE_PX, OVERLAP_PX = 256, 32
WINDOW = (130, 270, 300, 410)  # (row_off, col_off, height, width): off the tile lattice
LAYERS = {"buildings", "roads", "road_centerlines", "road_nodes", "road_edges"}


def _predict(source: Any, **kwargs: Any) -> xr.DataArray:
    return terraseg.predict(source, model=MODEL, tile_px=TILE_PX, overlap_px=OVERLAP_PX, **kwargs)


@pytest.fixture(scope="module")
def scene(city_scene: CityScene) -> Scene:
    return terraseg.open_scene(city_scene.image)


@pytest.fixture(scope="module")
def full(scene: Scene) -> xr.DataArray:
    """Labels of the whole scene."""
    return _predict(scene)


@pytest.fixture(scope="module")
def windowed(scene: Scene) -> xr.DataArray:
    """Labels of :data:`WINDOW`."""
    return _predict(scene, window=WINDOW)


def _inner(window: PixelWindow, margin: int) -> PixelWindow:
    return PixelWindow(
        window.row_off + margin, window.col_off + margin,
        window.height - 2 * margin, window.width - 2 * margin,
    )


# ----------------------------------------------------------------------------- predict


def test_predict_window_is_a_georeferenced_dataarray(
    scene: Scene, windowed: xr.DataArray
) -> None:
    row_off, col_off, height, width = WINDOW
    assert windowed.dims == ("y", "x")
    assert windowed.shape == (height, width)
    assert windowed.dtype == np.uint8
    assert windowed.rio.crs == scene.crs
    # coordinates are the scene's pixel centres of the window
    xs = [(scene.transform * (col + 0.5, row_off + 0.5))[0]
          for col in range(col_off, col_off + width)]
    ys = [(scene.transform * (col_off + 0.5, row + 0.5))[1]
          for row in range(row_off, row_off + height)]
    np.testing.assert_allclose(windowed.x.values, xs)
    np.testing.assert_allclose(windowed.y.values, ys)
    assert windowed.rio.transform() == scene.transform * scene.transform.translation(
        col_off, row_off
    )
    assert windowed.rio.nodata == 255
    assert windowed.attrs["classes"] == {0: "background", 1: "building", 2: "road"}
    assert set(windowed.attrs["colors"]) == set(windowed.attrs["classes"])
    assert windowed.attrs["model"] == MODEL


def test_predict_full_scene_covers_the_scene(scene: Scene, full: xr.DataArray) -> None:
    assert full.shape == scene.shape
    assert full.rio.crs == scene.crs
    assert full.rio.transform() == scene.transform
    assert set(np.unique(full.values)) <= set(full.attrs["classes"])  # no nodata left
    assert len(np.unique(full.values)) > 1


def test_predict_window_equals_full_scene_away_from_its_edge(
    full: xr.DataArray, windowed: xr.DataArray
) -> None:
    win = PixelWindow(*WINDOW)
    inner = _inner(win, OVERLAP_PX)
    expected = full.values[inner.to_slices()]
    got = windowed.values[inner.relative_to(win).to_slices()]
    np.testing.assert_array_equal(got, expected)
    # and the same pixels carry the same coordinates
    np.testing.assert_allclose(windowed.x.values, full.x.values[win.to_slices()[1]])
    np.testing.assert_allclose(windowed.y.values, full.y.values[win.to_slices()[0]])


def test_predict_accepts_a_pixelwindow_and_clips_it(scene: Scene) -> None:
    rows, cols = scene.shape
    da = _predict(scene, window=PixelWindow(rows - 40, cols - 50, 100, 100))
    assert da.shape == (40, 50)
    assert da.x.values[-1] == pytest.approx((scene.transform * (cols - 0.5, 0))[0])


def test_predict_probabilities_sum_to_one(scene: Scene, windowed: xr.DataArray) -> None:
    probs = _predict(scene, window=PixelWindow(*WINDOW), probabilities=True)
    assert probs.dims == ("class", "y", "x")
    assert list(probs["class"].values) == list(windowed.attrs["classes"].values())
    assert probs.dtype == np.float32
    assert probs.rio.crs == scene.crs
    np.testing.assert_array_equal(probs.x.values, windowed.x.values)
    p = probs.values
    valid = ~np.isnan(p).any(axis=0)
    assert valid.all()  # the synthetic city has no nodata
    np.testing.assert_allclose(p.sum(axis=0)[valid], 1.0, atol=1e-5)
    assert (p[:, valid] >= 0).all()
    # the labels are the most probable class
    agree = np.argmax(p, axis=0) == windowed.values
    assert agree.mean() > 0.999


def test_predict_in_memory_dataarray_keeps_its_crs_and_coords(
    scene: Scene, full: xr.DataArray
) -> None:
    win = PixelWindow(100, 200, 300, 400)
    rows, cols = win.to_slices()
    da = scene.to_xarray().isel(y=rows, x=cols).load()
    out = _predict(da)
    assert out.shape == win.shape
    assert out.rio.crs == scene.crs
    np.testing.assert_allclose(out.x.values, da.x.values)
    np.testing.assert_allclose(out.y.values, da.y.values)
    inner = _inner(win, OVERLAP_PX)
    np.testing.assert_array_equal(
        out.values[inner.relative_to(win).to_slices()], full.values[inner.to_slices()]
    )


def test_predict_dataarray_without_crs_raises() -> None:
    da = xr.DataArray(
        np.zeros((3, 64, 64), np.uint8), dims=("band", "y", "x"),
        coords={"band": [1, 2, 3], "y": np.arange(64.0)[::-1], "x": np.arange(64.0)},
    )
    with pytest.raises(CRSError, match="has no CRS; set one with da.rio.write_crs"):
        _predict(da)


def test_predict_dataarray_whose_crs_was_dropped_raises(scene: Scene) -> None:
    da = scene.to_xarray().isel(y=slice(0, 64), x=slice(0, 64)).load().drop_vars("spatial_ref")
    with pytest.raises(CRSError, match="no CRS") as info:
        _predict(da)
    assert isinstance(info.value, (TerrasegError, ValueError))


def test_predict_rejects_other_inputs() -> None:
    with pytest.raises(TypeError, match="expected a path, a Scene or an xarray.DataArray"):
        _predict(np.zeros((3, 8, 8)))


# ----------------------------------------------------------------------------- vectorize


def test_lazy_api_names_resolve_to_the_api_functions() -> None:
    from terraseg import api

    assert terraseg.predict is api.predict
    assert terraseg.run is api.run


def test_terraseg_vectorize_stays_the_function_after_the_modules_are_imported() -> None:
    """The module is terraseg.vector.vectorization, so importing it cannot shadow the function."""
    importlib.import_module("terraseg.vector.vectorization")
    importlib.import_module("terraseg.engine.postprocess")
    assert terraseg.vectorize is vectorize
    assert callable(terraseg.vectorize)


@pytest.fixture(scope="module")
def layers(full: xr.DataArray) -> dict[str, gpd.GeoDataFrame]:
    return vectorize(full)


def test_vectorize_returns_geodataframes_in_the_scene_crs(
    scene: Scene, layers: dict[str, gpd.GeoDataFrame]
) -> None:
    assert set(layers) == LAYERS
    for name, gdf in layers.items():
        assert isinstance(gdf, gpd.GeoDataFrame), name
        assert gdf.crs == scene.crs, name
    buildings = layers["buildings"]
    assert len(buildings) > 0 and len(layers["roads"]) > 0
    assert {"building_id", "area_m2"} <= set(buildings.columns)
    assert (buildings.area_m2 > 0).all()
    left, bottom, right, top = scene.bounds
    x0, y0, x1, y1 = buildings.total_bounds
    assert left <= x0 and x1 <= right and bottom <= y0 and y1 <= top


def test_vectorize_a_class_raster_path_gives_the_same_buildings(
    full: xr.DataArray, layers: dict[str, gpd.GeoDataFrame], tmp_path: Path
) -> None:
    path = tmp_path / "classes.tif"
    full.rio.to_raster(path, driver="COG")
    from_path = vectorize(path)
    assert set(from_path) == LAYERS
    assert from_path["buildings"].crs == layers["buildings"].crs
    assert len(from_path["buildings"]) == len(layers["buildings"])
    assert from_path["buildings"].area.sum() == pytest.approx(layers["buildings"].area.sum())


# ----------------------------------------------------------------------------- run


def test_run_workflow_in_process(city_scene: CityScene, tmp_path: Path) -> None:
    wf = Workflow(
        name="api-test",
        inputs=InputsConfig(paths=[str(city_scene.image)]),
        models=ModelsConfig(semantic=MODEL),
        tiling=TilingConfig(tile_px=TILE_PX, overlap_px=OVERLAP_PX, chunk_px=512),
        stages=["predict", "vectorize", "export"],
        outputs=OutputsConfig(dir=str(tmp_path / "out"), formats=["gpkg"]),
        cluster=ClusterConfig(type="synchronous"),
    )
    summary = terraseg.run(wf)
    assert len(summary.scenes) == 1
    outputs = summary.scenes[0].outputs
    assert "classes" in outputs
    assert any(p.endswith(".gpkg") for p in outputs.values())
    for path in outputs.values():
        assert Path(path).is_file(), path
        assert Path(path).is_relative_to(tmp_path / "out")
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["name"] == "api-test"
    assert data["scenes"][0]["stats"]["chunks_computed"] > 0
