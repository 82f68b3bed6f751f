"""terraseg segment: thresholds, indexes, k-means, SLIC/watershed/Felzenszwalb with global ids, Canny."""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray

from terraseg.cli.main import main
from terraseg.engine.segment import segment_scene
from terraseg.engine.segment_methods import (
    apply_kmeans,
    compute_index,
    evaluate_expression,
    fit_kmeans,
    fit_otsu,
    slic_step_px,
)
from terraseg.engine.segment_output import as_multi
from terraseg.errors import ConfigError, OutputExistsError
from terraseg.io.raster_sink import read_class_names
from terraseg.synthetic import make_city

SIZE_PX = 512


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512² RGB synthetic city at 0.5 m (seed 3)."""
    return make_city(tmp_path_factory.mktemp("rgb") / "city.tif", size_px=SIZE_PX, seed=3).image


@pytest.fixture(scope="module")
def rgbn_nodata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-band (R, G, B, NIR) city, re-written with nodata 0 on a 37-px left border."""
    folder = tmp_path_factory.mktemp("rgbn")
    city = make_city(folder / "src.tif", size_px=(SIZE_PX, 450), seed=5, bands=4)
    with rasterio.open(city.image) as src:
        data, profile = src.read(), src.profile
    data[:, :, :37] = 0
    profile.update(nodata=0, alpha="UNSPECIFIED")  # band 4 is NIR, not alpha
    out = folder / "city_nodata.tif"
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def _read(path: Path) -> NDArray[np.int64]:
    with rasterio.open(path) as ds:
        return np.asarray(ds.read(1), np.int64)


def _image(path: Path) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    with rasterio.open(path) as ds:
        data, nodata = np.asarray(ds.read(), np.float32), ds.nodata
    valid = (data != nodata).any(axis=0) if nodata is not None else np.ones(data.shape[1:], bool)
    return data, valid


# ----------------------------------------------------------------- pure pieces


def test_expression_allows_bands_indexes_and_logic() -> None:
    d = np.array([[[10, 200]], [[50, 50]], [[30, 30]], [[90, 10]]], np.uint8)
    assert evaluate_expression("b1 > 100 or b4 >= 90", d).tolist() == [[True, True]]
    assert evaluate_expression("10 < b1 + 0 < 300 and not ndvi > 0", d).tolist() == [[False, True]]
    assert evaluate_expression("ndwi > -1", d).shape == (1, 2)


@pytest.mark.parametrize(
    ("expr", "match"),
    [
        ("b1 >", "cannot parse"),
        ("b9 > 3", r"names 'b9'; the scene has bands b1\.\.b4"),
        ("__import__('os').system('x')", "not allowed"),
        ("b1.real > 3", "not allowed"),
        ("b1 + 3", "not a condition"),
        ("b1 > 'x'", "not a number"),
    ],
)
def test_bad_expression_is_a_config_error(expr: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        evaluate_expression(expr, np.zeros((4, 2, 2), np.uint8))


def test_indexes_need_their_bands() -> None:
    with pytest.raises(ConfigError, match="needs 4 bands.*use exg"):
        compute_index(np.zeros((3, 2, 2)), "ndvi")
    with pytest.raises(ConfigError, match="unknown index 'savi'"):
        compute_index(np.zeros((4, 2, 2)), "savi")
    assert compute_index(np.zeros((3, 2, 2), np.uint8), "exg").tolist() == [[0, 0], [0, 0]]


def test_otsu_and_kmeans_fits() -> None:
    rng = np.random.default_rng(0)
    v = np.r_[rng.normal(40, 5, 500), rng.normal(180, 5, 500)]
    t, bin_width = fit_otsu(v), np.ptp(v) / 256
    assert v[:500].max() - bin_width <= t < v[500:].min()  # any cut between the modes is optimal
    with pytest.raises(ConfigError, match="two distinct values"):
        fit_otsu(np.full(10, 3.0))
    x = np.r_[rng.normal(0.8, 0.02, (300, 2)), rng.normal(0.1, 0.02, (300, 2))].astype(np.float32)
    c = fit_kmeans(x, 2, seed=1)
    assert c[0].sum() < c[1].sum() and abs(float(c[0, 0]) - 0.1) < 0.02
    assert apply_kmeans(np.array([[[0.05]], [[0.12]]], np.float32), c).tolist() == [[0]]
    with pytest.raises(ConfigError, match="k must be in 2..254"):
        fit_kmeans(x, 1)
    with pytest.raises(ConfigError, match="positive area"):
        slic_step_px(-5.0, 0.25)


# ----------------------------------------------------------------- class methods


def test_threshold_expression_end_to_end(rgb: Path, tmp_path: Path) -> None:
    res = segment_scene(rgb, tmp_path, method="threshold", expression="b1 > 120", chunk_px=200)
    img, _ = _image(rgb)
    classes = _read(res.raster)
    np.testing.assert_array_equal(classes, (img[0] > 120).astype(np.int64))
    assert read_class_names(res.raster) == {0: "background", 1: "foreground"}
    seg = gpd.read_file(res.vectors, layer="segments")
    assert len(seg) == res.n_segments > 10
    assert set(seg["class"]) == {"foreground"}
    # polygons cover exactly the class-1 pixels, whole across chunk borders (chunk 200)
    assert seg["area_m2"].sum() == pytest.approx((classes == 1).sum() * 0.25)
    assert seg.crs == rasterio.open(rgb).crs
    with pytest.raises(OutputExistsError, match="--overwrite"):
        segment_scene(rgb, tmp_path, method="threshold", expression="b1 > 120")


def test_threshold_otsu_on_a_sample(rgb: Path, tmp_path: Path) -> None:
    res = segment_scene(rgb, tmp_path, method="threshold", band=2)
    t = res.params["threshold"]
    img, _ = _image(rgb)
    assert res.params["otsu"] and img[1].min() < t < img[1].max()
    np.testing.assert_array_equal(_read(res.raster), (img[1] > t).astype(np.int64))


def test_index_ndvi_with_nodata(rgbn_nodata: Path, tmp_path: Path) -> None:
    res = segment_scene(rgbn_nodata, tmp_path, method="index", index="ndvi", threshold=0.2,
                        chunk_px=128)
    img, valid = _image(rgbn_nodata)
    classes = _read(res.raster)
    assert (classes[~valid] == 255).all() and (~valid).sum() >= 37 * SIZE_PX
    expect = (compute_index(img, "ndvi") > 0.2).astype(np.int64)
    np.testing.assert_array_equal(classes[valid], expect[valid])
    assert read_class_names(res.raster)[1] == "vegetation"
    with rasterio.open(res.raster) as ds:
        assert ds.colormap(1)[1] == (40, 160, 40, 255)
    seg = gpd.read_file(res.vectors, layer="segments")
    assert seg["area_m2"].sum() == pytest.approx((classes == 1).sum() * 0.25)


def test_index_exg_otsu_and_ndvi_refused_on_rgb(rgb: Path, tmp_path: Path) -> None:
    res = segment_scene(rgb, tmp_path / "exg", method="index", index="exg")
    assert res.params["otsu"] and 0 < (_read(res.raster) == 1).mean() < 1
    with pytest.raises(ConfigError, match="needs 4 bands"):
        segment_scene(rgb, tmp_path / "ndvi", method="index", index="ndvi")
    assert not (tmp_path / "ndvi").exists()  # refused before any output


def test_kmeans_does_not_depend_on_the_chunking(rgb: Path, tmp_path: Path) -> None:
    a = segment_scene(rgb, tmp_path / "a", method="kmeans", k=4, chunk_px=512)
    b = segment_scene(rgb, tmp_path / "b", method="kmeans", k=4, chunk_px=160)
    ca, cb = _read(a.raster), _read(b.raster)
    np.testing.assert_array_equal(ca, cb)
    assert set(np.unique(ca)) == {0, 1, 2, 3}
    assert a.params["centres"] == b.params["centres"]
    with rasterio.open(a.raster) as ds:  # QGIS shows each cluster in its centre's colour
        cmap = ds.colormap(1)
    grey = [sum(cmap[i][:3]) for i in range(4)]
    assert grey == sorted(grey) and cmap[0][3] == 255  # centres are sorted dark to bright
    seg = gpd.read_file(b.vectors, layer="segments")
    assert set(seg["class_id"]) == {0, 1, 2, 3}
    assert seg["area_m2"].sum() == pytest.approx(SIZE_PX * SIZE_PX * 0.25)
    assert len(seg) == a.n_segments  # regions cut by chunk borders are dissolved


# ----------------------------------------------------------------- SLIC


def _border_change(labels: NDArray[np.int64], at: int) -> tuple[float, float]:
    """Share of label changes across row ``at - 1 | at`` and the median over all rows."""
    rows = (labels[1:] != labels[:-1]).mean(axis=1)
    cols = (labels[:, 1:] != labels[:, :-1]).mean(axis=0)
    return max(rows[at - 1], cols[at - 1]), float(np.median(np.r_[rows, cols]))


@pytest.mark.parametrize(
    "method", ["slic", "watershed", pytest.param("felzenszwalb", marks=pytest.mark.slow)]
)  # felzenszwalb: 192 px halos make it the slowest (about 5-9 s here)
def test_region_chunking_changes_nothing(rgb: Path, tmp_path: Path, method: str) -> None:
    small = segment_scene(rgb, tmp_path / "c256", method=method, chunk_px=256)  # type: ignore[arg-type]
    whole = segment_scene(rgb, tmp_path / "c512", method=method, chunk_px=512)  # type: ignore[arg-type]
    assert abs(small.n_segments - whole.n_segments) <= 0.01 * whole.n_segments
    labels = _read(small.raster)
    ids = np.unique(labels)
    assert ids[0] == 1 and ids[-1] == len(ids) == small.n_segments  # global ids 1..N
    at_border, typical = _border_change(labels, 256)
    assert at_border <= 1.5 * typical  # no segment boundary runs along the chunk border
    # the partitions agree: each chunk-256 segment overlaps one chunk-512 segment
    other = _read(whole.raster)
    pair, count = np.unique(labels * (1 << 20) + other, return_counts=True)
    best = np.zeros(labels.max() + 1)
    np.maximum.at(best, pair >> 20, count)
    assert best.sum() / labels.size > 0.99


def test_slic_segments_table(rgb: Path, tmp_path: Path) -> None:
    res = segment_scene(rgb, tmp_path, method="slic", segment_size_m2=100.0, compactness=20.0,
                        chunk_px=300)
    seg = gpd.read_file(res.vectors, layer="segments")
    assert list(seg.columns[:5]) == ["segment_id", "mean_b1", "mean_b2", "mean_b3", "area_m2"]
    assert seg["segment_id"].is_unique
    assert seg["area_m2"].sum() == pytest.approx(SIZE_PX * SIZE_PX * 0.25)
    assert 60 < seg["area_m2"].mean() < 140  # about the asked 100 m²
    assert ((seg["compactness"] > 0) & (seg["compactness"] <= 1)).all()
    labels = _read(res.raster)
    img, _ = _image(rgb)
    one = int(seg["segment_id"].iloc[len(seg) // 2])
    row = seg.set_index("segment_id").loc[one]
    assert row["mean_b2"] == pytest.approx(img[1][labels == one].mean(), rel=1e-6)
    assert row["area_m2"] == pytest.approx((labels == one).sum() * 0.25)
    assert res.params["step_px"] == 20


def test_regions_leave_nodata_unlabelled(rgbn_nodata: Path, tmp_path: Path) -> None:
    _, valid = _image(rgbn_nodata)
    for method in ("slic", "watershed"):
        res = segment_scene(rgbn_nodata, tmp_path / method, method=method, chunk_px=256)
        labels = _read(res.raster)
        assert (labels[~valid] == 0).all() and (labels[valid] > 0).all()
        assert res.params["step_px"] == 14 and 30 < res.read_segments()["area_m2"].mean() < 80


def test_canny_edges_and_lines_do_not_depend_on_the_chunking(rgb: Path, tmp_path: Path) -> None:
    a = segment_scene(rgb, tmp_path / "a", method="canny", chunk_px=200)
    b = segment_scene(rgb, tmp_path / "b", method="canny", chunk_px=512)
    ea, eb = _read(a.raster), _read(b.raster)
    np.testing.assert_array_equal(ea, eb)
    assert 0.01 < (ea == 1).mean() < 0.5 and set(np.unique(ea)) == {0, 1}
    lines = gpd.read_file(a.vectors, layer="edges")
    assert set(lines.geom_type) == {"LineString"} and (lines["length_m"] > 0).all()
    total = b.read_segments()["length_m"].sum()
    assert lines["length_m"].sum() == pytest.approx(total, rel=0.01)
    # an edge line lies on edge pixels: its vertices are within a pixel of one
    with rasterio.open(a.raster) as ds:
        rows, cols = rasterio.transform.rowcol(ds.transform, *lines.geometry.iloc[0].xy)
    near = [ea[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].max() for r, c in zip(rows, cols, strict=True)]
    assert min(near) == 1


def test_stream_segments_appends_batches_and_cleans_up(rgb: Path, tmp_path: Path) -> None:
    import shapely

    from terraseg.engine.segment_output import stream_segments

    crs = rasterio.open(rgb).crs
    raster = segment_scene(rgb, tmp_path / "src", method="threshold", expression="b1 > 120").raster

    def batch(first: int, n: int, **extra: float) -> gpd.GeoDataFrame:
        boxes = [shapely.box(i, 0, i + 1, 1) for i in range(first, first + n)]
        cols = {"segment_id": np.arange(first, first + n), "area_m2": np.ones(n), **extra}
        return as_multi(gpd.GeoDataFrame(cols, geometry=boxes, crs=crs))

    empty = batch(0, 0)
    out = tmp_path / "src"
    n = stream_segments([batch(1, 3), batch(4, 0), batch(4, 2), batch(6, 1)], empty, out,
                        layer="segments", raster=raster, run_info={}, imagery=None,
                        overwrite=True, flush_rows=2)
    back = gpd.read_file(out / "segments.gpkg", layer="segments")
    assert n == 6 and back["segment_id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert set(back.geom_type) == {"MultiPolygon"} and (out / "segments.qgz").exists()
    with pytest.raises(Exception, match="mean_b1"):  # an append that fails...
        stream_segments([batch(1, 3), batch(4, 2, mean_b1=1.0)], empty, out, layer="segments",
                        raster=raster, run_info={}, imagery=None, overwrite=True, flush_rows=2)
    assert not (out / "segments.gpkg").exists() and not (out / "segments.qgz").exists()


# ----------------------------------------------------------------- CLI


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["terraseg", "-q", "segment", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--method", "sobel"], "unknown --method 'sobel'"),
        (["--method", "canny", "--sigma-px", "0"], "sigma_px must be in (0, 8]"),
        (["--method", "canny", "--edge-low", "0.5", "--edge-high", "0.2"], "0 <= low <= high"),
        (["--method", "threshold", "--expr", "b1 >"], "cannot parse expression"),
        (["--method", "index"], "needs --index"),
        (["--method", "index", "--index", "ndvi"], "needs 4 bands"),
        (["--method", "kmeans", "--k", "1"], "k must be in 2..254"),
        (["--method", "slic", "--segment-size-m2", "0"], "segment_size_m2 must be a positive"),
        (["--method", "slic", "--compactness", "0"], "compactness must be positive for slic"),
        (["--method", "watershed", "--compactness", "-1"], "must be zero or positive for watershed"),
        (["--method", "slic", "--chunk-px", "10"], "chunk_px must be at least 64"),
        (["--method", "felzenszwalb", "--scale", "0"], "scale must be positive"),
        (["--method", "felzenszwalb", "--min-size-m2", "-3"], "min_size_m2 must be positive"),
    ],
)
def test_cli_bad_parameters_exit_2(
    rgb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], args: list[str], match: str,
) -> None:
    code, _, err = _cli(monkeypatch, capsys, str(rgb), "--out", str(tmp_path / "o"), *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("terraseg: error: ")
    assert match in err
    assert not (tmp_path / "o").exists()


def test_cli_segment_writes_outputs(
    rgb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _cli(monkeypatch, capsys, str(rgb), "--out", str(tmp_path),
                          "--method", "threshold", "--band", "3")
    assert code == 0, err
    assert "segments" in out and "(Otsu)" in out
    for name in ("classes.tif", "segment.json", "segments.gpkg", "segments.qgz"):
        assert (tmp_path / name).exists()
    code, _, err = _cli(monkeypatch, capsys, str(rgb), "--out", str(tmp_path), "--method", "slic")
    assert code == 2 and "segments.gpkg' already exists" in err  # nothing half-written
    assert not (tmp_path / "segments.tif").exists()


# ----------------------------------------------------------------- notebook API


def test_api_segment_returns_dataarray_and_polygons(rgb: Path, tmp_path: Path) -> None:
    import terraseg

    da, seg = terraseg.segment(rgb, method="threshold", expression="b1 > 120",
                               window=(100, 50, 64, 80), out=tmp_path)
    assert da.dims == ("y", "x") and da.shape == (64, 80) and da.dtype == np.uint8
    assert da.rio.crs == rasterio.open(rgb).crs and da.rio.nodata == 255
    assert da.attrs["classes"] == {0: "background", 1: "foreground"}
    img, _ = _image(rgb)
    np.testing.assert_array_equal(da.values, img[0, 100:164, 50:130] > 120)
    assert da.x.values[0] == pytest.approx(rasterio.open(rgb).xy(100, 50)[0])
    assert len(seg) == len(gpd.read_file(tmp_path / "segments.gpkg", layer="segments"))


def test_api_segment_slic_on_an_in_memory_dataarray(rgb: Path) -> None:
    import rioxarray
    import xarray as xr

    import terraseg

    full = rioxarray.open_rasterio(rgb)
    assert isinstance(full, xr.DataArray)
    arr = full.isel(y=slice(0, 200), x=slice(0, 240)).load()
    ids, seg = terraseg.segment(arr, method="slic", segment_size_m2=80.0, chunk_px=128)
    assert ids.shape == (200, 240) and ids.dtype == np.uint32
    assert set(np.unique(ids.values)) == set(seg["segment_id"])
    with pytest.raises(ConfigError, match="unknown method 'sobel'"):
        terraseg.segment(arr, method="sobel")
