"""Training with torchgeo on synthetic scenes: labels, errors, a tiny run, the CLI."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch

from terraseg.errors import BandError, ConfigError, OutputExistsError
from terraseg.models import load_model
from terraseg.models.train import LabelWarning, rasterize_labels, train_semantic
from terraseg.synthetic import make_city


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512² synthetic scene (seed 3) with truth GeoPackage and class raster beside it."""
    path = tmp_path_factory.mktemp("city") / "city.tif"
    make_city(path, size_px=512, seed=3)
    return path


def truth_gpkg(city: Path) -> Path:
    return city.with_name("city.truth.gpkg")


def truth_tif(city: Path) -> Path:
    return city.with_name("city.truth.tif")


def test_rasterized_vectors_equal_the_truth_raster(city: Path, tmp_path: Path) -> None:
    out = rasterize_labels(truth_gpkg(city), city, tmp_path / "labels.tif", block_rows=100)
    with rasterio.open(out) as a, rasterio.open(truth_tif(city)) as b:
        assert a.transform == b.transform and a.crs == b.crs
        np.testing.assert_array_equal(a.read(1), b.read(1))


def _copy_layers(
    src: Path, dst: Path, *, shift_m: float = 0.0, extra: list[shapely.Geometry] | None = None
) -> Path:
    for layer in ("roads", "buildings"):
        gdf = gpd.read_file(src, layer=layer)
        if shift_m:
            gdf = gdf.set_geometry(gdf.geometry.translate(shift_m, shift_m))
        if extra and layer == "buildings":
            add = gpd.GeoDataFrame(geometry=extra, crs=gdf.crs)
            gdf = gpd.GeoDataFrame(
                {"geometry": [*gdf.geometry, *add.geometry]}, geometry="geometry", crs=gdf.crs
            )
        gdf.to_file(dst, layer=layer)
    return dst


def test_invalid_geometries_are_repaired_with_a_warning(city: Path, tmp_path: Path) -> None:
    with rasterio.open(city) as src:
        left, _, _, top = src.bounds
    x, y = left + 20, top - 20
    bowtie = shapely.Polygon([(x, y), (x + 10, y - 10), (x + 10, y), (x, y - 10)])
    spike = shapely.Polygon(
        [(x + 30, y), (x + 40, y), (x + 40, y - 10), (x + 30, y - 10), (x + 30, y), (x + 50, y)]
    )
    assert not bowtie.is_valid
    extra = [bowtie, spike, shapely.Polygon()]
    labels = _copy_layers(truth_gpkg(city), tmp_path / "bad.gpkg", extra=extra)
    with pytest.warns(LabelWarning) as record:
        out = rasterize_labels(labels, city, tmp_path / "labels.tif")
    messages = [str(w.message) for w in record]
    assert any("repaired 2 invalid geometries with shapely.make_valid" in m for m in messages)
    assert any("skipped 1 empty or missing geometry" in m for m in messages), messages
    with rasterio.open(out) as src:
        assert src.read(1)[40:60, 40:60].max() == 1  # the repaired bowtie was burned


def test_label_errors_are_clear(city: Path, tmp_path: Path) -> None:
    far = _copy_layers(truth_gpkg(city), tmp_path / "far.gpkg", shift_m=100_000.0)
    with pytest.raises(
        ConfigError,
        match=r"labels '.*far.gpkg' do not overlap image '.*city.tif' \(labels bounds .*give "
        "labels for the same area",
    ):
        rasterize_labels(far, city, tmp_path / "x.tif")
    with pytest.raises(
        ConfigError,
        match=r"have no layer\(s\) \['trees'\]; its layers are \['buildings', 'roads', "
        r"'road_centerlines'\]",
    ):
        rasterize_labels(truth_gpkg(city), city, tmp_path / "x.tif", layers={"trees": 1})
    with pytest.raises(
        BandError, match=r"reads bands \[1, 2, 3, 4\] but image '.*city.tif' has 3 band\(s\)"
    ):
        train_semantic(city, truth_gpkg(city), tmp_path / "m", bands=(1, 2, 3, 4), max_steps=1)
    with pytest.raises(ConfigError, match="give epochs or max_steps"):
        train_semantic(city, truth_gpkg(city), tmp_path / "m")
    with pytest.raises(ConfigError, match=r"patch_px=100 must be ≥ 32 and a multiple of \d+"):
        train_semantic(city, truth_gpkg(city), tmp_path / "m", max_steps=1, patch_px=100)
    with pytest.raises(ConfigError, match="labels '.*nothing.gpkg' do not exist"):
        train_semantic(city, tmp_path / "nothing.gpkg", tmp_path / "m", max_steps=1)
    (tmp_path / "m.card.yaml").write_text("x")
    with pytest.raises(OutputExistsError, match="m.card.yaml' already exists"):
        train_semantic(city, truth_gpkg(city), tmp_path / "m", max_steps=1)


def test_tiny_training_run_gives_a_loadable_model(city: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelWarning)  # the synthetic truth is clean
        card = train_semantic(
            city,
            truth_gpkg(city),
            tmp_path / "tiny",
            max_steps=3,
            steps_per_epoch=2,
            batch_size=2,
            patch_px=128,
            seed=5,
            dtype="float16",
            command="pytest",
        )
    assert (tmp_path / "tiny.safetensors").exists() and (tmp_path / "tiny.card.yaml").exists()
    assert card.name == "tiny" and card.gsd_m == 0.5
    assert card.training is not None and card.training.steps == 3 and card.training.seed == 5
    assert card.training.command == "pytest"
    expected = {"val_iou_background", "val_iou_building", "val_iou_road", "val_miou"}
    assert expected <= set(card.metrics)
    assert "southern 20%" in (card.evaluation or "")
    net, loaded = load_model(tmp_path / "tiny.safetensors")
    assert loaded == card
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64)


def test_cli_train_with_raster_labels(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from terraseg.cli.main import main

    out = tmp_path / "cli"
    argv = [
        "terraseg",
        "train",
        str(city),
        str(truth_tif(city)),
        "--out",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--patch-px",
        "128",
        "--val",
        f"{city},{truth_tif(city)}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert f"wrote {out}.safetensors and {out}.card.yaml" in capsys.readouterr().out
    _, card = load_model(f"{out}.card.yaml")
    assert card.training is not None and card.training.command is not None
    assert card.training.command.startswith("terraseg train ")
    assert "held-out scene(s)" in (card.evaluation or "")
    # errors: one line, exit status 2
    monkeypatch.setattr(sys, "argv", [*argv[:8], "--layer", "oops"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "terraseg: error: --layer must be NAME=CLASS (e.g. buildings=1), got 'oops'"
    )


@pytest.mark.parametrize("size_px", [96, 100])
def test_validation_patches_lie_inside_the_scene(tmp_path: Path, size_px: int) -> None:
    """torchgeo's grid puts its last row and column of patches past the data (patch a hair under
    the stride, or a side that is no whole number of strides); validation would count them as
    black image over background. InsideGrid moves them back in: every pixel is inside, once or
    (the last, moved patch of a 100-px side) twice, never outside."""
    from rasterio.transform import from_origin
    from torchgeo.samplers import GridGeoSampler, Units

    from terraseg.models.datasets import InsideGrid, _crs_size, _raster_classes

    path = tmp_path / "img" / "a.tif"
    path.parent.mkdir()
    left, top, res = 500000.0, 4000000.0, 0.5
    with rasterio.open(path, "w", driver="GTiff", width=size_px, height=size_px, count=1,
                       dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(left, top, res, res)) as ds:
        ds.write(np.ones((1, size_px, size_px), np.uint8))
    image_cls, _ = _raster_classes()
    ds = image_cls(paths=[str(path.parent)])
    size = _crs_size(ds, 32)
    raw = list(GridGeoSampler(ds, size=size, stride=size, units=Units.CRS))
    right, bottom = left + size_px * res, top - size_px * res
    assert any(sx.stop > right + 1e-3 or sy.start < bottom - 1e-3 or sy.stop > top + 1e-3
               for sx, sy, _ in raw)  # what torchgeo gives
    inside = list(InsideGrid(GridGeoSampler(ds, size=size, stride=size, units=Units.CRS)))
    assert len(inside) == (3 if size_px == 96 else 4) ** 2
    cover = np.zeros((size_px, size_px), int)
    for sx, sy, _ in inside:
        assert left - 1e-6 <= sx.start and sx.stop <= right + 1e-6
        assert bottom - 1e-6 <= sy.start and sy.stop <= top + 1e-6
        c0, r0 = round((sx.start - left) / res), round((top - sy.stop) / res)
        cover[r0:r0 + 32, c0:c0 + 32] += 1
    assert cover.min() >= 1 and cover.max() <= (1 if size_px == 96 else 4)
    patch = ds[inside[-1]]["image"]  # the moved patch reads the scene, not the void past it
    assert tuple(patch.shape[-2:]) == (32, 32) and bool((patch == 1).all())


def test_precision_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from terraseg.models import task

    monkeypatch.setattr(task, "native_cpu_bf16", lambda: True)
    assert task.resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(task, "native_cpu_bf16", lambda: False)  # emulated bf16 is slower
    assert task.resolve_precision("auto", "cpu") == "32"
    assert task.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # asked for: given
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert task.resolve_precision("auto", "gpu") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert task.resolve_precision("auto", "gpu") == "bf16-mixed"
    assert task.resolve_precision("32", "gpu") == "32"
    with pytest.raises(ConfigError, match="precision 16-mixed needs a GPU"):
        task.resolve_precision("16-mixed", "cpu")


@pytest.mark.parametrize("precision", ["bf16-mixed", "32"])
def test_mixed_precision_trains_under_autocast_channels_last(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """The network sees bfloat16 autocast and channels-last images; the saved weights do not."""
    from terraseg.models import task

    seen: list[tuple[bool, bool]] = []
    build = task.build_network

    def spying_build(*args: object, **kwargs: object) -> torch.nn.Module:
        net = build(*args, **kwargs)  # type: ignore[arg-type]

        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if module.training:
                x = inputs[0]
                seen.append((torch.is_autocast_enabled("cpu"),
                             x.is_contiguous(memory_format=torch.channels_last)))

        net.register_forward_pre_hook(record)
        return net

    monkeypatch.setattr(task, "build_network", spying_build)
    card = train_semantic(city, truth_gpkg(city), tmp_path / "m", max_steps=2, batch_size=2,
                          patch_px=128, precision=precision, accelerator="cpu")
    mixed = precision == "bf16-mixed"
    assert seen and set(seen) == {(mixed, mixed)}
    assert card.training is not None and card.training.precision == precision
    net, loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.training is not None and loaded.training.precision == precision
    assert all(p.is_contiguous() for p in net.parameters())
    assert all(np.isfinite(v) for k, v in card.metrics.items() if k.startswith("val_iou_b"))


def test_cli_refuses_float16_training_on_the_cpu(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from terraseg.cli.main import main

    monkeypatch.setattr(sys, "argv", [
        "terraseg", "train", str(city), str(truth_tif(city)), "--out", str(tmp_path / "m"),
        "--max-steps", "1", "--accelerator", "cpu", "--precision", "16-mixed"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("terraseg: error: precision 16-mixed needs a GPU"), err
    assert "\n" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("loss", ["ce", "focal", "jaccard", "dice", "ce+dice", "lovasz"])
def test_every_loss_runs_under_bfloat16_autocast(loss: str) -> None:
    """Mixed precision computes the loss in float32 (smp's Lovász fails on bfloat16 logits)."""
    from terraseg.models.losses import build_loss
    from terraseg.models.task import Float32Loss

    criterion = Float32Loss(build_loss(loss, ignore_index=255, class_weights=None))
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = criterion(logits.to(torch.bfloat16), target)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
