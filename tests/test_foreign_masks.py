"""`terraseg vectorize` / `evaluate` on masks as other tools write them, and in Web Mercator.

Issue #20: a striped, uncompressed GeoTIFF written with plain rasterio, or an int8 to
uint32 mask, vectorizes like terraseg's own COG; a mask in EPSG:3857 at 60°N gives
areas and lengths in true metres (within 1 % of the same geometries measured in UTM).
The commands run in-process through the console entry point (``main``), so errors are
mapped to one line and exit status 2 exactly as in the shell.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from vector_helpers import chunk_windows, reader

from terraseg.cli.main import main
from terraseg.io.raster_sink import validate_cog
from terraseg.vector.vectorization import vectorize_buildings

SHAPE = (240, 560)  # wider than 512 px: a striped file is no COG
UTM_ORIGIN = Affine(0.5, 0.0, 478_151.0, 0.0, -0.5, 4_647_683.0)
#: (row, col, height, width) of buildings, px; some cross the 128-px chunk borders
BUILDINGS = [(10, 10, 20, 30), (40, 110, 36, 40), (120, 20, 14, 50), (150, 150, 40, 22),
             (20, 230, 30, 30), (180, 250, 24, 44), (60, 60, 8, 8), (150, 500, 30, 40)]  # fmt: skip
#: 3 x 6 px = 4.5 m² and 3 x 5 px = 3.75 m² at 0.5 m: either side of the default 4 m²
ABOVE_4M2, BELOW_4M2 = (215, 20, 3, 6), (215, 60, 3, 5)


def _classes() -> np.ndarray[Any, Any]:
    """uint8 classes: background 0, buildings 1, a road cross 2 (and two tiny buildings)."""
    arr = np.zeros(SHAPE, np.uint8)
    for r, c, h, w in [*BUILDINGS, ABOVE_4M2, BELOW_4M2]:
        arr[r : r + h, c : c + w] = 1
    arr[96:106, :] = 2
    arr[:, 200:210] = 2
    return arr


def _write(path: Path, arr: np.ndarray[Any, Any], *, crs: str | None = "EPSG:32633",
           transform: Affine = UTM_ORIGIN, **profile: Any) -> Path:  # fmt: skip
    """Write with plain rasterio: striped and uncompressed unless ``profile`` says otherwise."""
    bands = arr[None] if arr.ndim == 2 else arr
    with rasterio.open(
        path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2],
        count=bands.shape[0], dtype=bands.dtype, crs=crs, transform=transform, **profile,
    ) as ds:  # fmt: skip
        ds.write(bands)
    return path


def _cog_copy(source: Path, dest: Path) -> Path:
    rasterio.shutil.copy(source, dest, driver="COG", COMPRESS="DEFLATE")
    return dest


def terraseg(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run the ``terraseg`` console entry point in-process: ``(exit status, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["terraseg", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _layers(gpkg: Path) -> dict[str, gpd.GeoDataFrame]:
    return {n: gpd.read_file(gpkg, layer=n) for n in ("buildings", "roads", "road_centerlines")}


def _same_layers(a: dict[str, gpd.GeoDataFrame], b: dict[str, gpd.GeoDataFrame]) -> None:
    for name in a:
        ga = shapely.normalize(np.asarray(a[name].geometry.array, object))
        gb = shapely.normalize(np.asarray(b[name].geometry.array, object))
        assert len(ga) == len(gb) > 0, name
        assert all(shapely.equals_exact(ga, gb, tolerance=1e-6)), name
    assert a["buildings"]["area_m2"].tolist() == b["buildings"]["area_m2"].tolist()


# --------------------------------------------------------------------------- metres


def test_web_mercator_mask_at_60n_is_measured_in_true_metres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Done-when of #20: area_m2 and road length within 1 % of UTM, min_area_m2 in true m²."""
    x, y = pyproj.Transformer.from_crs(4326, 3857, always_xy=True).transform(10.75, 60.0)
    step = 0.5 / np.cos(np.radians(60.0))  # 1 Web Mercator unit: 0.5 m on the ground
    mask = _write(tmp_path / "merc.tif", _classes(), crs="EPSG:3857",
                  transform=Affine(step, 0, x, 0, -step, y))  # fmt: skip
    out = tmp_path / "v" / "merc.gpkg"
    code, stdout, err = terraseg(monkeypatch, capsys, "vectorize", str(mask), "--out", str(out),
                                 "--chunk-px", "128")  # fmt: skip
    assert code == 0, err
    layers = _layers(out)
    utm = "EPSG:32632"
    b = layers["buildings"]
    assert b.crs.to_epsg() == 3857
    assert b["area_m2"].to_numpy() == pytest.approx(b.to_crs(utm).area.to_numpy(), rel=0.01)
    # Web Mercator's own units would have given 4 times the area at 60°N
    assert b["area_m2"].sum() == pytest.approx(b.area.sum() / 4, rel=0.01)
    lines = layers["road_centerlines"]
    length_m = gpd.read_file(out, layer="road_centerlines")["length_m"].to_numpy()
    assert length_m == pytest.approx(lines.to_crs(utm).length.to_numpy(), rel=0.01)
    assert length_m.sum() == pytest.approx(lines.length.sum() / 2, rel=0.01)
    # min_area_m2 (4 m² by default) is true m²: 4.5 m² kept, 3.75 m² dropped (15 units² in 3857)
    t = Affine(step, 0, x, 0, -step, y)
    for (r, c, h, w), kept in ((ABOVE_4M2, True), (BELOW_4M2, False)):
        centre = shapely.Point(t * (c + w / 2, r + h / 2))
        assert bool(b.contains(centre).any()) is kept
    assert "terraseg: warning: vectorize_buildings: dropped 1 geometries" in err


def test_min_area_m2_is_true_square_metres_in_web_mercator() -> None:
    x, y = pyproj.Transformer.from_crs(4326, 3857, always_xy=True).transform(10.75, 60.0)
    step = 0.5 / np.cos(np.radians(60.0))
    lab = np.zeros((60, 60), np.uint32)
    lab[5:14, 5:15] = 1  # 9 x 10 px = 22.5 m²
    lab[30:38, 30:39] = 2  # 8 x 9 px = 18 m²
    with pytest.warns(UserWarning, match="dropped 1"):
        out = vectorize_buildings(reader(lab), chunk_windows(lab.shape, 32),
                                  Affine(step, 0, x, 0, -step, y), "EPSG:3857",
                                  min_area_m2=20.0, regularize=False)  # fmt: skip
    assert out["building_id"].tolist() == [1]
    assert out["area_m2"].iloc[0] == pytest.approx(22.5, rel=0.01)


# --------------------------------------------------------------------------- other tools' masks


def test_striped_uncompressed_mask_vectorizes_like_its_cog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    striped = _write(tmp_path / "striped.tif", _classes())  # plain rasterio: strips, no compression
    with rasterio.open(striped) as ds:
        assert ds.block_shapes[0][1] == SHAPE[1] and ds.compression is None
    cog = _cog_copy(striped, tmp_path / "cog.tif")
    assert validate_cog(cog) == [] and validate_cog(striped) != []
    outs = {}
    for name, mask in (("striped", striped), ("cog", cog)):
        outs[name] = tmp_path / name / "city.gpkg"
        code, _, err = terraseg(monkeypatch, capsys, "-q", "vectorize", str(mask), "--out",
                                str(outs[name]), "--chunk-px", "128")  # fmt: skip
        assert code == 0, err
    _same_layers(_layers(outs["striped"]), _layers(outs["cog"]))
    # the export folder holds the mask rewritten as a COG, with the same pixels
    copied = tmp_path / "striped" / "striped.tif"
    assert validate_cog(copied) == []
    with rasterio.open(copied) as a, rasterio.open(striped) as b:
        assert np.array_equal(a.read(), b.read()) and a.crs == b.crs and a.transform == b.transform


def test_mask_reads_are_windowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No read of a striped mask covers the whole raster: chunk windows plus a halo only
    (the widest: road centerlines' 64 px on each side of a 64 px chunk)."""
    from terraseg.io.scene import Scene

    striped = _write(tmp_path / "striped.tif", _classes())
    sizes: list[int] = []
    original = Scene.read_window

    def spy(self: Scene, window: Any, **kw: Any) -> Any:
        if Path(self.path) == striped:
            sizes.append(window.height * window.width)
        return original(self, window, **kw)

    monkeypatch.setattr(Scene, "read_window", spy)
    code, _, err = terraseg(monkeypatch, capsys, "-q", "vectorize", str(striped), "--out",
                            str(tmp_path / "o" / "c.gpkg"), "--chunk-px", "64")  # fmt: skip
    assert code == 0, err
    assert sizes and max(sizes) <= (64 + 2 * 64) ** 2 < SHAPE[0] * SHAPE[1] / 3


@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", "int32", "uint32"])
def test_integer_class_masks_vectorize_like_uint8(
    dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    classes = _classes()
    signed = np.dtype(dtype).kind == "i"
    arr = classes.astype(dtype)
    if signed:  # a nodata border as signed masks often have
        arr[:, :4] = -1
        classes = classes.copy()
        classes[:, :4] = 255
    tiled = {"tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "lzw"}
    mask = _write(tmp_path / f"{dtype}.tif", arr, nodata=-1 if signed else None,
                  **(tiled if dtype == "uint16" else {}))  # fmt: skip
    ref = _write(tmp_path / "ref.tif", classes, nodata=255)
    outs = {}
    for name, path in (("ref", ref), (dtype, mask)):
        outs[name] = tmp_path / name / "c.gpkg"
        code, _, err = terraseg(monkeypatch, capsys, "-q", "vectorize", str(path), "--out",
                                str(outs[name]), "--chunk-px", "128")  # fmt: skip
        assert code == 0, err
    _same_layers(_layers(outs[dtype]), _layers(outs["ref"]))


def test_instance_mask_from_another_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """int32 building ids with nodata -1, striped: nodata is no building."""
    classes = _classes()
    ids = np.zeros(SHAPE, np.int32)
    for k, (r, c, h, w) in enumerate(BUILDINGS, start=1):
        ids[r : r + h, c : c + w] = 10 * k
    ids[:, -3:] = -1
    mask = _write(tmp_path / "classes.tif", classes)
    inst = _write(tmp_path / "ids.tif", ids, nodata=-1)
    out = tmp_path / "o" / "c.gpkg"
    code, _, err = terraseg(monkeypatch, capsys, "-q", "vectorize", str(mask), "--instances",
                            str(inst), "--out", str(out), "--chunk-px", "128")  # fmt: skip
    assert code == 0, err
    b = gpd.read_file(out, layer="buildings")
    assert sorted(b["building_id"]) == [10 * k for k in range(1, len(BUILDINGS) + 1)]
    areas = dict(zip(b["building_id"], b["area_m2"], strict=True))
    assert areas[20] == pytest.approx(36 * 40 * 0.25, rel=0.02)


def _bad_masks(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """``{case: (extra CLI args, words the one-line error must hold)}``; writes the files."""
    classes = _classes()
    rgb = _write(tmp_path / "rgb.tif", np.stack([classes] * 3))
    flt = _write(tmp_path / "float.tif", classes.astype("float32"))
    nocrs = _write(tmp_path / "nocrs.tif", classes, crs=None)
    good = _write(tmp_path / "good.tif", classes)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other_grid = _write(tmp_path / "small_ids.tif", np.zeros((100, 100), np.uint32))
    return {
        "bands": ([str(rgb)], ["class mask", "rgb.tif", "3 bands", "gdal_translate -b 1"]),
        "float": ([str(flt)], ["float.tif", "float32", "gdal_translate -ot Byte"]),
        "no crs": ([str(nocrs)], ["nocrs.tif", "no CRS", "gdal_edit.py -a_srs"]),
        "corrupt": ([str(corrupt)], ["cannot read class mask", "corrupt.tif"]),
        "grid": ([str(good), "--instances", str(other_grid)], ["small_ids.tif", "grid"]),
    }


@pytest.mark.parametrize("case", ["bands", "float", "no crs", "corrupt", "grid"])
def test_bad_masks_fail_with_one_line_before_writing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    args, needles = _bad_masks(tmp_path)[case]
    out = tmp_path / "out" / "c.gpkg"
    code, _, err = terraseg(monkeypatch, capsys, "vectorize", *args, "--out", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("terraseg: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_evaluate_accepts_masks_from_other_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    classes = _classes()
    striped = _write(tmp_path / "pred.tif", classes.astype("int16"))
    truth = _cog_copy(_write(tmp_path / "t.tif", classes), tmp_path / "truth.tif")
    code, out, err = terraseg(monkeypatch, capsys, "evaluate", str(striped), str(truth), "--json")
    assert code == 0, err
    assert json.loads(out)["pixels"]["accuracy"] == 1.0
    rgb = _write(tmp_path / "rgb.tif", np.stack([classes] * 3))
    code, _, err = terraseg(monkeypatch, capsys, "evaluate", str(rgb), str(truth))
    assert code == 2 and err.startswith("terraseg: error: ") and "3 bands" in err


def test_vrt_mask_is_exported_as_a_tif_cog(tmp_path: Path) -> None:
    """A mask GDAL reads but that is no GeoTIFF (a VRT) is rewritten as ``<stem>.tif``."""
    from terraseg.export.writers import export_masks

    src = _write(tmp_path / "src.tif", _classes())
    vrt = tmp_path / "mask.vrt"
    rasterio.shutil.copy(src, vrt, driver="VRT")
    copied = export_masks({"classes": vrt}, tmp_path / "out")
    assert copied["classes"] == tmp_path / "out" / "mask.tif"
    assert validate_cog(copied["classes"]) == []
    with rasterio.open(copied["classes"]) as ds:
        assert np.array_equal(ds.read(1), _classes())
