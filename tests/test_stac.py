"""STAC items as scenes: asset by key or role, proj: georeferencing, the item id in the outputs.

The items are written here with pystac; the one the CLI predicts points at a COG
on a loopback HTTP server (127.0.0.1, stopped when the test ends).
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
from pystac.extensions.projection import ProjectionExtension
from rasterio.errors import NotGeoreferencedWarning
from remote_helpers import RangeServer
from test_remote import assert_one_line_error, run_cli, write_blocky_scene

from terraseg.api import predict_to_dir
from terraseg.config import ClusterConfig, InputsConfig, ModelsConfig, OutputsConfig, Workflow
from terraseg.engine.batch import plan_workflow, run_workflow
from terraseg.errors import ConfigError, SceneReadError
from terraseg.io.inputs import StacMismatchWarning, open_input, scene_input
from terraseg.io.scene import open_scene

TRANSFORM = [0.5, 0.0, 433_000.5, 0.0, -0.5, 4_650_000.5]


def make_item(item_id: str, href: str, *, key: str = "visual", roles: list[str] | None = None,
              epsg: int | None = 32633, transform: list[float] | None = None) -> pystac.Item:
    """A STAC item with a raster asset (projection extension) and a thumbnail."""
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Polygon", "coordinates": [[[15.0, 42.0], [15.01, 42.0],
                                                      [15.01, 42.01], [15.0, 42.0]]]},
        bbox=[15.0, 42.0, 15.01, 42.01],
        datetime=dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
        properties={"gsd": 0.5},
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    if epsg is not None:
        proj.epsg = epsg
    proj.transform = transform or TRANSFORM
    proj.shape = [300, 260]
    item.add_asset(key, pystac.Asset(href=href, media_type=pystac.MediaType.COG,
                                     roles=roles if roles is not None else ["visual"]))
    item.add_asset("thumbnail", pystac.Asset(href="thumb.png", media_type=pystac.MediaType.PNG,
                                             roles=["thumbnail"]))
    return item


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_cli_predict_stac_item_over_http_records_the_item(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    write_blocky_scene(web / "scene.tif")
    local = predict_to_dir(web / "scene.tif", tmp_path / "local", model="cheap", device="cpu",
                           show_progress=False, write_probabilities=False)
    with RangeServer(web) as server:
        item = make_item("maxar-10300100-a", server.url("scene.tif"))
        item_json = write_json(tmp_path / "item.json", item.to_dict(include_self_link=False))
        proc = run_cli("predict", str(item_json), "--out", str(tmp_path / "run"), "--model",
                       "cheap", "--device", "cpu", "--no-probabilities")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run"
    assert (out / "classes.tif").read_bytes() == local.classes_path.read_bytes()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["stac_item"] == "maxar-10300100-a"
    assert run["config"]["stac_asset"] == "visual"
    assert run["config"]["scene"] == str(item_json)
    assert run["scene"].startswith("http://127.0.0.1:")
    # the vectors are named after the item and carry its id in their runs table
    gpkg = out / "maxar-10300100-a.gpkg"
    assert gpkg.is_file(), sorted(p.name for p in out.iterdir())
    runs = pyogrio.read_dataframe(gpkg, layer="runs")
    assert runs.loc[0, "stac_item"] == "maxar-10300100-a"
    assert len(pyogrio.read_dataframe(gpkg, layer="buildings")) == 4


def test_cli_stac_item_without_the_asset_is_one_line_exit_2(tmp_path: Path) -> None:
    item = make_item("naip-item", "scene.tif")
    item_json = write_json(tmp_path / "item.json", item.to_dict(include_self_link=False))
    proc = run_cli("predict", str(item_json), "--out", str(tmp_path / "o"), "--asset", "nir")
    assert_one_line_error(proc, "naip-item", "no asset 'nir'", "--asset",
                          "visual (visual)", "thumbnail (thumbnail)")
    assert not (tmp_path / "o").exists()


def test_asset_is_picked_by_key_or_by_role(tmp_path: Path) -> None:
    scene = write_blocky_scene(tmp_path / "scene.tif")
    item = make_item("by-role", "scene.tif", key="image", roles=["data", "visual"])
    item_json = write_json(tmp_path / "item.json", item.to_dict(include_self_link=False))
    by_role = scene_input(item_json)  # default "visual": no such key, but that role
    assert by_role.stac_asset == "image" and Path(by_role.href) == scene  # relative href
    assert scene_input(item_json, asset="image").stac_asset == "image"
    assert scene_input(item_json, asset="thumbnail").href.endswith("thumb.png")
    assert by_role.name == "by-role" and by_role.crs == "EPSG:32633"
    assert by_role.run_info() == {"stac_item": "by-role", "stac_asset": "image",
                                  "stac_source": str(item_json)}


def test_proj_extension_georeferences_a_bare_raster(tmp_path: Path) -> None:
    bare = tmp_path / "bare.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(bare, "w", driver="GTiff", height=300, width=260, count=3,
                           dtype="uint8") as ds:  # no CRS, no geotransform
            ds.write(np.full((3, 300, 260), 90, np.uint8))
    item = make_item("bare", "bare.tif")
    item.assets["visual"].extra_fields["proj:code"] = "EPSG:32634"  # the asset's wins
    item_json = write_json(tmp_path / "item.json", item.to_dict(include_self_link=False))
    scene = open_input(scene_input(item_json))
    assert scene.crs.to_epsg() == 32634 and scene.crs_assumed
    assert tuple(scene.transform)[:6] == tuple(TRANSFORM)
    assert scene.gsd_m == pytest.approx(0.5, rel=0.01)
    with pytest.raises(SceneReadError, match="no geotransform"):
        open_scene(bare, assume_crs="EPSG:32634")  # without the item it is not georeferenced


def test_item_disagreeing_with_its_raster_warns_and_the_raster_wins(tmp_path: Path) -> None:
    write_blocky_scene(tmp_path / "scene.tif")  # EPSG:32633
    item = make_item("off", "scene.tif", epsg=32634)
    item_json = write_json(tmp_path / "item.json", item.to_dict(include_self_link=False))
    with pytest.warns(StacMismatchWarning, match="EPSG:32634.*raster's own"):
        scene = open_input(scene_input(item_json))
    assert scene.crs.to_epsg() == 32633 and not scene.crs_assumed


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "cannot read STAC document"),
        ('{"type": "Collection", "id": "c"}', "Collection or Catalog"),
        ('{"type": "Feature", "id": "x"}', "not a valid STAC item"),
    ],
)
def test_bad_stac_documents_raise_one_line(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SceneReadError, match=needle) as err:
        scene_input(path)
    assert "\n" not in str(err.value)
    with pytest.raises(SceneReadError, match="file not found"):
        scene_input(tmp_path / "missing.json")


def test_item_collection_runs_as_one_scene_per_item_in_a_workflow(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_blocky_scene(tmp_path / f"{name}.tif")
    items = [make_item(f"item-{n}", f"{n}.tif") for n in ("a", "b")]
    collection = write_json(tmp_path / "items.json",
                            pystac.ItemCollection(items).to_dict(transform_hrefs=False))
    with pytest.raises(ConfigError, match="holds 2 STAC items.*terraseg run"):
        scene_input(collection)
    wf = Workflow(
        name="stac", inputs=InputsConfig(paths=[str(collection)]),
        models=ModelsConfig(semantic="cheap"), stages=["predict", "vectorize"],
        outputs=OutputsConfig(dir=str(tmp_path / "out")),
        cluster=ClusterConfig(type="synchronous"),
    )
    plan = plan_workflow(wf)
    assert [s["stac_item"] for s in plan["scenes"]] == ["item-a", "item-b"]
    assert [Path(s["out_dir"]).name for s in plan["scenes"]] == ["item-a", "item-b"]
    summary = run_workflow(wf)
    for scene in summary.scenes:
        folder = Path(scene.out_dir)
        run = json.loads((folder / "run.json").read_text())
        assert run["config"]["stac_item"] == folder.name
        runs = pyogrio.read_dataframe(folder / f"{folder.name}.gpkg", layer="runs")
        assert runs.loc[0, "stac_item"] == folder.name
