"""Tests for terraseg.export.writers: GeoPackage with QGIS styles, FlatGeobuf, GeoParquet,
COG masks, the QGIS project, reprojection, atomicity; and a check in real QGIS.

The predicted vectors are stood in for by the synthetic city's truth
(``terraseg.synthetic.make_city``) with the columns the vectorizer adds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

import terraseg.export.writers as export_mod
from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError, CRSError, CRSMismatchError, ExportError, OutputExistsError
from terraseg.export.qgis_styles import SingleRenderer, Symbol, VectorStyle, hex_rgb
from terraseg.export.writers import (
    ExportResult,
    InvalidGeometryWarning,
    default_styles,
    export_masks,
    export_run,
    read_layer_styles,
    runs_table,
    write_flatgeobuf,
    write_geopackage,
    write_layer_styles,
    write_qgis_project,
)
from terraseg.io.raster_sink import RasterSink, read_class_names, validate_cog
from terraseg.models.spec import DEFAULT_CLASSES
from terraseg.synthetic import make_city

SCENE_CRS = "EPSG:32633"
LAYERS = ("buildings", "roads", "road_centerlines", "road_nodes", "road_edges")
RUN_INFO: dict[str, Any] = {
    "run_id": "2024-05-01T12-00-00_city",
    "models": {"semantic": {"name": "unet-r18", "version": "0.3.1"},
               "instance": {"name": "maskrcnn", "version": "0.2.0"}},
    "config_hash": "sha256:3f2a9c",
    "timings_s": {"inference": 12.5, "vectorize": 3.25, "total": 17.0},
    "started_utc": "2024-05-01T12:00:00+00:00",
}  # fmt: skip
#: layer_styles as QGIS 3.22.16 (GDAL 3.6.2) creates it when saving a style to a
#: GeoPackage: PRAGMA table_info (name, declared type, notnull, default, pk).
QGIS_LAYER_STYLES_SCHEMA = [
    ("id", "INTEGER", 1, None, 1),
    ("f_table_catalog", "TEXT(256)", 0, None, 0),
    ("f_table_schema", "TEXT(256)", 0, None, 0),
    ("f_table_name", "TEXT(256)", 0, None, 0),
    ("f_geometry_column", "TEXT(256)", 0, None, 0),
    ("styleName", "TEXT(30)", 0, None, 0),
    ("styleQML", "TEXT", 0, None, 0),
    ("styleSLD", "TEXT", 0, None, 0),
    ("useAsDefault", "BOOLEAN", 0, None, 0),
    ("description", "TEXT", 0, None, 0),
    ("owner", "TEXT(30)", 0, None, 0),
    ("ui", "TEXT(30)", 0, None, 0),
    ("update_time", "DATETIME", 0, "strftime('%Y-%m-%dT%H:%M:%fZ','now')", 0),
]
QGIS_PYTHON = "/usr/bin/python3"
QGIS_CHECK = Path(__file__).with_name("qgis_check.py")


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_city(tmp_path_factory.mktemp("city") / "city.tif", size_px=640, seed=11)


@pytest.fixture(scope="module")
def layers(city: Any) -> dict[str, gpd.GeoDataFrame]:
    """Truth vectors with the columns the vectorizer writes."""
    truth = city.truth_gpkg
    rng = np.random.default_rng(0)
    buildings = gpd.read_file(truth, layer="buildings")
    buildings["score"] = rng.uniform(0.3, 1.0, len(buildings)).round(3)
    buildings["area_m2"] = buildings.area
    buildings["class"] = "building"
    roads = gpd.read_file(truth, layer="roads")[["geometry"]]
    roads["area_m2"] = roads.area
    roads["class"] = "road"
    lines = gpd.read_file(truth, layer="road_centerlines")
    lines["length_m"] = lines.length
    ends = np.concatenate(
        [shapely.get_point(lines.geometry.to_numpy(), 0), shapely.get_point(lines.geometry, -1)]
    )
    nodes = gpd.GeoDataFrame(
        {"node_id": np.arange(len(ends)), "degree": rng.integers(1, 6, len(ends))},
        geometry=ends,
        crs=lines.crs,
    )
    edges = gpd.GeoDataFrame(
        {"u": np.arange(len(lines)), "v": np.arange(len(lines)) + len(lines),
         "length_m": lines.length},
        geometry=lines.geometry.to_numpy(),
        crs=lines.crs,
    )  # fmt: skip
    out = {"buildings": buildings, "roads": roads, "road_centerlines": lines,
           "road_nodes": nodes, "road_edges": edges}  # fmt: skip
    for name, frame in out.items():
        assert len(frame) > 0 and frame.crs.to_epsg() == 32633, name
    return out


@pytest.fixture(scope="module")
def masks(city: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """COG masks as the engine writes them (colour table, class names, .aux.xml)."""
    run = tmp_path_factory.mktemp("run")
    with rasterio.open(city.truth_classes) as ds:
        classes = ds.read(1)
        like = {"crs": ds.crs, "transform": ds.transform, "shape": ds.shape}
    with rasterio.open(city.truth_instances) as ds:
        instances = ds.read(1)
    window = PixelWindow(0, 0, *classes.shape)
    names = {c.id: c.name for c in DEFAULT_CLASSES}
    colours = {c.id: c.color for c in DEFAULT_CLASSES}
    with RasterSink(run / "classes.tif", like=like, class_names=names, colormap=colours) as sink:
        sink.write(window, classes)
    with RasterSink(run / "instances.tif", like=like, dtype="uint32", nodata=None) as sink:
        sink.write(window, instances)
    return {"classes": run / "classes.tif", "instances": run / "instances.tif"}


@pytest.fixture(scope="module")
def exported(
    layers: dict[str, gpd.GeoDataFrame], masks: dict[str, Path], tmp_path_factory: Any
) -> ExportResult:
    out = tmp_path_factory.mktemp("export") / "out"
    return export_run(
        layers,
        out,
        scene_name="city",
        formats=("gpkg", "fgb", "parquet"),
        masks=masks,
        run_info=RUN_INFO,
    )


def snapshot(folder: Path) -> dict[str, str]:
    """``{name: sha256}`` of every file in ``folder``."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


# ----------------------------------------------------------------- GeoPackage


def test_result_lists_every_file(exported: ExportResult) -> None:
    names = sorted(p.name for p in exported.paths)
    expected = ["city.gpkg", "city.qgz", "classes.tif", "instances.tif"]
    expected += [f"city_{n}.{ext}" for n in LAYERS for ext in ("fgb", "parquet")]
    assert names == sorted(expected)
    on_disk = sorted(p.name for p in exported.out_dir.iterdir())
    assert on_disk == sorted([*expected, "classes.tif.aux.xml"])  # category names sidecar
    assert exported.crs.to_epsg() == 32633


def test_gpkg_layers_crs_counts_valid_geometries(
    exported: ExportResult, layers: dict[str, gpd.GeoDataFrame]
) -> None:
    assert exported.gpkg is not None
    listed = {name: geom for name, geom in pyogrio.list_layers(exported.gpkg)}
    assert set(listed) == {*LAYERS, "runs", "layer_styles"}
    assert listed["runs"] is None and listed["layer_styles"] is None
    for name in LAYERS:
        info = pyogrio.read_info(exported.gpkg, layer=name)
        assert info["features"] == len(layers[name]) == exported.feature_counts[name]
        assert pyproj.CRS(info["crs"]).to_epsg() == 32633
        assert info["geometry_name"] == "geom"
        back = gpd.read_file(exported.gpkg, layer=name)
        assert back.is_valid.all() and not back.geometry.is_empty.any()
        assert set(layers[name].columns) <= set(back.columns)
    roads = pyogrio.read_info(exported.gpkg, layer="roads")
    assert roads["geometry_type"] == "MultiPolygon"  # the truth mixes nothing: stays Multi
    assert pyogrio.read_info(exported.gpkg, layer="buildings")["geometry_type"] == "Polygon"


def test_gpkg_runs_table(exported: ExportResult) -> None:
    runs = pyogrio.read_dataframe(exported.gpkg, layer="runs")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["scene"] == "city" and row["config_hash"] == "sha256:3f2a9c"
    assert json.loads(row["models"])["semantic"] == {"name": "unet-r18", "version": "0.3.1"}
    assert json.loads(row["timings_s"])["total"] == 17.0
    assert row["terraseg_version"] and row["exported_utc"].endswith("+00:00")
    with sqlite3.connect(exported.gpkg) as conn:
        kind = conn.execute("SELECT data_type FROM gpkg_contents WHERE table_name='runs'")
        assert kind.fetchone() == ("attributes",)


def test_gpkg_spatial_index_and_version(exported: ExportResult) -> None:
    with sqlite3.connect(exported.gpkg) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        extensions = set(conn.execute("SELECT table_name, extension_name FROM gpkg_extensions"))
        user_version = conn.execute("PRAGMA user_version").fetchone()[0]
        for name in LAYERS:
            assert f"rtree_{name}_geom" in tables
            assert (name, "gpkg_rtree_index") in extensions
            n_index = conn.execute(f'SELECT count(*) FROM "rtree_{name}_geom"').fetchone()[0]
            n_rows = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            assert n_index == n_rows > 0
    assert user_version == 10200  # GeoPackage 1.2: no "partially supported" warning in GDAL 3.6


def test_gpkg_layer_styles_match_what_qgis_creates(exported: ExportResult) -> None:
    with sqlite3.connect(exported.gpkg) as conn:
        schema = [tuple(r[1:]) for r in conn.execute("PRAGMA table_info(layer_styles)")]
        contents = conn.execute(
            "SELECT data_type, identifier, srs_id FROM gpkg_contents "
            "WHERE table_name='layer_styles'"
        ).fetchone()
        counted = conn.execute(
            "SELECT feature_count FROM gpkg_ogr_contents WHERE table_name='layer_styles'"
        ).fetchone()
        triggers = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        }
    assert schema == QGIS_LAYER_STYLES_SCHEMA
    assert contents == ("attributes", "layer_styles", 0)
    assert counted == (len(LAYERS),)
    assert "trigger_insert_feature_count_layer_styles" in triggers
    rows = read_layer_styles(exported.gpkg)
    assert sorted(r["f_table_name"] for r in rows) == sorted(LAYERS)
    for row in rows:
        style = exported.styles[row["f_table_name"]]
        assert row["useAsDefault"] == 1
        assert (row["f_table_catalog"], row["f_table_schema"]) == ("", "")
        assert row["f_geometry_column"] == "geom"
        assert row["styleName"] == style.title
        assert row["update_time"].endswith("Z")
        qml = ET.fromstring(row["styleQML"].split("\n", 1)[1])
        assert qml.tag == "qgis"
        assert qml.find("renderer-v2").get("type") == style.renderer_type  # type: ignore[union-attr]
        sld = ET.fromstring(row["styleSLD"].split("\n", 1)[1])
        assert sld.tag.endswith("StyledLayerDescriptor")
    kinds = {name: s.renderer_type for name, s in exported.styles.items()}
    assert kinds == {
        "buildings": "graduatedSymbol",
        "roads": "singleSymbol",
        "road_centerlines": "graduatedSymbol",
        "road_nodes": "categorizedSymbol",
        "road_edges": "singleSymbol",
    }


def test_rewriting_a_style_keeps_one_default(exported: ExportResult, tmp_path: Path) -> None:
    gpkg = tmp_path / "copy.gpkg"
    shutil.copyfile(exported.gpkg, gpkg)  # type: ignore[arg-type]
    outline = Symbol("polygon", (0, 0, 0, 0), (0, 0, 255, 255), 0.5, filled=False)
    other = VectorStyle("buildings", "polygon", SingleRenderer(outline), "blue outline")
    write_layer_styles(gpkg, {"buildings": other})
    write_layer_styles(gpkg, {"buildings": other})  # same name: replaced, not duplicated
    rows = [r for r in read_layer_styles(gpkg) if r["f_table_name"] == "buildings"]
    assert sorted((r["styleName"], r["useAsDefault"]) for r in rows) == [
        ("blue outline", 1),
        ("terraseg buildings by score", 0),
    ]
    with pytest.raises(ExportError, match="not a spatial table"):
        write_layer_styles(gpkg, {"nope": other})


def test_buildings_without_scores_get_an_outline() -> None:
    frame = gpd.GeoDataFrame({"building_id": [1]}, geometry=[shapely.box(0, 0, 1, 1)], crs=32633)
    style = default_styles({"buildings": frame})["buildings"]
    assert isinstance(style.renderer, SingleRenderer)
    assert not style.renderer.symbol.filled
    assert '<prop k="style" v="no"' in style.to_qml()


def test_ogrinfo_reads_the_geopackage(exported: ExportResult) -> None:
    ogrinfo = shutil.which("ogrinfo")
    if ogrinfo is None:
        pytest.skip("ogrinfo not installed (run .ci/install-system-deps.sh)")
    proc = subprocess.run(
        [ogrinfo, "-ro", "-so", "-al", str(exported.gpkg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for name in LAYERS:
        assert f"Layer name: {name}" in proc.stdout
        assert f"Feature Count: {exported.feature_counts[name]}" in proc.stdout
    assert "Layer name: runs" in proc.stdout
    assert "partially supported" not in proc.stderr


# ----------------------------------------------------------------- FlatGeobuf, GeoParquet


def test_flatgeobuf_round_trip(exported: ExportResult, layers: dict[str, gpd.GeoDataFrame]) -> None:
    assert set(exported.flatgeobuf) == set(LAYERS)
    for name, path in exported.flatgeobuf.items():
        info = pyogrio.read_info(path)
        assert info["features"] == len(layers[name])
        assert pyproj.CRS(info["crs"]).to_epsg() == 32633
        back = gpd.read_file(path)
        assert back.is_valid.all()
        assert np.allclose(back.total_bounds, layers[name].total_bounds)


def test_geoparquet_round_trip(exported: ExportResult, layers: dict[str, gpd.GeoDataFrame]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    for name, path in exported.parquet.items():
        back = gpd.read_parquet(path)
        assert len(back) == len(layers[name]) and back.crs.to_epsg() == 32633
        assert back.geometry.geom_equals_exact(layers[name].geometry, 1e-9).all()
        geo = json.loads(pq.read_schema(path).metadata[b"geo"])
        column = geo["columns"][geo["primary_column"]]
        assert column["encoding"] == "WKB" and pyproj.CRS(column["crs"]).to_epsg() == 32633
        assert "covering" in column  # bbox column for row-group pruning


# ----------------------------------------------------------------- masks


def test_masks_are_valid_cogs_with_their_metadata(
    exported: ExportResult, masks: dict[str, Path]
) -> None:
    assert set(exported.masks) == {"classes", "instances"}
    for name, path in exported.masks.items():
        assert path.parent == exported.out_dir
        assert validate_cog(path) == []
        assert path.read_bytes() == masks[name].read_bytes()
    assert read_class_names(exported.masks["classes"]) == {c.id: c.name for c in DEFAULT_CLASSES}
    assert (exported.out_dir / "classes.tif.aux.xml").is_file()


def test_mask_that_is_no_cog_is_rewritten_as_one(
    layers: dict[str, gpd.GeoDataFrame], tmp_path: Path
) -> None:
    striped = tmp_path / "striped.tif"  # a plain GeoTIFF from another tool: no tiles, no overviews
    profile = {"driver": "GTiff", "width": 600, "height": 600, "count": 1, "dtype": "uint8",
               "crs": SCENE_CRS, "transform": from_origin(500000, 5000000, 1, 1)}  # fmt: skip
    pixels = np.arange(600 * 600, dtype=np.uint32).reshape(1, 600, 600) % 3
    with rasterio.open(striped, "w", **profile) as ds:
        ds.write(pixels.astype(np.uint8))
    assert validate_cog(striped) != []
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="does not exist"):
        export_masks({"classes": tmp_path / "missing.tif"}, out)
    assert not out.exists() or not list(out.iterdir())
    result = export_run(layers, out, scene_name="city", masks={"classes": striped})
    assert result.masks["classes"] == out / "striped.tif"
    assert validate_cog(out / "striped.tif") == []
    with rasterio.open(out / "striped.tif") as ds:
        assert np.array_equal(ds.read(), pixels)


def test_export_masks_alone_and_in_place(masks: dict[str, Path], tmp_path: Path) -> None:
    copied = export_masks(masks, tmp_path, link=True)
    assert copied["classes"] == tmp_path / "classes.tif"
    assert validate_cog(copied["classes"]) == []
    assert export_masks(copied, tmp_path) == copied  # already there: only checked
    with pytest.raises(OutputExistsError):
        export_masks(masks, tmp_path)


def test_mask_in_another_crs_is_refused(
    layers: dict[str, gpd.GeoDataFrame], masks: dict[str, Path], tmp_path: Path
) -> None:
    moved = {k: v.to_crs("EPSG:3857") for k, v in layers.items()}
    with pytest.raises(CRSMismatchError, match="mask 'classes' is in EPSG:32633"):
        export_run(moved, tmp_path / "out", scene_name="city", masks=masks)


# ----------------------------------------------------------------- QGIS project (XML)


def test_project_uses_relative_paths(exported: ExportResult) -> None:
    assert exported.project is not None
    with zipfile.ZipFile(exported.project) as archive:
        assert archive.namelist() == ["city.qgs"]
        text = archive.read("city.qgs").decode("utf-8")
    root = ET.fromstring(text.split("\n", 1)[1])
    sources = [el.text for el in root.iter("datasource")]
    assert sources and all(s and s.startswith("./") for s in sources)
    assert str(exported.out_dir) not in text
    assert root.findtext("properties/Paths/Absolute") == "false"
    assert root.findtext("projectCrs/spatialrefsys/authid") == SCENE_CRS
    tree = [el.get("name") for el in root.iter("layer-tree-layer")]
    assert tree == ["road_nodes", "road_centerlines", "road_edges", "buildings", "roads",
                    "runs", "classes", "instances"]  # fmt: skip


def test_write_qgis_project_from_flatgeobuf(
    exported: ExportResult, layers: dict[str, gpd.GeoDataFrame], tmp_path: Path
) -> None:
    path = write_qgis_project(tmp_path / "fgb.qgz", layers=layers, vector_files=exported.flatgeobuf)
    with zipfile.ZipFile(path) as archive:
        text = archive.read("fgb.qgs").decode("utf-8")
    assert "city_buildings.fgb</datasource>" in text and "../" in text
    with pytest.raises(OutputExistsError):
        write_qgis_project(path, layers=layers, vector_files=exported.flatgeobuf)


# ----------------------------------------------------------------- CRS


def test_reprojection(layers: dict[str, gpd.GeoDataFrame], tmp_path: Path) -> None:
    result = export_run(
        layers, tmp_path, scene_name="wgs84", formats=("gpkg", "fgb"), to_crs="EPSG:4326"
    )
    assert result.crs.to_epsg() == 4326
    for name in LAYERS:
        for path in (result.gpkg, result.flatgeobuf[name]):
            back = gpd.read_file(path, layer=name)
            assert back.crs.to_epsg() == 4326 and len(back) == len(layers[name])
            xmin, ymin, xmax, ymax = back.total_bounds
            assert 12 < xmin < xmax < 18 and 0 < ymin < ymax < 84  # inside UTM zone 33N
    # areas measured in the scene CRS are kept, not recomputed in degrees
    back = gpd.read_file(result.gpkg, layer="buildings")
    assert np.allclose(back["area_m2"], layers["buildings"]["area_m2"])


@pytest.mark.parametrize("bad", ["EPSG:999999", "not a crs", 12.5])
def test_invalid_target_crs(layers: dict[str, gpd.GeoDataFrame], tmp_path: Path, bad: Any) -> None:
    with pytest.raises(CRSError, match="to_crs .* is not a valid CRS") as err:
        export_run(layers, tmp_path / "out", scene_name="city", to_crs=bad)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_layers_without_or_with_mixed_crs(
    layers: dict[str, gpd.GeoDataFrame], tmp_path: Path
) -> None:
    naked = layers["roads"].set_crs(None, allow_override=True)
    with pytest.raises(CRSError, match="layer 'roads' has no CRS"):
        export_run({"roads": naked}, tmp_path, scene_name="city")
    mixed = {"buildings": layers["buildings"], "roads": layers["roads"].to_crs(3857)}
    with pytest.raises(CRSMismatchError, match="reproject them to one CRS or pass to_crs"):
        export_run(mixed, tmp_path, scene_name="city")
    result = export_run(mixed, tmp_path, scene_name="city", to_crs=4326)
    assert result.crs.to_epsg() == 4326


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scene_name": "../up"}, "plain file stem"),
        ({"scene_name": ".hidden"}, "plain file stem"),
        ({"scene_name": "c", "formats": ("shp",)}, "unknown export format"),
        ({"scene_name": "c", "layers": {"bad name": None}}, "not usable as a table name"),
        ({"scene_name": "c", "layers": {"runs": None}}, "not usable as a table name"),
        ({"scene_name": "c", "layers": {"roads": "x"}}, "must be a GeoDataFrame"),
        ({"scene_name": "c", "layers": {}}, "nothing to export"),
    ],
)
def test_bad_arguments(
    layers: dict[str, gpd.GeoDataFrame], tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    args = {"layers": layers, **kwargs}
    with pytest.raises(ConfigError, match=match):
        export_run(args.pop("layers"), tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- atomicity


def test_existing_outputs_are_refused_before_anything_is_written(
    exported: ExportResult, layers: dict[str, gpd.GeoDataFrame], masks: dict[str, Path]
) -> None:
    before = snapshot(exported.out_dir)
    with pytest.raises(OutputExistsError, match="already exists.*overwrite"):
        export_run(layers, exported.out_dir, scene_name="city", masks=masks)
    assert snapshot(exported.out_dir) == before


def test_one_existing_output_blocks_the_whole_export(
    layers: dict[str, gpd.GeoDataFrame], tmp_path: Path
) -> None:
    (tmp_path / "city_roads.fgb").write_bytes(b"previous")
    with pytest.raises(OutputExistsError, match="city_roads.fgb"):
        export_run(layers, tmp_path, scene_name="city", formats=("gpkg", "fgb"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city_roads.fgb"]
    assert (tmp_path / "city_roads.fgb").read_bytes() == b"previous"


def test_overwrite_replaces(
    layers: dict[str, gpd.GeoDataFrame], masks: dict[str, Path], tmp_path: Path
) -> None:
    export_run(layers, tmp_path, scene_name="city", formats=("gpkg", "fgb"), masks=masks)
    fewer = {**layers, "buildings": layers["buildings"].iloc[:10]}
    result = export_run(
        fewer, tmp_path, scene_name="city", formats=("gpkg", "fgb"), masks=masks, overwrite=True
    )
    assert pyogrio.read_info(result.gpkg, layer="buildings")["features"] == 10
    assert pyogrio.read_info(result.flatgeobuf["buildings"])["features"] == 10
    assert len(read_layer_styles(result.gpkg)) == len(LAYERS)
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("fail_in", ["_write_project_to", "_write_fgb_to", "_write_gpkg_to"])
def test_failed_export_keeps_previous_outputs_and_leaves_no_temp_files(
    layers: dict[str, gpd.GeoDataFrame],
    masks: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail_in: str,
) -> None:
    options: dict[str, Any] = {"scene_name": "city", "formats": ("gpkg", "fgb"), "masks": masks}
    export_run(layers, tmp_path, **options)
    before = snapshot(tmp_path)
    real = getattr(export_mod, fail_in)
    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) == 2 or fail_in != "_write_fgb_to":  # fgb: fail on the 2nd layer
            raise RuntimeError("disk on fire")
        real(*args, **kwargs)

    monkeypatch.setattr(export_mod, fail_in, broken)
    fewer = {**layers, "buildings": layers["buildings"].iloc[:5]}
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_run(fewer, tmp_path, overwrite=True, **options)
    assert snapshot(tmp_path) == before
    assert temp_files(tmp_path) == []


def test_write_geopackage_and_flatgeobuf_alone(
    layers: dict[str, gpd.GeoDataFrame], tmp_path: Path
) -> None:
    path = write_geopackage({"roads": layers["roads"]}, tmp_path / "roads.gpkg", run_info={})
    assert {n for n, _ in pyogrio.list_layers(path)} == {"roads", "runs", "layer_styles"}
    with pytest.raises(OutputExistsError):
        write_geopackage({"roads": layers["roads"]}, path)
    files = write_flatgeobuf({"roads": layers["roads"]}, tmp_path, scene_name="s")
    assert files == {"roads": tmp_path / "s_roads.fgb"}


def test_invalid_geometries_are_written_with_a_warning(tmp_path: Path) -> None:
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    frame = gpd.GeoDataFrame(
        {"score": [0.9, 0.8]}, geometry=[bowtie, shapely.box(2, 2, 3, 3)], crs=32633
    )
    with pytest.warns(InvalidGeometryWarning, match="1 of 2 geometries are invalid"):
        result = export_run({"buildings": frame}, tmp_path, scene_name="c")
    assert pyogrio.read_info(result.gpkg, layer="buildings")["features"] == 2


def test_runs_table_values() -> None:
    import datetime as dt

    when = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    row = runs_table({"started": when, "n": np.int64(3), "none": None}, scene_name="s")
    assert row.loc[0, "started"] == "2024-05-01T12:00:00+00:00" and row.loc[0, "n"] == 3
    with pytest.raises(ConfigError, match="cannot be a column name"):
        runs_table({"fid": 1}, scene_name="s")


def test_empty_layer_is_written_with_its_geometry_type(tmp_path: Path) -> None:
    empty = gpd.GeoDataFrame({"degree": np.array([], int)}, geometry=[], crs=32633)
    result = export_run({"road_nodes": empty}, tmp_path, scene_name="c", formats=("gpkg", "fgb"))
    assert pyogrio.read_info(result.gpkg, layer="road_nodes")["geometry_type"] == "Point"
    assert result.feature_counts == {"road_nodes": 0}


# ----------------------------------------------------------------- real QGIS


def _qgis_env(home: Path) -> dict[str, str]:
    runtime = home / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),  # QGIS writes its settings profile here, not in the user's home
        "LANG": "C.UTF-8",
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_RUNTIME_DIR": str(runtime),
    }


@pytest.fixture(scope="module")
def qgis_report(exported: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("qgis-home")
    env = _qgis_env(home)
    if not Path(QGIS_PYTHON).exists():
        pytest.skip(f"QGIS not installed: no {QGIS_PYTHON} (run .ci/install-system-deps.sh)")
    probe = subprocess.run(
        [QGIS_PYTHON, "-c", "import qgis.core"], env=env, capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(
            f"QGIS not installed: {QGIS_PYTHON} cannot import qgis.core "
            "(run .ci/install-system-deps.sh)"
        )
    # Move the export elsewhere: the project must work from wherever the folder goes.
    moved = tmp_path_factory.mktemp("moved") / "results"
    shutil.copytree(exported.out_dir, moved)
    proc = subprocess.run(
        [QGIS_PYTHON, str(QGIS_CHECK), "--gpkg", str(moved / "city.gpkg"),
         "--layers", ",".join(LAYERS), "--project", str(moved / "city.qgz")],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    report["_moved_to"] = str(moved)
    (home / "qgis-report.json").write_text(proc.stdout)
    return report


def _first_colour(style: VectorStyle) -> str:
    r = style.renderer
    symbol = (
        r.symbol
        if isinstance(r, SingleRenderer)
        else r.ranges[0].symbol
        if hasattr(r, "ranges")
        else r.categories[0].symbol  # type: ignore[union-attr]
    )
    return f"{hex_rgb(symbol.color)}{symbol.color[3]:02x}"


def _reported_first_colour(renderer: dict[str, Any]) -> str:
    if renderer["type"] == "singleSymbol":
        return str(renderer["symbol"]["color"])
    first = (renderer.get("ranges") or renderer["categories"])[0]
    return str(first["symbol"]["color"])


def test_qgis_applies_default_styles_from_the_geopackage(
    qgis_report: Any, exported: ExportResult
) -> None:
    gpkg = qgis_report["gpkg"]
    assert qgis_report["qgis_version"].startswith("3.")
    for name in LAYERS:
        layer, style = gpkg[name], exported.styles[name]
        assert layer["valid"], name
        assert layer["crs"] == SCENE_CRS
        assert layer["feature_count"] == exported.feature_counts[name]
        assert layer["db_styles"] == {"count": 1, "names": [style.title], "error": ""}
        assert layer["renderer"]["type"] == style.renderer_type, name
        assert _reported_first_colour(layer["renderer"]) == _first_colour(style), name
        assert layer["sld"]["ok"], layer["sld"]["error"]
    buildings = gpkg["buildings"]["renderer"]
    assert buildings["attr"] == "score" and len(buildings["ranges"]) == 4
    assert [r["label"] for r in buildings["ranges"]][0] == "score 0.00 – 0.50"
    assert gpkg["road_centerlines"]["renderer"]["attr"] == "width_m"
    assert gpkg["road_centerlines"]["renderer"]["method"] == 1  # GraduatedSize
    nodes = gpkg["road_nodes"]["renderer"]
    assert [c["value"] for c in nodes["categories"]] == ["1", "2", "3", "4", ""]
    assert gpkg["runs"]["valid"] and gpkg["runs"]["feature_count"] == 1
    assert not gpkg["runs"]["spatial"] and "config_hash" in gpkg["runs"]["fields"]


def test_qgis_opens_the_project_with_every_layer_valid_and_styled(
    qgis_report: Any, exported: ExportResult
) -> None:
    project = qgis_report["project"]
    assert project["read"] and project["error"] == ""
    assert project["crs"] == SCENE_CRS and project["paths_absolute"] is False
    layers = {layer["name"]: layer for layer in project["layers"]}
    assert list(layers) == ["road_nodes", "road_centerlines", "road_edges", "buildings",
                            "roads", "runs", "classes", "instances"]  # fmt: skip
    moved = qgis_report["_moved_to"]
    for name, layer in layers.items():
        assert layer["valid"], name
        assert layer["source"].startswith(moved), (name, layer["source"])
    for name in LAYERS:
        assert layers[name]["crs"] == SCENE_CRS
        assert layers[name]["feature_count"] == exported.feature_counts[name]
        assert layers[name]["renderer"]["type"] == exported.styles[name].renderer_type
        assert _reported_first_colour(layers[name]["renderer"]) == _first_colour(
            exported.styles[name]
        )
    assert layers["runs"]["feature_count"] == 1
    classes = layers["classes"]
    assert classes["crs"] == SCENE_CRS and classes["visible"]
    assert classes["renderer"]["type"] == "paletted"
    palette = {int(c["value"]): (c["color"], c["label"]) for c in classes["renderer"]["classes"]}
    expected = {
        c.id: (f"{hex_rgb(c.color)}{0 if c.id == 0 else 255:02x}", c.name) for c in DEFAULT_CLASSES
    }
    assert palette == expected
    instances = layers["instances"]
    assert instances["renderer"]["type"] == "singlebandpseudocolor"
    assert instances["renderer"]["items"] > 1 and not instances["visible"]
