"""The CLI as a user runs it: real console script, one-line errors, exit status 2, no partial files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

TERRASEG = str(Path(sys.executable).with_name("terraseg"))


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [TERRASEG, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("terraseg: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def small_scene(tmp_path: Path) -> Path:
    path = tmp_path / "scene.tif"
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (3, 300, 260), dtype=np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=300,
        width=260,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(433_000.5, 4_650_000.5, 0.5, 0.5),
        tiled=True,
        blockxsize=128,
        blockysize=128,
    ) as ds:
        ds.write(arr)
    return path


def test_version_and_help() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("terraseg ")
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("synth", "predict", "plan"):
        assert cmd in proc.stdout


def test_synth_then_predict_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "city.tif"
    proc = run("synth", str(out), "--size-px", "600", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    assert "city.truth.gpkg" in proc.stdout
    for name in ("city.tif", "city.truth.gpkg", "city.truth.tif", "city.instances.tif"):
        assert (tmp_path / name).exists()
    proc = run("plan", str(out), "--tile-px", "256", "--overlap-px", "32", "--chunk-px", "256")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["shape"] == [600, 600] and plan["n_chunks"] == 9 and plan["crs"] == "EPSG:32633"
    proc = run(
        "predict",
        str(out),
        "--out",
        str(tmp_path / "run"),
        "--tile-px",
        "256",
        "--overlap-px",
        "32",
        "--chunk-px",
        "256",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "Mpx/s" in proc.stdout
    with rasterio.open(tmp_path / "run" / "classes.tif") as ds:
        assert ds.shape == (600, 600) and ds.crs.to_epsg() == 32633
    # predict vectorizes by default: instances, a styled GeoPackage and a QGIS project
    for name in ("instances.tif", "city.gpkg", "city.qgz"):
        assert (tmp_path / "run" / name).exists(), name
    proc = run("export", str(tmp_path / "run"), "--format", "fgb,parquet", "--to-crs", "EPSG:4326")
    assert proc.returncode == 0, proc.stderr
    import geopandas as gpd

    fgb = gpd.read_file(tmp_path / "run" / "export" / "city_buildings.fgb")
    assert fgb.crs.to_epsg() == 4326
    assert len(fgb) == len(gpd.read_file(tmp_path / "run" / "city.gpkg", layer="buildings"))
    # a second run refuses to overwrite, and leaves the first output intact
    before = (tmp_path / "run" / "classes.tif").stat().st_mtime_ns
    proc = run("predict", str(out), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert_one_line_error(proc, "already exists", "--overwrite")
    assert (tmp_path / "run" / "classes.tif").stat().st_mtime_ns == before


def test_vectorize_truth_oracle(tmp_path: Path) -> None:
    """Vectorizing the truth rasters gives back the truth buildings, one polygon each."""
    import geopandas as gpd

    from terraseg.synthetic import make_city

    city = make_city(tmp_path / "c.tif", size_px=700, seed=2)
    out = tmp_path / "v" / "c.gpkg"
    proc = run("vectorize", str(city.truth_classes), "--instances", str(city.truth_instances),
               "--out", str(out), "--chunk-px", "256")
    assert proc.returncode == 0, proc.stderr
    got = gpd.read_file(out, layer="buildings")
    truth = gpd.read_file(city.truth_gpkg, layer="buildings")
    assert got.crs == truth.crs
    assert got.geometry.is_valid.all()
    assert got["building_id"].is_unique
    # buildings under min_area_m2 (4 m², slivers cut by the scene edge) are dropped, with a warning
    big = truth[truth.area >= 4.0]
    assert set(big["building_id"]) <= set(got["building_id"])
    assert len(gpd.read_file(out, layer="road_centerlines")) > 0


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--crs", "EPSG:999999"], ["EPSG:999999"]),
        (["--crs", "not-a-crs"], ["not-a-crs"]),
        (["--size-px", "0"], ["size"]),
        (["--size-px", "-5"], ["size"]),
    ],
)
def test_synth_bad_input(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    proc = run("synth", str(tmp_path / "x.tif"), *args)
    assert_one_line_error(proc, *needles)
    assert list(tmp_path.iterdir()) == []


def test_synth_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run("synth", str(blocker / "x.tif"), "--size-px", "256")
    assert_one_line_error(proc, str(blocker))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_predict_corrupt_tiff(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_text("this is not a tiff")
    proc = run("predict", str(bad), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "bad.tif")
    assert not (tmp_path / "run" / "classes.tif").exists()


def test_predict_missing_crs_suggests_assume_crs(tmp_path: Path, small_scene: Path) -> None:
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(small_scene) as src:
        prof = src.profile | {"crs": None}
        with rasterio.open(nocrs, "w", **prof) as dst:
            dst.write(src.read())
    proc = run("predict", str(nocrs), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "nocrs.tif", "--assume-crs")
    proc = run(
        "predict",
        str(nocrs),
        "--out",
        str(tmp_path / "run"),
        "--assume-crs",
        "EPSG:32633",
        "--tile-px",
        "128",
        "--overlap-px",
        "16",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--tile-px", "256", "--overlap-px", "256"], ["overlap"]),
        (["--tile-px", "512", "--chunk-px", "256"], ["chunk"]),
        (["--batch-size", "0"], ["batch_size"]),
        (["--device", "cuda:7"], ["cuda:7"]),
        (["--ramp", "gauss"], ["gauss"]),
        (["--model", "no-such-model"], ["no-such-model"]),
        (["--backend", "tvm"], ["backend 'tvm'", "onnxruntime"]),
    ],
)
def test_predict_bad_options(
    tmp_path: Path, small_scene: Path, args: list[str], needles: list[str]
) -> None:
    out = tmp_path / "run"
    proc = run("predict", str(small_scene), "--out", str(out), *args)
    if "--device" in args and proc.returncode == 0:
        pytest.skip("this machine has that CUDA device")
    assert_one_line_error(proc, *needles)
    assert not out.exists() or list(out.iterdir()) == []


def test_predict_onnxruntime_backend_equals_torch(tmp_path: Path, small_scene: Path) -> None:
    pytest.importorskip("onnxruntime")
    outs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        proc = run("predict", str(small_scene), "--out", str(out), "--model", "demo-semantic",
                   "--tile-px", "128", "--overlap-px", "32", "--chunk-px", "256",
                   "--device", "cpu", "--backend", backend, "--no-vectorize")
        assert proc.returncode == 0, proc.stderr
        assert f"backend={backend}" in (out / "run.json").read_text()
        with rasterio.open(out / "classes.tif") as ds:
            outs[backend] = ds.read(1)
    # logits agree within 1e-3, so labels differ at most on near-ties
    assert (outs["torch"] == outs["onnxruntime"]).mean() > 0.999


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = run("--debug", "predict", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr
