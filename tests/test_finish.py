"""Per-chunk vectorization and the scene reduce (terraseg.engine.finish, issue #18).

The map/reduce must give exactly what the streamed serial steps give
(``label_instances`` + ``vectorize_masks``): the same ``instances.tif`` pixels and
the same building, road and centerline rows, whatever order the chunks arrive in.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from scipy import ndimage as ndi

from terraseg.core.grid import PixelWindow
from terraseg.engine.finish import (
    ChunkVectors,
    FinishOptions,
    finish_chunk,
    finish_windows,
)
from terraseg.engine.finish_reduce import reduce_scene, write_instance_rasters
from terraseg.engine.postprocess import label_instances, vectorize_masks, vectorize_scene
from terraseg.instances.targets import boundary_classes
from terraseg.io.masks import open_mask
from terraseg.io.raster_sink import RasterSink
from terraseg.io.scene import open_scene
from terraseg.models.spec import BOUNDARY_CLASSES, DEFAULT_CLASSES
from terraseg.synthetic import CityScene, make_city
from terraseg.vector.vectorization import _assemble_roads, iter_roads

CHUNK_PX = 256


# --------------------------------------------------------------------------- inputs


def _cog(path: Path, arr: np.ndarray, like: Path, classes: Any = DEFAULT_CLASSES) -> Path:
    names = {c.id: c.name for c in classes}
    colours = {c.id: c.color for c in classes}
    with RasterSink(path, like=open_scene(like), class_names=names, colormap=colours,
                    nodata=255) as sink:
        sink.write(PixelWindow(0, 0, *arr.shape), arr[None])
    return path


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _with_nodata(classes: np.ndarray) -> np.ndarray:
    """A nodata corner, so nodata handling is part of the comparison."""
    out = classes.copy()
    out[:40, :60] = 255
    return out


def _probabilities(path: Path, classes: np.ndarray, like: Path, n: int) -> Path:
    """A uint8 probability COG (0-254, 255 nodata) that blurs the classes' one-hot
    a little and adds noise, so seeds and scores are not trivial."""
    rng = np.random.default_rng(3)
    onehot = np.stack([(classes == k).astype(np.float32) for k in range(n)])
    soft = ndi.gaussian_filter(onehot, sigma=(0, 1.5, 1.5)) + rng.uniform(0, 0.15, onehot.shape)
    soft /= soft.sum(axis=0, keepdims=True)
    q = np.round(soft * 254).astype(np.uint8)
    q[:, classes == 255] = 255
    with RasterSink(path, like=open_scene(like), count=n, dtype="uint8", nodata=255) as sink:
        sink.write(PixelWindow(0, 0, *classes.shape), q)
    return path


@pytest.fixture(scope="module")
def semantic(city_scene: CityScene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared city's truth classes (700 x 1100: 3 x 5 chunks of 256 px)."""
    folder = tmp_path_factory.mktemp("finish-semantic")
    return _cog(folder / "classes.tif", _with_nodata(_read(city_scene.truth_classes)),
                city_scene.image)


@pytest.fixture(scope="module")
def boundary(city_scene: CityScene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A boundary model's class COG (``building edge`` ring) from the city's truth."""
    folder = tmp_path_factory.mktemp("finish-boundary")
    ids = _read(city_scene.truth_instances).astype(np.int64)
    cls = _with_nodata(boundary_classes(ids, _read(city_scene.truth_classes), edge_px=2))
    return _cog(folder / "classes.tif", cls, city_scene.image, BOUNDARY_CLASSES)


# --------------------------------------------------------------------------- runs


def _map_reduce(
    classes_path: Path, out: Path, probs_path: Path | None = None, *, shuffle: bool = True,
    chunk_px: int = CHUNK_PX, **changes: Any,
) -> tuple[Any, list[ChunkVectors]]:
    """The map and the reduce as the lead's orchestration runs them: chunks in any
    order, every part pickled in between, labels kept in a store."""
    opts = FinishOptions.from_masks(classes_path, probs_path, chunk_px=chunk_px)
    opts = dataclasses.replace(opts, **changes)
    opts = pickle.loads(pickle.dumps(opts))
    classes = open_mask(classes_path)
    probs = open_scene(probs_path) if probs_path is not None else None

    def read(window: PixelWindow) -> np.ndarray:
        return classes.read_window(window, bands=[1], pad="nodata")[0][0]

    def read_probs(window: PixelWindow, bands: Any) -> np.ndarray:
        assert probs is not None
        return probs.read_window(window, bands=list(bands), pad="nodata")[0]

    store: dict[tuple[int, int], bytes] = {}

    def save(index: tuple[int, int], labels: np.ndarray) -> None:
        assert labels.dtype == np.int32
        store[index] = pickle.dumps(labels)

    windows = finish_windows(opts)
    if shuffle:
        random.Random(5).shuffle(windows)
    parts = [
        pickle.loads(pickle.dumps(finish_chunk(
            read, read_probs if probs is not None else None, index, core, opts, save)))
        for index, core in windows
    ]
    result = reduce_scene(parts, opts)
    write_instance_rasters(opts, result.relabel, lambda i: pickle.loads(store[i]), read,
                           out / "instances.tif", out / "panoptic.tif", like=classes)
    return result, parts


def _serial(classes_path: Path, out: Path, probs_path: Path | None = None) -> tuple[Any, Any]:
    """The streamed serial steps: label_instances, then vectorize_masks on its output."""
    table = label_instances(classes_path, out / "instances.tif", chunk_px=CHUNK_PX,
                            probabilities_path=probs_path, panoptic_path=out / "panoptic.tif")
    scores = ({int(i): float(s) for i, s in zip(table.ids, table.score, strict=True)}
              if probs_path is not None else None)
    layers = vectorize_masks(classes_path, out / "instances.tif", chunk_px=CHUNK_PX,
                             scores=scores)
    return table, layers


def _rows(frame: gpd.GeoDataFrame) -> list[tuple[Any, ...]]:
    """Rows as comparable tuples (normalized WKB first), sorted."""
    wkb = shapely.to_wkb(shapely.normalize(np.asarray(frame.geometry.array, object)))
    cols = [c for c in frame.columns if c != "geometry"]
    rows = []
    for k, geom in enumerate(wkb):
        values = tuple("nan" if isinstance(v, float) and np.isnan(v) else v
                       for v in (frame[c].iloc[k] for c in cols))
        rows.append((geom, *values))
    return sorted(rows, key=repr)


def _assert_same_layers(got: Any, want: Any) -> None:
    for name, frame in want.as_dict().items():
        other = got.as_dict()[name]
        assert list(other.columns) == list(frame.columns), name
        assert other.crs == frame.crs, name
        assert len(other) == len(frame), (name, len(other), len(frame))
        assert _rows(other) == _rows(frame), name
        geoms = np.asarray(frame.geometry.array, object)
        if name == "buildings":  # same rows by id, exactly equal geometries
            order = np.argsort(other["building_id"].to_numpy())
            mine = np.asarray(other.geometry.array, object)[order]
            ref = geoms[np.argsort(frame["building_id"].to_numpy())]
            assert shapely.equals_exact(mine, ref, tolerance=1e-9).all()


def _assert_same_rasters(a: Path, b: Path) -> None:
    for name in ("instances.tif", "panoptic.tif"):
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            assert x.profile["dtype"] == y.profile["dtype"]
            assert np.array_equal(x.read(), y.read()), name


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kind", ["semantic", "boundary", "boundary+probs", "semantic+probs"])
def test_map_reduce_equals_serial_steps(
    kind: str, semantic: Path, boundary: Path, tmp_path: Path
) -> None:
    classes_path = boundary if kind.startswith("boundary") else semantic
    probs = None
    if kind.endswith("probs"):
        n = 4 if kind.startswith("boundary") else 3
        probs = _probabilities(tmp_path / "probabilities.tif", _read(classes_path),
                               classes_path, n)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    table, want = _serial(classes_path, tmp_path / "a", probs)
    result, parts = _map_reduce(classes_path, tmp_path / "b", probs)
    assert len(parts) == 3 * 5
    assert result.n_instances == len(table.ids) > 50
    _assert_same_rasters(tmp_path / "a", tmp_path / "b")
    _assert_same_layers(result.layers, want)
    # many buildings and roads were cut by chunk edges and dissolved back
    assert sum(len(p.edge_ids) for p in parts) > 50
    assert sum(len(p.road_ids) for p in parts) > 10
    layers = result.layers
    assert len(layers.roads) and len(layers.road_centerlines) > 10
    widths = layers.roads.geometry.bounds
    assert ((widths["maxx"] - widths["minx"]) > CHUNK_PX * 0.5 * 2).any()  # crosses chunks
    if probs is None:
        assert layers.buildings["score"].isna().all()
    else:
        assert layers.buildings["score"].between(0, 1).all()


def test_vectorize_scene_runs_the_map_and_reduce(semantic: Path, tmp_path: Path) -> None:
    """The serial entry point gives what the map/reduce gives (one code path)."""
    (tmp_path / "mr").mkdir()
    result, _ = _map_reduce(semantic, tmp_path / "mr", shuffle=False)
    out = vectorize_scene(semantic, tmp_path / "instances.tif", tmp_path / "vec",
                          scene_name="city", chunk_px=CHUNK_PX)
    assert out.n_instances == result.n_instances
    _assert_same_layers(out.layers, result.layers)
    assert np.array_equal(_read(tmp_path / "instances.tif"), _read(tmp_path / "mr/instances.tif"))
    assert (tmp_path / "panoptic.tif").exists() and out.export.gpkg is not None


def test_reduce_is_independent_of_arrival_order(semantic: Path, tmp_path: Path) -> None:
    opts = FinishOptions.from_masks(semantic, chunk_px=CHUNK_PX)
    (tmp_path / "x").mkdir()
    result, parts = _map_reduce(semantic, tmp_path / "x")
    again = reduce_scene(list(reversed(parts)), opts)
    _assert_same_layers(again.layers, result.layers)
    with pytest.raises(Exception, match="partition|chunk"):
        reduce_scene(parts[:-1], opts)


def test_road_vertex_cut_matches_iter_roads(semantic: Path, tmp_path: Path) -> None:
    """``max_road_vertices`` cuts a scene-wide road region at chunk borders exactly as
    ``iter_roads(max_vertices=...)`` does."""
    result, _ = _map_reduce(semantic, tmp_path, max_road_vertices=20)
    scene = open_mask(semantic)
    windows = [core for _, core in finish_windows(FinishOptions.from_masks(
        semantic, chunk_px=CHUNK_PX))]
    batches = list(iter_roads(lambda w: scene.read_window(w, bands=[1], pad="nodata")[0][0],
                              windows, scene.transform, scene.crs, road_class=2,
                              max_vertices=20))
    want = _assemble_roads(batches, scene.crs)
    assert len(want) > 3  # the one road network came out in pieces
    assert _rows(result.layers.roads) == _rows(want)


def test_scene_without_roads(semantic: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with_roads, _ = _map_reduce(semantic, tmp_path / "a")
    result, parts = _map_reduce(semantic, tmp_path / "b", road=None)
    assert not any(len(p.road_ids) or len(p.lines) for p in parts)
    assert len(result.layers.roads) == len(result.layers.road_centerlines) == 0
    assert _rows(result.layers.buildings) == _rows(with_roads.layers.buildings)


# --------------------------------------------------------------------------- size


def test_chunk_vectors_are_small(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One 1024² chunk of a dense city sends < 10 % of its class raster's bytes."""
    folder = tmp_path_factory.mktemp("dense")
    city = make_city(folder / "dense.tif", size_px=2048, seed=21)
    classes = _cog(folder / "classes.tif", _read(city.truth_classes), city.image)
    opts = FinishOptions.from_masks(classes, chunk_px=1024)
    scene = open_mask(classes)
    saved: list[np.ndarray] = []
    index, core = finish_windows(opts)[0]
    part = finish_chunk(lambda w: scene.read_window(w, bands=[1], pad="nodata")[0][0], None,
                        index, core, opts, lambda i, lab: saved.append(lab))
    raster_bytes = core.height * core.width  # uint8 classes of the core
    assert len(part.buildings) > 100 and len(part.edge_ids) > 5 and len(part.lines) > 5
    assert saved[0].shape == (1024, 1024) and saved[0].dtype == np.int32
    assert part.nbytes() < 0.10 * raster_bytes, (part.nbytes(), raster_bytes)
    assert len(pickle.dumps(part)) < 0.10 * raster_bytes
