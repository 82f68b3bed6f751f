"""Predict adapts the scene to the model's card: GSD (resampled on the fly), bands, bit depth; TTA.

A 7.5 cm scene through a 0.5 m model runs on a model-GSD grid and its outputs
come back on the scene's own grid; ``--no-resample`` refuses it; one-band
16-bit imagery is repeated to RGB and stretched; alpha 0 stays nodata; test-time
augmentation (``--tta d4``) is exact for a flip/rotation-equivariant model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from real_data import real_file

from terraseg.api import predict, predict_to_dir
from terraseg.core.grid import PixelWindow
from terraseg.core.regrid import GridMap
from terraseg.engine.adapt import BandWarning, adapt_scene, model_gsd
from terraseg.engine.inference import TilePredictor
from terraseg.errors import BandError, ConfigError
from terraseg.io import warped
from terraseg.io.scene import open_scene
from terraseg.io.warped import read_model_window
from terraseg.models.builtin import CheapColorModel
from terraseg.synthetic import make_city

TERRASEG = str(Path(sys.executable).with_name("terraseg"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [TERRASEG, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def read(path: Path) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.crs


@pytest.fixture(scope="module")
def fine_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 7.5 cm synthetic city, 1400 x 1300 px (a 211 x 196 px grid at 0.5 m)."""
    path = tmp_path_factory.mktemp("fine") / "fine.tif"
    make_city(path, size_px=(1400, 1300), seed=5, gsd_m=0.075)
    return path


# --------------------------------------------------------------------------- the grid map


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    fy=st.floats(0.3, 9.0),
    fx=st.floats(0.3, 9.0),
    data=st.data(),
)
def test_model_windows_map_to_a_partition_of_the_scene(
    rows: int, cols: int, fy: float, fx: float, data: st.DataObject
) -> None:
    gm = GridMap((rows, cols), fy, fx)
    mrows, mcols = gm.model_shape

    def cuts(n: int) -> list[int]:
        inner = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=5, unique=True))
        return [0, *sorted(c for c in inner if c < n), n]

    hits = np.zeros((rows, cols), np.int32)
    owner = np.full((rows, cols), -1, np.int64)
    rcuts, ccuts = cuts(mrows), cuts(mcols)
    for r0, r1 in zip(rcuts, rcuts[1:], strict=False):
        for c0, c1 in zip(ccuts, ccuts[1:], strict=False):
            w = PixelWindow(r0, c0, r1 - r0, c1 - c0)
            sw, ri, ci = gm.to_scene(w)
            assert ((ri >= 0) & (ri < w.height)).all() and ((ci >= 0) & (ci < w.width)).all()
            hits[sw.to_slices()] += 1
            owner[sw.to_slices()] = (ri + r0)[:, None] * mcols + (ci + c0)[None, :]
    assert (hits == 1).all()  # every scene pixel written exactly once
    # ... by the model pixel its centre falls in
    yy, xx = np.mgrid[0:rows, 0:cols]
    expect = np.floor((yy + 0.5) / fy).astype(int) * mcols + np.floor((xx + 0.5) / fx).astype(int)
    assert (owner == expect).all()
    # and cover() of any scene window maps back over it
    sw = PixelWindow(rows // 3, cols // 4, max(1, rows // 2), max(1, cols // 2)).clip((rows, cols))
    back, _, _ = gm.to_scene(gm.cover(sw))
    assert back.intersection(sw) == sw


def test_warped_reads_do_not_depend_on_the_window(fine_city: Path) -> None:
    scene = open_scene(fine_city)
    gm = GridMap(scene.shape, 0.5 / scene.gsd_xy_m[1], 0.5 / scene.gsd_xy_m[0])
    full, valid = read_model_window(
        scene, gm, PixelWindow(0, 0, *gm.model_shape), [1, 2, 3], with_mask=True
    )
    assert valid is not None and valid.all()
    for w in (PixelWindow(7, 13, 100, 150), PixelWindow(190, 3, 20, 190)):
        part, pvalid = read_model_window(scene, gm, w, [3, 1], with_mask=True)
        assert np.array_equal(part, full[[2, 0]][(slice(None), *w.to_slices())])
        assert pvalid is not None and np.array_equal(pvalid, valid[w.to_slices()])


# --------------------------------------------------------------------------- GSD


def test_fine_scene_is_resampled_and_outputs_are_on_its_grid(
    fine_city: Path, tmp_path: Path
) -> None:
    proc = cli(
        "predict",
        str(fine_city),
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--no-vectorize",
        "--tile-px",
        "128",
        "--overlap-px",
        "32",
    )
    assert proc.returncode == 0, proc.stderr
    classes, transform, crs = read(tmp_path / "o" / "classes.tif")
    with rasterio.open(fine_city) as ds:
        assert classes.shape == ds.shape and transform == ds.transform and crs == ds.crs
    with rasterio.open(tmp_path / "o" / "probabilities.tif") as ds:
        assert ds.shape == classes.shape
    assert (classes != 255).all()
    assert {1, 0} <= set(np.unique(classes).tolist())  # buildings and background found
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    gsd = info["input"]["gsd"]
    assert gsd["resampled"] is True and gsd["model_gsd_m"] == 0.5
    assert gsd["scene_gsd_m"] == pytest.approx(0.075, rel=1e-3)
    assert gsd["factor"] == pytest.approx([0.5 / 0.075] * 2, rel=1e-3)
    grid = GridMap((1400, 1300), *gsd["factor"]).model_shape
    assert gsd["model_grid_shape"] == list(grid) and 195 <= grid[1] <= grid[0] <= 211
    assert info["shape"] == [1400, 1300] and info["grid"]["shape"] == list(grid)
    # the model really saw 0.5 m pixels: buildings are about as large as in the truth
    truth, _, _ = read(fine_city.with_name("fine.truth.tif"))
    iou = ((classes == 1) & (truth == 1)).sum() / ((classes == 1) | (truth == 1)).sum()
    assert iou > 0.5, iou


def test_no_resample_refuses_with_one_line_and_no_output(fine_city: Path, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    proc = cli("predict", str(fine_city), "--out", str(out), "--device", "cpu", "--no-resample")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("terraseg: error: "), proc.stderr
    assert "fine.tif" in lines[0] and "0.075 m" in lines[0] and "--no-resample" in lines[0]
    assert not out.exists()
    with pytest.raises(ConfigError, match="trained at 0.5 m"):
        predict(fine_city, model="demo-instance", device="cpu", resample=False)


def test_resampled_output_does_not_depend_on_the_chunking(fine_city: Path, tmp_path: Path) -> None:
    runs = {}
    for chunk_px in (96, 256):  # 3 x 3 chunks, and one chunk, of the 211 x 196 model grid
        res = predict_to_dir(
            fine_city,
            tmp_path / f"c{chunk_px}",
            model="demo-instance",
            tile_px=64,
            overlap_px=16,
            chunk_px=chunk_px,
            device="cpu",
            write_probabilities=True,
            show_progress=False,
        )
        assert (res.stats["grid"]["n_chunks"] > 4) == (chunk_px == 96)
        with rasterio.open(res.probabilities_path) as ds:
            probs = ds.read()
        runs[chunk_px] = (read(res.classes_path)[0], probs)
    assert np.array_equal(runs[96][0], runs[256][0])
    assert np.array_equal(runs[96][1], runs[256][1])
    # the notebook API gives the same labels, for the scene and for a window of it
    da = predict(
        fine_city, model="demo-instance", tile_px=64, overlap_px=16, chunk_px=96, device="cpu"
    )
    assert da.shape == runs[96][0].shape and np.array_equal(da.values, runs[96][0])
    win = predict(
        fine_city,
        model="demo-instance",
        tile_px=64,
        overlap_px=16,
        chunk_px=96,
        device="cpu",
        window=(301, 457, 260, 333),
    )
    assert np.array_equal(win.values, runs[96][0][301:561, 457:790])


def test_coarse_scene_is_upsampled_independently_of_the_chunking(tmp_path: Path) -> None:
    """A 1.2 m scene through a 0.5 m model: bilinear, the case whose warps depend on the window."""
    city = make_city(tmp_path / "coarse.tif", size_px=(190, 170), seed=8, gsd_m=1.2)
    runs = []
    for chunk_px in (96, 512):
        res = predict_to_dir(
            city.image, tmp_path / f"c{chunk_px}", model="demo-instance", tile_px=64,
            overlap_px=16, chunk_px=chunk_px, device="cpu", show_progress=False,
        )  # fmt: skip
        gsd = res.stats["input"]["gsd"]
        assert gsd["resampling"] == "bilinear" and gsd["model_grid_shape"][0] > 190 * 2
        runs.append(read(res.classes_path))
    (a, ta, _), (b, tb, _) = runs
    assert a.shape == (190, 170) and ta == tb and np.array_equal(a, b)


def test_scene_within_tolerance_is_not_resampled(tmp_path: Path) -> None:
    city = make_city(tmp_path / "c.tif", size_px=300, seed=2, gsd_m=0.55)
    view, _ = adapt_scene(
        open_scene(city.image), _spec("demo-instance"), gsd=model_gsd("demo-instance")
    )
    assert view.gridmap is None and view.shape == (300, 300)
    assert view.record["gsd"]["resampled"] is False
    assert model_gsd("cheap") is None  # a built-in model states no GSD


def _spec(model: str):  # type: ignore[no-untyped-def]
    from terraseg.models.combine import resolve_models

    return resolve_models(model, None)[1]


# --------------------------------------------------------------------------- bands, bit depth


def _write(path: Path, data: np.ndarray, *, gsd: float = 0.5, **kw: object) -> Path:
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": str(data.dtype),
        "crs": "EPSG:32633",
        "transform": from_origin(433_000.0, 4_650_000.0, gsd, gsd),
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
        **kw,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def test_one_band_uint16_is_repeated_and_stretched(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pan = (rng.gamma(2.0, 300.0, (1, 300, 280)) + 60).astype(np.uint16)  # 11-bit-ish values
    pan[:, :20, :] = 0  # a nodata strip
    path = _write(tmp_path / "pan.tif", pan, nodata=0)
    with pytest.warns(BandWarning, match=r"one band; it is repeated to the 3 input bands"):
        res = predict_to_dir(path, tmp_path / "o", model="cheap", device="cpu", show_progress=False)
    classes = read(res.classes_path)[0]
    scaling = res.stats["input"]["scaling"]
    assert res.stats["input"]["bands"]["model_bands"] == [1, 1, 1]
    assert scaling["method"] == "percentile-to-8bit" and scaling["dtype"] == "uint16"
    valid = pan[0] != 0
    lo, hi = np.percentile(pan[0][valid], [2, 98])
    assert scaling["low"][0] == np.floor(lo) and scaling["high"][0] == np.ceil(hi)
    # the cheap model is per pixel: the expected classes follow from the stretch alone
    x = (
        np.clip(pan[0].astype(np.float32), scaling["low"][0], scaling["high"][0])
        - scaling["low"][0]
    ) / (scaling["high"][0] - scaling["low"][0])
    with torch.no_grad():
        scores = CheapColorModel()(torch.from_numpy(np.stack([x] * 3)[None]))[0].numpy()
    expect = np.where(valid, scores.argmax(0), 255)
    assert (classes == expect).mean() > 0.999
    assert (classes[~valid] == 255).all()
    # stretched, dark pixels are background and bright ones road; unstretched (raw / 255,
    # values up to 8) the grey rule would call nearly all of it road
    assert (classes[valid] == 0).mean() > 0.2 and (classes[valid] == 2).mean() > 0.2
    raw = torch.from_numpy(np.stack([pan[0] / 255.0] * 3)[None].astype(np.float32))
    with torch.no_grad():
        assert (CheapColorModel()(raw)[0].numpy().argmax(0)[valid] == 2).mean() > 0.95


def test_lazy_dataarray_gets_the_same_bands_and_stretch(tmp_path: Path) -> None:
    import rioxarray

    rng = np.random.default_rng(5)
    pan = (rng.gamma(2.0, 300.0, (1, 260, 300)) + 60).astype(np.uint16)
    pan[:, :, :15] = 0
    path = _write(tmp_path / "pan.tif", pan, nodata=0)
    with pytest.warns(BandWarning):
        eager = predict(path, model="cheap", device="cpu", tile_px=64, overlap_px=16, chunk_px=128)
    da = rioxarray.open_rasterio(path, chunks={"x": 128, "y": 128})
    with pytest.warns(BandWarning, match="the DataArray has one band"):
        lazy = predict(da, model="cheap", device="cpu", tile_px=64, overlap_px=16, chunk_px=128)
    assert np.array_equal(lazy.compute().values, eager.values)
    assert (eager.values[:, :15] == 255).all() and (eager.values[:, 15:] != 255).all()


def test_rgba_alpha_zero_is_nodata_also_when_resampled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    city = make_city(tmp_path / "c.tif", size_px=(700, 640), seed=4, gsd_m=0.075)
    with rasterio.open(city.image) as ds:
        rgb = ds.read()
    alpha = np.full((1, *rgb.shape[1:]), 255, np.uint8)
    alpha[0, 101:333, 57:290] = 0  # not aligned to the 0.5 m grid
    path = _write(
        tmp_path / "rgba.tif",
        np.concatenate([rgb, alpha]),
        gsd=0.075,
        photometric="RGB",
        alpha="YES",
    )
    assert open_scene(path).alpha_band == 4
    res = predict_to_dir(
        path,
        tmp_path / "o",
        model="demo-instance",
        device="cpu",
        tile_px=64,
        overlap_px=16,
        show_progress=False,
    )
    classes = read(res.classes_path)[0]
    assert classes.shape == rgb.shape[1:]
    assert (classes[alpha[0] == 0] == 255).all()
    assert (classes[alpha[0] == 255] != 255).all()
    bands = res.stats["input"]["bands"]
    assert bands["mask"] == "alpha" and bands["model_bands"] == [1, 2, 3]
    assert res.stats["input"]["gsd"]["resampled"] is True
    # written back in strips of a few rows: the same raster
    monkeypatch.setattr(warped, "STRIP_PX", 997)
    again = predict_to_dir(
        path,
        tmp_path / "strips",
        model="demo-instance",
        device="cpu",
        tile_px=64,
        overlap_px=16,
        show_progress=False,
    )
    assert np.array_equal(read(again.classes_path)[0], classes)


def test_two_band_scene_gets_the_card_checker_message(tmp_path: Path) -> None:
    path = _write(tmp_path / "two.tif", np.zeros((2, 64, 64), np.uint8) + 9)
    with pytest.raises(BandError, match=r"has 2 band\(s\); choose a scene with 3\+ bands"):
        predict_to_dir(path, tmp_path / "o", model="cheap", device="cpu", show_progress=False)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- TTA


def test_tta_is_exact_for_an_equivariant_model_and_not_for_a_general_one() -> None:
    tiles = np.random.default_rng(3).random((3, 3, 48, 48), dtype=np.float32)
    cheap = CheapColorModel()
    plain = TilePredictor(cheap, device="cpu", batch_size=2).predict(tiles)
    d4 = TilePredictor(cheap, device="cpu", batch_size=2, tta="d4").predict(tiles)
    assert np.allclose(plain, d4, atol=1e-6)  # a 1x1 convolution commutes with D4

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)  # a 3x3 kernel without symmetry
    plain = TilePredictor(conv, device="cpu").predict(tiles)
    d4 = TilePredictor(conv, device="cpu", tta="d4").predict(tiles)
    assert not np.allclose(plain, d4, atol=1e-3)
    # ... and equals the mean over the eight transforms computed by hand
    x = torch.from_numpy(tiles)
    outs = []
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                xt = torch.rot90(x.flip(3) if flip else x, k, (2, 3))
                y = torch.softmax(conv(xt), 1)
                y = torch.rot90(y, -k, (2, 3))
                outs.append((y.flip(3) if flip else y).numpy())
    assert np.allclose(d4, np.mean(outs, axis=0), atol=1e-5)


def test_tta_through_the_cli(tmp_path: Path) -> None:
    city = make_city(tmp_path / "c.tif", size_px=200, seed=1)
    plain = predict_to_dir(
        city.image,
        tmp_path / "none",
        model="cheap",
        device="cpu",
        write_probabilities=True,
        show_progress=False,
    )
    proc = cli(
        "predict",
        str(city.image),
        "--out",
        str(tmp_path / "d4"),
        "--model",
        "cheap",
        "--device",
        "cpu",
        "--no-vectorize",
        "--tta",
        "d4",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "d4" / "run.json").read_text())["config"]["tta"] == "d4"
    outs = {}
    for name, folder in (("none", plain.out_dir), ("d4", tmp_path / "d4")):
        with rasterio.open(folder / "probabilities.tif") as ds:
            outs[name] = (read(folder / "classes.tif")[0], ds.read().astype(int))
    # the same scores up to float rounding (8 summed copies): labels differ only at exact ties
    assert np.abs(outs["none"][1] - outs["d4"][1]).max() <= 1
    assert (outs["none"][0] != outs["d4"][0]).mean() < 1e-3
    bad = cli("predict", str(city.image), "--out", str(tmp_path / "bad"), "--tta", "d8")
    assert bad.returncode == 2 and "unknown tta 'd8'" in bad.stderr
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- workflows


def test_workflow_resamples_and_refuses(fine_city: Path, tmp_path: Path) -> None:
    from terraseg.config import Workflow
    from terraseg.engine.batch import plan_workflow, run_workflow

    base = {
        "name": "adapt",
        "stages": ["predict"],
        "inputs": {"paths": [str(fine_city)]},
        "models": {"semantic": "demo-instance"},
        "tiling": {"tile_px": 64, "overlap_px": 16, "chunk_px": 128},
        "cluster": {"type": "synchronous"},
        "outputs": {"dir": str(tmp_path / "wf"), "probabilities": False},
        "inference": {"device": "cpu"},
    }
    plan = plan_workflow(Workflow.model_validate(base))["scenes"][0]
    assert plan["shape"] == plan["model_grid"] != [1400, 1300]  # chunks on the model grid
    res = run_workflow(Workflow.model_validate(base))
    classes, transform, _ = read(Path(res.scenes[0].outputs["classes"]))
    with rasterio.open(fine_city) as ds:
        assert classes.shape == ds.shape and transform == ds.transform
    direct = predict(fine_city, model="demo-instance", tile_px=64, overlap_px=16, device="cpu")
    assert np.array_equal(classes, direct.values)  # the resumable driver gives the same labels
    assert res.scenes[0].stats["input"]["gsd"]["resampled"] is True
    refuse = base | {
        "inference": {"device": "cpu", "resample": False},
        "outputs": {"dir": str(tmp_path / "wf2")},
    }
    with pytest.raises(ConfigError, match="resample"):
        run_workflow(Workflow.model_validate(refuse))
    with pytest.raises(ConfigError, match="resample"):  # terraseg validate says so too
        plan_workflow(Workflow.model_validate(refuse))
    assert not (tmp_path / "wf2").exists()


# --------------------------------------------------------------------------- real data


REAL_SCENES = [
    "spacenet4_atlanta_buildings/sample_geotiff.tif",  # 1 band uint16, EPSG:32616
    "spacenet3_vegas_pan_roads/road_mask_input.tif",  # 1 band uint16, EPSG:4326, ~0.3 m
    "kampala_block_a_buildings/kampala_oam_z21_block_a.tif",  # RGBA 7.46 cm, alpha = mask
]


@pytest.mark.parametrize("rel", REAL_SCENES)
def test_real_scenes_classes_on_the_scene_grid(rel: str, tmp_path: Path) -> None:
    path = real_file(rel)
    res = predict_to_dir(
        path,
        tmp_path / "o",
        model="demo-instance",
        device="cpu",
        write_probabilities=False,
        show_progress=False,
    )
    classes, transform, crs = read(res.classes_path)
    with rasterio.open(path) as ds:
        assert classes.shape == ds.shape and transform == ds.transform and crs == ds.crs
        assert ((classes == 255) == (ds.dataset_mask() == 0)).all()
    assert (classes == 1).any()


@pytest.mark.slow  # ~30 s each: the CLI with instances and vectors
@pytest.mark.parametrize("model", ["demo-instance", "oam-buildings"])
@pytest.mark.parametrize("rel", REAL_SCENES)
def test_real_scenes_run_and_outputs_lie_on_the_scene(rel: str, model: str,
                                                      tmp_path: Path) -> None:
    """``terraseg predict --model M`` on 1-band uint16 pan (projected and EPSG:4326) and an
    RGBA drone mosaic: exit 0, classes on the scene's grid with nodata exactly where the
    scene has none, buildings inside its footprint."""
    import geopandas as gpd
    from shapely.geometry import box

    path = real_file(rel)
    out = tmp_path / "o"
    proc = cli("predict", str(path), "--out", str(out), "--device", "cpu", "--model", model)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    classes, transform, crs = read(out / "classes.tif")
    with rasterio.open(path) as ds:
        assert classes.shape == ds.shape and transform == ds.transform and crs == ds.crs
        footprint = box(*ds.bounds)
        mask = ds.dataset_mask()
    assert ((classes == 255) == (mask == 0)).all()  # nodata exactly where the scene has none
    gpkg = out / f"{path.stem}.gpkg"
    buildings = gpd.read_file(gpkg, layer="buildings")
    assert len(buildings) > 0 and buildings.crs == crs
    tol = abs(transform.a)
    assert buildings.geometry.within(footprint.buffer(tol)).all()
    info = json.loads((out / "run.json").read_text())["input"]
    if "kampala" in rel:
        assert info["gsd"]["resampled"] is True and info["bands"]["mask"] == "alpha"
    else:
        assert info["bands"]["repeated"] is True
        assert info["scaling"]["method"] == "percentile-to-8bit"


@pytest.mark.slow  # starts a LocalCluster (~30 s)
def test_dask_workers_read_the_adapted_scene(tmp_path: Path) -> None:
    """Workers rebuild the card's spec; the pickled AdaptedScene still gives them the fitted input."""
    from terraseg.config import Workflow
    from terraseg.engine.batch import run_workflow

    rng = np.random.default_rng(2)
    pan = (rng.gamma(2.0, 300.0, (1, 900, 700)) + 60).astype(np.uint16)
    path = _write(tmp_path / "pan.tif", pan, gsd=0.075)
    results = {}
    for kind in ("synchronous", "local"):
        wf = {
            "name": "dask-adapt",
            "stages": ["predict"],
            "inputs": {"paths": [str(path)]},
            "models": {"semantic": "demo-instance"},
            "tiling": {"tile_px": 64, "overlap_px": 16, "chunk_px": 64},
            "cluster": {"type": kind, "n_workers": 2},
            "outputs": {"dir": str(tmp_path / kind), "probabilities": False},
            "inference": {"device": "cpu", "tta": "d4"},
        }
        with pytest.warns(BandWarning):
            res = run_workflow(Workflow.model_validate(wf))
        results[kind] = read(Path(res.scenes[0].outputs["classes"]))[0]
    assert results["local"].shape == (900, 700)
    assert np.array_equal(results["local"], results["synchronous"])


MEMORY_SCRIPT = """
import json, resource, sys
import numpy as np, rasterio
from rasterio.transform import from_origin
from terraseg.api import predict_to_dir
size = int(sys.argv[1]); tmp = sys.argv[2]
path = f"{tmp}/s{size}.tif"
prof = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8",
            crs="EPSG:32633", transform=from_origin(400000, 5000000, 0.075, 0.075),
            tiled=True, blockxsize=512, blockysize=512, compress="deflate")
block = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)
with rasterio.open(path, "w", **prof) as ds:
    for r in range(0, size, 512):
        for c in range(0, size, 512):
            ds.write(block, window=((r, r + 512), (c, c + 512)))
res = predict_to_dir(path, f"{tmp}/out{size}", model="demo-instance", tile_px=128,
                     overlap_px=32, chunk_px=256, device="cpu", show_progress=False)
assert res.stats["input"]["gsd"]["resampled"]
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow  # ~1 min: two resampled runs in subprocesses
def test_resampled_peak_memory_flat_in_scene_size(tmp_path: Path) -> None:
    def peak(size: int) -> float:
        env = {"GDAL_CACHEMAX": "64", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(size), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            check=True,
        )
        return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])

    small, large = peak(2048), peak(6144)  # 9x the pixels, 5 x 5 model-grid chunks at most
    assert large <= 1.2 * small, (small, large)
