"""End-to-end tests of the tiled engine: chunked == one pass, no seams, nodata, odd inputs, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.stitch import accumulate_tile, normalize, tile_weights, to_labels
from terraseg.engine.inference import TilePredictor
from terraseg.engine.pipeline import iter_predictions, plan_scene, predict_scene
from terraseg.errors import BandError, GridError, OutputExistsError
from terraseg.io.raster_sink import read_class_names, validate_cog
from terraseg.io.scene import open_scene
from terraseg.models.builtin import build_builtin
from terraseg.models.spec import ClassInfo, InputSpec, ModelSpec

ORIGIN = (355_012.5, 4_651_987.5)  # inside UTM 33N, deliberately not a round number


def write_tif(
    path: Path,
    arr: np.ndarray,
    *,
    crs: str = "EPSG:32633",
    nodata: float | None = None,
    res: float = 0.5,
    photometric: str | None = None,
) -> Path:
    profile = dict(
        driver="GTiff",
        height=arr.shape[1],
        width=arr.shape[2],
        count=arr.shape[0],
        dtype=arr.dtype,
        crs=crs,
        transform=from_origin(*ORIGIN, res, res),
        tiled=True,
        blockxsize=128,
        blockysize=128,
        nodata=nodata,
    )
    if photometric:
        profile["photometric"] = photometric
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(arr)
    return path


@pytest.fixture
def rgb_array() -> np.ndarray:
    """A textured 3-band uint8 image, 523 × 611 (no tile size divides it)."""
    yy, xx = np.mgrid[0:523, 0:611]
    rng = np.random.default_rng(42)
    base = np.stack([(yy * 3 + xx) % 256, (xx * 5) % 256, (yy * 7 + xx * 2) % 256])
    return (base + rng.integers(0, 30, base.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture
def rgb_file(tmp_path: Path, rgb_array: np.ndarray) -> Path:
    return write_tif(tmp_path / "rgb.tif", rgb_array)


class PositionModel(nn.Module):
    """Output depends non-linearly on the pixel values and on their neighbourhood.

    Fed a coordinate-encoding scene it depends on absolute position, so any
    tile misplacement or seam shows up.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, kernel_size=5, padding=2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.conv(x) * 3.0) * 4.0


def spec_for(
    n_classes: int,
    *,
    bands: tuple[int, ...] = (1, 2, 3),
    scale: float = 255.0,
    activation: str = "softmax",
) -> ModelSpec:
    classes = tuple(ClassInfo(id=i, name=f"c{i}", color=(i, i, i)) for i in range(n_classes))
    return ModelSpec(
        name="test",
        input=InputSpec(bands=bands, scale=scale),
        classes=classes,
        activation=activation,
    )  # type: ignore[arg-type]


def one_pass(
    scene_path: Path,
    model: nn.Module,
    spec: ModelSpec,
    tile: int,
    overlap: int,
    ramp: str = "cosine",
) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every lattice tile predicted and blended into ONE scene accumulator."""
    scene = open_scene(scene_path)
    grid = ChunkGrid.from_shape(
        scene.shape, tile_px=tile, overlap_px=overlap, chunk_px=10 * max(scene.shape)
    )
    full = PixelWindow(0, 0, *scene.shape)
    acc = np.zeros((spec.n_classes + 1, *scene.shape), np.float32)
    pred = TilePredictor(model, device="cpu", batch_size=1, activation=spec.activation)
    ny, nx = grid.n_tiles_yx
    for i in range(ny):
        for j in range(nx):
            w = grid.lattice.tile_window((i, j))
            raw, _ = scene.read_window(w, bands=list(spec.input.bands))
            scores = pred.predict(spec.input.apply(raw)[None])[0]
            accumulate_tile(acc, full, w, scores, tile_weights(grid.lattice, (i, j), grid.n_tiles_yx, ramp=ramp))  # type: ignore[arg-type]
    probs, _ = normalize(acc)
    return probs, acc


def chunked(
    scene_path: Path,
    model: nn.Module,
    spec: ModelSpec,
    tile: int,
    overlap: int,
    chunk: int,
    ramp: str = "cosine",
    batch_size: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    scene = open_scene(scene_path)
    grid = plan_scene(scene, tile_px=tile, overlap_px=overlap, chunk_px=chunk)
    pred = TilePredictor(model, device="cpu", batch_size=batch_size, activation=spec.activation)
    probs = np.full((spec.n_classes, *scene.shape), np.nan, np.float32)
    valid = np.zeros(scene.shape, bool)
    seen = np.zeros(scene.shape, np.int32)
    for window, acc, ok in iter_predictions(scene, grid, pred, spec, ramp=ramp):  # type: ignore[arg-type]
        assert acc is not None
        p, _ = normalize(acc)
        probs[(slice(None), *window.to_slices())] = p
        valid[window.to_slices()] = ok
        seen[window.to_slices()] += 1
    assert (seen == 1).all(), "finished regions must partition the scene exactly once"
    return probs, valid


@pytest.mark.parametrize("chunk", [128, 300, 448, 10_000])
@pytest.mark.parametrize("ramp", ["cosine", "none"])
def test_chunked_equals_one_pass(rgb_file: Path, chunk: int, ramp: str) -> None:
    model, spec = PositionModel(), spec_for(4)
    ref, _ = one_pass(rgb_file, model, spec, tile=128, overlap=32, ramp=ramp)
    got, valid = chunked(rgb_file, model, spec, tile=128, overlap=32, chunk=chunk, ramp=ramp)
    assert valid.all()
    assert np.abs(got - ref).max() < 1e-5
    assert (got.argmax(0) == ref.argmax(0)).all()


def test_coordinate_scene_identity_round_trip(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:389, 0:457].astype(np.float32)
    arr = np.stack([yy, xx, yy * 1000 + xx]).astype(np.float32)
    path = write_tif(tmp_path / "xy.tif", arr)
    net, spec = build_builtin("identity")
    for chunk in (100, 250):
        got, valid = chunked(path, net, spec, tile=96, overlap=24, chunk=chunk, ramp="cosine")
        assert valid.all()
        # every pixel comes back at its own position: exact after rounding, and within
        # float32 precision before (values reach 3.9e5 in band 3, where 1 ulp = 0.03)
        assert (np.rint(got) == arr).all()
        np.testing.assert_allclose(got, arr, rtol=5e-7, atol=1e-4)


def test_no_seam_at_chunk_borders(rgb_file: Path) -> None:
    """Along every chunk border the chunked result equals the one-pass result."""
    model, spec = PositionModel(), spec_for(4)
    ref, _ = one_pass(rgb_file, model, spec, tile=128, overlap=32)
    got, _ = chunked(rgb_file, model, spec, tile=128, overlap=32, chunk=200)
    grid = plan_scene(open_scene(rgb_file), tile_px=128, overlap_px=32, chunk_px=200)
    rows = sorted({c.core.row_off for c in grid} - {0})
    cols = sorted({c.core.col_off for c in grid} - {0})
    assert rows and cols
    for r in rows:
        assert np.abs(got[:, r - 2 : r + 2] - ref[:, r - 2 : r + 2]).max() < 1e-5
    for c in cols:
        assert np.abs(got[:, :, c - 2 : c + 2] - ref[:, :, c - 2 : c + 2]).max() < 1e-5


def test_predict_scene_writes_cog(rgb_file: Path, tmp_path: Path) -> None:
    net, spec = build_builtin("cheap")
    pred = TilePredictor(net, device="cpu", batch_size=4)
    out = tmp_path / "run"
    res = predict_scene(
        rgb_file,
        pred,
        spec,
        out,
        tile_px=128,
        overlap_px=32,
        chunk_px=256,
        write_probabilities=True,
    )
    src = open_scene(rgb_file)
    with rasterio.open(res.classes_path) as ds:
        assert ds.crs == src.crs and ds.transform == src.transform
        assert (ds.height, ds.width) == src.shape
        assert ds.nodata == 255 and ds.dtypes[0] == "uint8"
        labels = ds.read(1)
        assert ds.colormap(1)[1][:3] == spec.colormap()[1]
        assert ds.overviews(1)
    assert validate_cog(res.classes_path) == []
    assert validate_cog(res.probabilities_path) == []  # type: ignore[arg-type]
    assert read_class_names(res.classes_path) == spec.class_names()
    ref, _ = one_pass(rgb_file, net, spec, tile=128, overlap=32)
    top2 = np.sort(ref, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5  # exact ties may go either way in float32
    assert clear.mean() > 0.99
    assert (labels == ref.argmax(0))[clear].all()
    run = json.loads(res.run_json.read_text())
    assert run["tiles_run"] == run["grid"]["n_tiles"]
    assert set(run["seconds"]) >= {"read", "infer", "blend", "write", "wall"}
    assert run["peak_rss_mb"] > 0
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predict_scene(rgb_file, pred, spec, out, tile_px=128, overlap_px=32, chunk_px=256)


class CountingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.tiles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.tiles += x.shape[0]
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)


def test_nodata_masked_and_empty_chunks_skipped(tmp_path: Path, rgb_array: np.ndarray) -> None:
    arr = rgb_array.copy()
    arr[:, :, :300] = 0  # left part nodata: whole chunks are empty
    arr[:, 400:410, 400:410] = 0
    path = write_tif(tmp_path / "nd.tif", arr, nodata=0)
    model = CountingModel()
    spec = spec_for(2)
    out = predict_scene(
        path,
        TilePredictor(model, device="cpu", batch_size=4),
        spec,
        tmp_path / "run",
        tile_px=128,
        overlap_px=32,
        chunk_px=128,
    )
    with rasterio.open(out.classes_path) as ds:
        labels = ds.read(1)
    invalid = (arr == 0).all(0)
    assert (labels[invalid] == 255).all()
    assert (labels[~invalid] != 255).all()
    grid = plan_scene(open_scene(path), tile_px=128, overlap_px=32, chunk_px=128)
    assert out.stats["chunks_skipped_nodata"] > 0
    assert model.tiles == out.stats["tiles_run"] < grid.n_tiles


def test_alpha_band_masks_output(tmp_path: Path, rgb_array: np.ndarray) -> None:
    alpha = np.full(rgb_array.shape[1:], 255, np.uint8)
    alpha[100:200, 50:90] = 0
    arr = np.concatenate([rgb_array, alpha[None]])
    path = tmp_path / "rgba.tif"
    write_tif(path, arr, photometric="RGB")
    with rasterio.open(path, "r+") as ds:
        from rasterio.enums import ColorInterp

        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    net, spec = build_builtin("cheap")
    out = predict_scene(
        path,
        TilePredictor(net, device="cpu"),
        spec,
        tmp_path / "run",
        tile_px=128,
        overlap_px=32,
        chunk_px=256,
    )
    with rasterio.open(out.classes_path) as ds:
        labels = ds.read(1)
    assert (labels[alpha == 0] == 255).all() and (labels[alpha > 0] != 255).all()


@pytest.mark.parametrize(
    ("shape", "dtype", "bands", "spec_bands", "crs", "res"),
    [
        ((1, 90, 70), np.uint16, 1, (1, 1, 1), "EPSG:32633", 0.5),  # smaller than a tile, pan
        ((4, 300, 170), np.uint8, 4, (3, 2, 1), "EPSG:32633", 0.5),  # 4-band, reordered
        ((3, 210, 333), np.uint8, 3, (1, 2, 3), "EPSG:4326", 4e-6),  # geographic
    ],
)
def test_odd_inputs(
    tmp_path: Path,
    shape: tuple[int, int, int],
    dtype: type,
    bands: int,
    spec_bands: tuple[int, ...],
    crs: str,
    res: float,
) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(1, 200, shape).astype(dtype)
    path = tmp_path / "odd.tif"
    profile = dict(
        driver="GTiff",
        height=shape[1],
        width=shape[2],
        count=shape[0],
        dtype=dtype,
        crs=crs,
        transform=from_origin(
            14.2 if crs == "EPSG:4326" else ORIGIN[0],
            41.9 if crs == "EPSG:4326" else ORIGIN[1],
            res,
            res,
        ),
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(arr)
    model = PositionModel()
    spec = spec_for(4, bands=spec_bands, scale=255.0)
    ref, _ = one_pass(path, model, spec, tile=64, overlap=16)
    got, valid = chunked(path, model, spec, tile=64, overlap=16, chunk=64)
    assert valid.all() and np.abs(got - ref).max() < 1e-5
    res_ = predict_scene(
        path,
        TilePredictor(model, device="cpu"),
        spec,
        tmp_path / "run",
        tile_px=64,
        overlap_px=16,
        chunk_px=128,
    )
    with rasterio.open(res_.classes_path) as ds:
        assert ds.crs.to_string() == crs and ds.shape == shape[1:]
        assert (ds.read(1) == to_labels(ref, np.ones(shape[1:], bool))).all()


def test_missing_bands_is_clear(rgb_file: Path, tmp_path: Path) -> None:
    net, _ = build_builtin("cheap")
    spec = spec_for(3, bands=(1, 2, 5))
    with pytest.raises(BandError, match=r"reads bands \[1, 2, 5\] but scene .* has 3 band"):
        predict_scene(rgb_file, TilePredictor(net, device="cpu"), spec, tmp_path / "run")
    assert not (tmp_path / "run" / "classes.tif").exists()


@pytest.mark.parametrize(
    ("tile", "overlap", "chunk", "match"),
    [
        (128, 128, 512, "overlap"),
        (128, 200, 512, "overlap"),
        (256, 16, 128, "chunk"),
        (0, 0, 512, "tile"),
    ],
)
def test_bad_sizes(rgb_file: Path, tile: int, overlap: int, chunk: int, match: str) -> None:
    with pytest.raises(GridError, match=match):
        plan_scene(open_scene(rgb_file), tile_px=tile, overlap_px=overlap, chunk_px=chunk)


def test_failure_leaves_no_partial_output(rgb_file: Path, tmp_path: Path) -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.n += 1
            if self.n > 3:
                raise RuntimeError("device fell over")
            return x

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="fell over"):
        predict_scene(
            rgb_file,
            TilePredictor(Boom(), device="cpu", batch_size=1, activation="identity"),
            spec_for(3),
            out,
            tile_px=128,
            overlap_px=32,
            chunk_px=128,
        )
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, tempfile
    import numpy as np, rasterio
    from rasterio.transform import from_origin
    from terraseg.api import predict_to_dir
    size = int(sys.argv[1]); tmp = sys.argv[2]
    path = f"{tmp}/s{size}.tif"
    prof = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8",
                crs="EPSG:32633", transform=from_origin(400000, 5000000, 0.5, 0.5),
                tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    rng = np.random.default_rng(0)
    block = rng.integers(0, 255, (3, 512, 512), dtype=np.uint8)
    with rasterio.open(path, "w", **prof) as ds:
        for r in range(0, size, 512):
            for c in range(0, size, 512):
                ds.write(block, window=((r, r + 512), (c, c + 512)))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = predict_to_dir(path, f"{tmp}/out{size}", model="cheap", chunk_px=1024, device="cpu",
                         show_progress=False)
    print(json.dumps({"size": size, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "tiles": res.stats["tiles_run"]}))
    """
)


def _peak_mb(size: int, tmp: Path) -> float:
    env = {"GDAL_CACHEMAX": "64", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(size), str(tmp)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def test_peak_memory_flat_in_scene_size(tmp_path: Path) -> None:
    small = _peak_mb(1024, tmp_path)
    large = _peak_mb(4096, tmp_path)  # 16× the pixels
    assert large <= 1.2 * small, (small, large)


def _seam_row_mb(size: int) -> float:
    """MiB of accumulator strips one chunk row leaves waiting for the next row."""
    grid = ChunkGrid.from_shape((size, size), tile_px=512, overlap_px=64, chunk_px=1024)
    row = [c for c in grid if c.index[0] == 1]
    px = sum(w.height * w.width for c in row for w in c.extent.split_around(c.interior))
    return px * 4 * 4 / 2**20  # (3 classes + weight) float32


@pytest.mark.slow
def test_peak_memory_flat_2048_vs_16384(tmp_path: Path) -> None:
    # 64× the pixels. Memory may grow with the scene's *width* only: one chunk row of
    # seam strips waits for the next row (7.5 → 63.5 MiB here), GDAL's block cache
    # fills up to its cap (GDAL_CACHEMAX=64 in _peak_mb) and the heap may sit up to
    # the trimmer's slack above its last trim. Anything growing with the *area* — a
    # full-scene uint8 array would be +264 MiB — breaks this bound (≈ 200 MiB).
    from terraseg.engine.chunk import MemoryTrimmer

    small = _peak_mb(2048, tmp_path)
    large = _peak_mb(16384, tmp_path)
    allowed = (_seam_row_mb(16384) - _seam_row_mb(2048) + 64
               + MemoryTrimmer().slack / 2**20 + 16)
    assert large - small <= allowed, (small, large, allowed)
