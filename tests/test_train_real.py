"""Training for real imagery: augmentation, label extents, the training record, options."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from real_data import real_root

from terraseg.config import TrainConfig
from terraseg.errors import ConfigError, OutputExistsError
from terraseg.models import load_model
from terraseg.models.augment import AUGMENTATIONS, PRESETS, augment_names, augment_sample
from terraseg.models.datasets import training_areas
from terraseg.models.extent import mask_outside_extent
from terraseg.models.labels import DEFAULT_LAYERS, rasterize_labels
from terraseg.models.records import EpochRecord
from terraseg.models.spec import IGNORE_LABEL
from terraseg.models.train import train_semantic
from terraseg.synthetic import make_city


def _coded_sample(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-band 64² image whose band 4 encodes the mask (class / 10), 3 random RGB bands.

    The mask is made of 8-px blocks, so resampling leaves uniform areas to compare.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (8, 8), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)
    y[:10, :20] = 1  # an asymmetric block, so a wrong rotation shows
    x = torch.cat([torch.rand(3, 64, 64, generator=g), (y.float() / 10)[None]])
    return x, y


@pytest.mark.parametrize("name", ["d4", "scale"])
def test_geometric_augmentations_keep_image_and_mask_aligned(name: str) -> None:
    for seed in range(16):
        x, y = _coded_sample(seed)
        rng = np.random.default_rng(seed)
        xa, ya = AUGMENTATIONS[name](x, y, rng)
        assert xa.shape == x.shape and ya.shape == y.shape
        labelled = ya != IGNORE_LABEL
        assert set(ya.unique().tolist()) <= {0, 1, 2, IGNORE_LABEL}
        if name == "d4":
            assert labelled.all()
            # the rotated/flipped coding band is exactly the rotated/flipped mask
            assert torch.equal(xa[3], ya.float() / 10)
        else:
            # bilinear blurs the coding band at class borders: compare where the 5x5
            # neighbourhood of the mask is uniform
            pad = torch.nn.functional.pad(ya[None, None].float(), (2, 2, 2, 2), mode="replicate")
            uniform = (
                torch.nn.functional.max_pool2d(pad, 5, 1)[0, 0]
                == -torch.nn.functional.max_pool2d(-pad, 5, 1)[0, 0]
            )
            inner = labelled & uniform
            assert inner.sum() > 100
            assert torch.allclose(xa[3][inner], ya[inner].float() / 10, atol=1e-5)
            # outside the resized patch: image zeros, mask unlabelled (never background)
            assert (xa[:, ~labelled] == 0).all()


def test_scale_jitter_pads_the_mask_with_ignore_when_zooming_out() -> None:
    x, y = _coded_sample()
    seen = False
    for seed in range(30):
        _, ya = AUGMENTATIONS["scale"](x, y, np.random.default_rng(seed))
        if (ya == IGNORE_LABEL).any():
            seen = True
            assert not (ya == IGNORE_LABEL).all()
    assert seen


@pytest.mark.parametrize(
    "name", ["brightness", "contrast", "hue", "colour", "desaturate", "blur", "noise"]
)
def test_photometric_augmentations_keep_values_in_range_and_the_mask(name: str) -> None:
    changed = False
    for seed in range(16):
        x, y = _coded_sample(seed)
        xa, ya = AUGMENTATIONS[name](x.clone(), y.clone(), np.random.default_rng(seed))
        assert torch.equal(ya, y)
        assert xa.shape == x.shape and torch.isfinite(xa).all()
        assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
        changed |= not torch.equal(xa, x)
    assert changed


@pytest.mark.parametrize("name", ["hue", "colour", "desaturate"])
def test_hue_keeps_grey_pixels_grey(name: str) -> None:
    x = torch.full((3, 8, 8), 0.4)
    for seed in range(8):
        xa, _ = AUGMENTATIONS[name](x, torch.zeros(8, 8, dtype=torch.long),
                                    np.random.default_rng(seed))
        assert torch.allclose(xa, x, atol=1e-6)


def test_colour_turns_a_red_roof_any_hue_or_grey() -> None:
    """`colour` reaches hues far from the input's (unlike `hue`'s ±18°) and greys, on about
    half the samples; the other bands and the mask are untouched."""
    x = torch.zeros(4, 8, 8)
    x[0], x[1], x[2], x[3] = 0.7, 0.2, 0.2, 0.9  # a red roof, and a fourth band
    y = torch.zeros(8, 8, dtype=torch.long)
    dominant, greyish, unchanged = set(), 0, 0
    for seed in range(64):
        xa, ya = AUGMENTATIONS["colour"](x.clone(), y.clone(), np.random.default_rng(seed))
        assert torch.equal(ya, y) and torch.equal(xa[3], x[3])
        rgb = xa[:3, 0, 0]
        unchanged += torch.equal(xa, x)
        if float(rgb.max() - rgb.min()) < 0.05:
            greyish += 1
        else:
            dominant.add(int(rgb.argmax()))
    assert dominant == {0, 1, 2}  # red, green and blue roofs
    assert greyish >= 1
    assert 16 <= unchanged <= 48


def test_desaturate_pulls_a_red_roof_towards_grey_and_keeps_its_hue() -> None:
    """`desaturate` changes about a quarter of the samples; a changed red roof keeps its
    grey level and its hue (red stays the largest band) with at most half its saturation."""
    x = torch.zeros(4, 8, 8)
    x[0], x[1], x[2], x[3] = 0.7, 0.2, 0.2, 0.9
    y = torch.zeros(8, 8, dtype=torch.long)
    changed = 0
    for seed in range(80):
        xa, ya = AUGMENTATIONS["desaturate"](x.clone(), y.clone(), np.random.default_rng(seed))
        assert torch.equal(ya, y) and torch.equal(xa[3], x[3])
        if torch.equal(xa, x):
            continue
        changed += 1
        rgb = xa[:3, 0, 0]
        assert float(rgb.mean()) == pytest.approx(float(x[:3, 0, 0].mean()), abs=1e-6)
        assert float(rgb[0] - rgb[1]) <= 0.5 * 0.5 + 1e-6  # saturation gain ≤ 0.5
        assert float(rgb[1]) == pytest.approx(float(rgb[2])) and rgb[0] >= rgb[1]
    assert 8 <= changed <= 35


def test_augmentation_is_deterministic_from_the_seed() -> None:
    x, y = _coded_sample()
    names = PRESETS["full"]
    a = augment_sample(x, y, names, np.random.default_rng(7))
    b = augment_sample(x, y, names, np.random.default_rng(7))
    c = augment_sample(x, y, names, np.random.default_rng(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_augment_names() -> None:
    from terraseg.config import AUGMENT_NAMES, AUGMENT_PRESETS

    assert AUGMENT_NAMES == tuple(AUGMENTATIONS) and AUGMENT_PRESETS == tuple(PRESETS)
    with pytest.raises(ConfigError, match=r"augment: unknown augmentation\(s\) \['flip'\]"):
        TrainConfig.checked({"augment": ["d4", "flip"]})
    assert augment_names("none") == ()
    full = tuple(n for n in AUGMENTATIONS if n not in ("colour", "desaturate"))
    assert augment_names("full") == full
    assert augment_names("places") == tuple(n for n in AUGMENTATIONS if n != "desaturate")
    assert augment_names("muted") == tuple(n for n in AUGMENTATIONS if n != "colour")
    assert augment_names("noise,d4") == ("d4", "noise")
    with pytest.raises(ValueError, match=r"unknown augmentation\(s\) \['rotate'\]"):
        augment_names(["rotate"])


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256² synthetic scene (seed 3) with truth GeoPackage and class raster beside it."""
    path = tmp_path_factory.mktemp("city") / "city.tif"
    make_city(path, size_px=256, seed=3)
    return path


TINY = {"max_steps": 2, "steps_per_epoch": 1, "batch_size": 2, "patch_px": 64, "seed": 1}


def test_training_with_full_augmentation_and_a_bad_name(city: Path, tmp_path: Path) -> None:
    card = train_semantic(
        city, city.with_name("city.truth.gpkg"), tmp_path / "aug", augment="full", **TINY
    )
    assert np.isfinite(card.metrics["val_miou"])
    with pytest.raises(ConfigError, match=r"augment: unknown augmentation\(s\) \['flop'\]"):
        train_semantic(
            city, city.with_name("city.truth.gpkg"), tmp_path / "x", augment="d4,flop", **TINY
        )


# --------------------------------------------------------------------------- label extent


def _west_half_extent(city: Path, path: Path) -> Path:
    """The western half of the city as a GeoJSON polygon in EPSG:4326 (reprojected on use)."""
    with rasterio.open(city) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    box = shapely.box(left, bottom, (left + right) / 2, top)
    gpd.GeoDataFrame(geometry=[box], crs=crs).to_crs("EPSG:4326").to_file(path)
    return path


def test_label_extent_masks_labels_outside_it(city: Path, tmp_path: Path) -> None:
    extent = _west_half_extent(city, tmp_path / "extent.geojson")
    out, _ = mask_outside_extent(city.with_name("city.truth.tif"), extent, tmp_path / "m.tif")
    with rasterio.open(out) as a, rasterio.open(city.with_name("city.truth.tif")) as b:
        masked, truth = a.read(1), b.read(1)
        assert a.transform == b.transform
    # reprojection through EPSG:4326 moves the edge by a fraction of a pixel at most
    assert (masked[:, 130:] == IGNORE_LABEL).all()
    np.testing.assert_array_equal(masked[:, :126], truth[:, :126])
    assert (masked[:, :126] != IGNORE_LABEL).all()


def test_training_with_a_label_extent(city: Path, tmp_path: Path) -> None:
    extent = _west_half_extent(city, tmp_path / "extent.geojson")
    cfg = TrainConfig(label_extent=str(extent), val_fraction=0.25, **TINY)
    areas = training_areas(
        city,
        city.with_name("city.truth.gpkg"),
        None,
        None,
        layers=DEFAULT_LAYERS,
        cfg=cfg,
        n_classes=3,
        workdir=tmp_path,
    )
    with rasterio.open(city) as src:
        left, _, right, _ = src.bounds
    roi, val = areas.train_rois[0], areas.val_rois[0]
    assert roi is not None
    assert roi.bounds[2] <= (left + right) / 2 + 1 and val.bounds[2] <= (left + right) / 2 + 1
    with rasterio.open(areas.train[0].labels) as src:
        assert (src.read(1)[:, 130:] == IGNORE_LABEL).all()
    card = train_semantic(city, city.with_name("city.truth.gpkg"), tmp_path / "m", cfg)
    assert np.isfinite(card.metrics["val_miou"])


def test_label_extent_errors(city: Path, tmp_path: Path) -> None:
    gpkg = city.with_name("city.truth.gpkg")
    with pytest.raises(ConfigError, match=r"label extent '.*nope.geojson' does not exist"):
        train_semantic(city, gpkg, tmp_path / "m", label_extent="nope.geojson", **TINY)
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:4326").to_file(far)
    with pytest.raises(ConfigError, match=r"label extent '.*far.geojson' does not overlap"):
        train_semantic(city, gpkg, tmp_path / "m", label_extent=str(far), **TINY)
    with pytest.raises(ConfigError, match="label_extent lists 2 files for 1 training image"):
        train_semantic(city, gpkg, tmp_path / "m", label_extent=[str(far)] * 2, **TINY)


def test_banepa_north_labels_are_masked_outside_the_label_extent(tmp_path: Path) -> None:
    folder = real_root() / "banepa_north_oam_z19_buildings"
    if not (folder / "banepa_north_oam_z19.tif").exists():
        pytest.skip(f"real data not found in {folder} (set TERRASEG_REAL_DATA)")
    image = folder / "banepa_north_oam_z19.tif"
    labels = rasterize_labels(
        folder / "labels_osm.geojson", image, tmp_path / "l.tif", layers={"buildings": 1}
    )
    out, _ = mask_outside_extent(labels, folder / "label_extent_bbox.geojson", tmp_path / "m.tif")
    with rasterio.open(labels) as a, rasterio.open(out) as b:
        before, after = a.read(1), b.read(1)
    ignored = after == IGNORE_LABEL
    # the extent is the labels' bounding box: every building pixel stays, a margin is ignored
    assert (after[before == 1] == 1).mean() > 0.99
    assert 0.05 < ignored.mean() < 0.6
    assert ignored[:, 0].all() and ignored[0, :].all()  # west strip and north edge unlabelled


# --------------------------------------------------------------------------- training record


def test_metrics_csv_best_epoch_and_early_stopping(
    city: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = train_semantic(
        city,
        city.with_name("city.truth.gpkg"),
        tmp_path / "rec",
        epochs=4,
        steps_per_epoch=1,
        batch_size=2,
        patch_px=64,
        seed=1,
        lr=0.05,
        # the held-out strip (the southern 64 px) holds no building: its building IoU is
        # undefined (nan) every epoch, so the monitor is the mean IoU
        monitor="val_miou",
        patience=1,
        progress=True,
    )
    with open(tmp_path / "rec.metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert not (tmp_path / "rec.metrics.csv.part").exists()
    assert rows and list(rows[0])[:4] == ["epoch", "step", "seconds", "train_loss"]
    assert {"val_iou_building", "val_miou", "val_pixel_accuracy"} <= set(rows[0])
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    values = [float(r["val_miou"]) for r in rows]
    training = card.training
    assert training is not None and training.monitor == "val_miou"
    best = training.best_epoch
    assert best is not None and values[best - 1] == max(v for v in values if v == v)
    assert card.metrics["val_miou"] == pytest.approx(values[best - 1])
    assert len(rows) == 4 or len(rows) == best + 1  # all epochs, or stopped early
    assert f"after epoch {best} of {len(rows)}" in (card.evaluation or "")
    assert "rec.metrics.csv" in (card.evaluation or "")
    err = capsys.readouterr().err
    assert "epoch 1/4 (step 1/4" in err and "val_miou" in err
    # the saved weights are the best epoch's: re-scoring them gives its figures
    net, _ = load_model(tmp_path / "rec.safetensors")
    assert sum(p.numel() for p in net.parameters()) > 0


def test_best_epoch_rule_and_early_stopping(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from terraseg.models.records import TrainingRecord, training_record
    from terraseg.models.spec import DEFAULT_CLASSES

    rec = TrainingRecord("val_miou")
    assert rec.is_better(float("nan"))  # the first epoch is the best so far, even NaN
    rec.best = EpochRecord(1, 1, 0.0, 1.0, {"val_miou": float("nan")})
    assert rec.is_better(0.1) and not rec.is_better(float("nan"))
    rec.best = EpochRecord(2, 2, 0.0, 1.0, {"val_miou": 0.5})
    assert rec.is_better(0.6) and not rec.is_better(0.5) and not rec.is_better(0.4)

    class Scripted(torch.nn.Module):
        """Predicts 'building' on a growing then shrinking share of the patch."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.cols = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 3, *x.shape[2:])
            out[:, 0] = 1.0
            out[:, 1, :, : self.cols] = 2.0
            return out + self.w

    mask = torch.ones(1, 8, 8, dtype=torch.long)
    batches = [{"image": torch.zeros(1, 3, 8, 8), "mask": mask}]
    callback, record = training_record(
        batches,
        DEFAULT_CLASSES,
        monitor="val_iou_building",
        patience=2,
        csv_path=tmp_path / "m.csv",
        total_steps=10,
        n_epochs=10,
        progress=False,
    )
    net = Scripted()
    module = SimpleNamespace(model=net)
    trainer = SimpleNamespace(global_step=0, should_stop=False)
    for epoch, cols in enumerate([2, 6, 4, 5, 7], start=1):
        net.cols = cols
        trainer.global_step = epoch
        callback.on_train_epoch_start(trainer, module)
        callback.on_train_batch_end(trainer, module, torch.tensor(float(epoch)), None, 0)
        callback.on_train_epoch_end(trainer, module)
        if trainer.should_stop:
            break
    # IoU 2/8, 6/8, 4/8, 5/8: epoch 2 is best, two epochs without better: stop after epoch 4
    assert record.best is not None and record.best.epoch == 2 and record.stopped_early
    assert [r.epoch for r in record.epochs] == [1, 2, 3, 4]
    assert record.best.metrics["val_iou_building"] == pytest.approx(0.75)
    assert record.best_state is not None
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[2].startswith("2,2,") and ",2.0," in rows[2]


def test_monitor_and_metrics_csv_errors(city: Path, tmp_path: Path) -> None:
    gpkg = city.with_name("city.truth.gpkg")
    with pytest.raises(
        ConfigError,
        match=r"monitor 'val_iou_tree' is not a validation metric; "
        "use one of val_iou_background, val_iou_building",
    ):
        train_semantic(city, gpkg, tmp_path / "m", monitor="val_iou_tree", **TINY)
    (tmp_path / "m.metrics.csv").write_text("x")
    with pytest.raises(OutputExistsError, match="m.metrics.csv' already exists"):
        train_semantic(city, gpkg, tmp_path / "m", **TINY)


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", ["Unet", "unet++", "FPN", "deeplabv3+"])
def test_each_architecture_trains_saves_and_loads(arch: str, city: Path, tmp_path: Path) -> None:
    card = train_semantic(
        city,
        city.with_name("city.truth.gpkg"),
        tmp_path / "a",
        arch=arch,
        encoder="tu-mobilenetv3_small_050",
        dtype="float16",
        **{**TINY, "max_steps": 1},
    )
    expected = {"unet++": "UnetPlusPlus", "deeplabv3+": "DeepLabV3Plus"}.get(arch, arch)
    assert card.architecture.name == expected
    assert card.architecture.kwargs["encoder_name"] == "tu-mobilenetv3_small_050"
    net, loaded = load_model(tmp_path / "a.safetensors")
    assert loaded == card
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_architecture_errors(city: Path, tmp_path: Path) -> None:
    gpkg = city.with_name("city.truth.gpkg")
    with pytest.raises(ConfigError, match="unknown smp architecture 'Segnet'"):
        train_semantic(city, gpkg, tmp_path / "m", arch="Segnet", **TINY)
    with pytest.raises(ConfigError, match="DeepLabV3Plus needs batch_size ≥ 2"):
        train_semantic(city, gpkg, tmp_path / "m", arch="deeplabv3+", **{**TINY, "batch_size": 1})
    with pytest.raises(ConfigError, match="give architecture or arch/encoder, not both"):
        train_semantic(
            city, gpkg, tmp_path / "m", arch="FPN", architecture={"library": "smp"}, **TINY
        )
    with pytest.raises(
        ConfigError,
        match=r"cannot build smp.Unet\(encoder_name='no-such-net'.*"
        r"check arch/encoder \(--arch/--encoder\) or architecture",
    ):
        train_semantic(city, gpkg, tmp_path / "m", encoder="no-such-net", **TINY)


def test_lovasz_trains_and_class_weights_need_a_weighted_loss(city: Path, tmp_path: Path) -> None:
    gpkg = city.with_name("city.truth.gpkg")
    card = train_semantic(city, gpkg, tmp_path / "l", loss="lovasz", **{**TINY, "max_steps": 1})
    assert np.isfinite(card.metrics["val_miou"])
    with pytest.raises(
        ConfigError, match="class_weights apply to the losses ce, ce\\+dice and focal, not dice"
    ):
        train_semantic(city, gpkg, tmp_path / "m", loss="dice", class_weights=[1, 2, 3], **TINY)


# --------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_adapt_input_conv_keeps_the_response_to_grey(n: int) -> None:
    from terraseg.models.finetune import adapt_input_conv

    w = torch.randn(8, 3, 3, 3)
    grey = torch.rand(1, 1, 16, 16)
    rgb_out = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), w)
    wn = adapt_input_conv(w, n)
    assert wn.shape == (8, n, 3, 3)
    assert torch.allclose(
        torch.nn.functional.conv2d(grey.repeat(1, n, 1, 1), wn), rgb_out, atol=1e-5
    )
    if n == 4:  # G and B keep their kernels; R is split between bands 1 and 4
        assert torch.equal(wn[:, 1:3], w[:, 1:3])
        assert torch.allclose(wn[:, 0] + wn[:, 3], w[:, 0])


@pytest.mark.parametrize("bands", [(1,), (1, 2, 3, 1)])
def test_init_from_a_3_band_model_fits_other_band_counts(
    bands: tuple[int, ...], city: Path, tmp_path: Path
) -> None:

    gpkg = city.with_name("city.truth.gpkg")
    start = tmp_path / "rgb"
    train_semantic(city, gpkg, start, **{**TINY, "max_steps": 1})
    card = train_semantic(
        city,
        gpkg,
        tmp_path / "ft",
        init_from=f"{start}.safetensors",
        bands=bands,
        **{**TINY, "max_steps": 1},
    )
    assert card.input.bands == bands and card.architecture.kwargs["in_channels"] == len(bands)
    assert card.training is not None and card.training.init_from is not None
    assert f"first convolution fitted from 3 to {len(bands)} band(s)" in card.training.init_from
    net, _ = load_model(tmp_path / "ft.safetensors")
    with torch.inference_mode():
        assert net(torch.rand(1, len(bands), 64, 64)).shape == (1, 3, 64, 64)


# --------------------------------------------------------------------------- GSD


def test_target_grid_and_resampling(city: Path, tmp_path: Path) -> None:
    from terraseg.io.scene import open_scene
    from terraseg.models.resample import resample_to_grid, target_grid

    scene = open_scene(city)  # 256² at 0.5 m
    grid = target_grid(scene, 1.0)
    transform, rows, cols = grid
    assert (rows, cols) == (128, 128) and transform.a == pytest.approx(1.0, rel=1e-3)  # UTM k
    img = resample_to_grid(city, tmp_path / "i.tif", scene, grid, labels=False)
    lab = resample_to_grid(
        city.with_name("city.truth.tif"), tmp_path / "l.tif", scene, grid, labels=True
    )
    with rasterio.open(img) as a, rasterio.open(lab) as b, rasterio.open(city) as c:
        assert a.bounds == pytest.approx(c.bounds) and a.crs == c.crs and a.count == c.count
        src = c.read().astype(float)
        avg = src.reshape(3, 128, 2, 128, 2).mean((2, 4))
        err = np.abs(a.read().astype(float) - avg)  # 2x2 averages (the grid is 0.04 % off)
        assert err.mean() < 0.6 and np.percentile(err, 95) <= 2.0
        labels = b.read(1)
        assert set(np.unique(labels)) <= {0, 1, 2}


def test_training_at_another_gsd(city: Path, tmp_path: Path) -> None:
    card = train_semantic(
        city,
        city.with_name("city.truth.gpkg"),
        tmp_path / "g",
        gsd_m=1.0,
        task="boundary",
        **{**TINY, "max_steps": 1},
    )
    assert card.gsd_m == 1.0
    assert card.training is not None and card.training.data == ["city.tif"]
    assert 0.0 <= card.metrics["val_f1_building"] <= 1.0  # a boundary model: instance F1 too


# --------------------------------------------------------------------------- CLI and workflow


def test_cli_train_with_the_real_data_options(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from terraseg.cli.main import main

    extent = _west_half_extent(city, tmp_path / "extent.geojson")
    out = tmp_path / "cli"
    argv = [
        "terraseg", "train", str(city), str(city.with_name("city.truth.gpkg")), "--out", str(out),
        "--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "2", "--patch-px", "64",
        "--arch", "fpn", "--encoder", "tu-mobilenetv3_small_050", "--loss", "lovasz",
        "--augment", "places", "--label-extent", str(extent), "--gsd-m", "0.5",
        "--monitor", "val_iou_building", "--patience", "3", "--accelerator", "auto",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    main()
    said = capsys.readouterr().out
    assert f"wrote {out}.safetensors" in said and f"every epoch in {out}.metrics.csv" in said
    _, card = load_model(f"{out}.card.yaml")
    assert card.architecture.name == "FPN" and card.gsd_m == 0.5
    assert card.training is not None and card.training.monitor == "val_iou_building"
    assert card.training.hardware is not None and card.training.hardware.startswith("cpu")
    assert len((tmp_path / "cli.metrics.csv").read_text().splitlines()) == 3
    monkeypatch.setattr(
        sys, "argv", [*argv[:6], "--augment", "rotate", "--max-steps", "1", "--overwrite"]
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "terraseg: error: augment: unknown augmentation(s) ['rotate']; use a preset (none, "
        "basic, full, muted, places) or names from d4, brightness, contrast, hue, colour, "
        "desaturate, scale, blur, noise"
    )


def test_workflow_train_stage_takes_the_new_keys(city: Path, tmp_path: Path) -> None:
    from terraseg.config import load_workflow
    from terraseg.engine.batch import run_workflow

    data = tmp_path / "data"
    data.mkdir()
    _west_half_extent(city, data / "extent.geojson")
    wf_path = tmp_path / "train.yaml"
    wf_path.write_text(
        f"""
version: 1
name: t
stages: [train]
outputs: {{dir: {tmp_path / "out"}}}
train:
  image: {city}
  labels: {city.with_name("city.truth.gpkg")}
  out: m
  label_extent: data/extent.geojson
  augment: [d4, noise]
  max_steps: 2
  steps_per_epoch: 1
  batch_size: 2
  patch_px: 64
  monitor: val_iou_building
""",
        encoding="utf-8",
    )
    result = run_workflow(load_workflow(wf_path))
    weights = Path(result.scenes[0].outputs["weights"])
    assert weights.exists() and weights.with_name("m.metrics.csv").exists()


def test_instance_f1_of_boundary_validation() -> None:
    from terraseg.models.records import InstanceCounts

    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    for c0 in (2, 12):  # two touching 10x10 buildings: edge ring 3, interior 1
        labels[0, 2:12, c0 : c0 + 10] = 3
        labels[0, 3:11, c0 + 1 : c0 + 9] = 1
    labels[0, 20:28, 20:28] = 3
    labels[0, 21:27, 21:27] = 1

    def logits_of(lab: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(lab.clamp(0, 3), 4).permute(0, 3, 1, 2).float() * 20

    perfect = InstanceCounts(1, 3)
    perfect(logits_of(labels), labels)
    assert (perfect.tp, perfect.n_pred, perfect.n_true) == (3, 3, 3) and perfect.f1() == 1.0
    merged = labels.clone()
    merged[merged == 3] = 1  # no edges predicted: the touching pair comes out as one blob
    blob = InstanceCounts(1, 3)
    blob(logits_of(merged), labels)
    # the blob has IoU 0.5 with each of the pair but matches one (one-to-one), plus the third
    assert blob.tp == 2 and blob.n_pred == 2 and blob.f1() == pytest.approx(4 / 5)
    # a predicted building on unlabelled pixels is no false positive
    unlabelled = labels.clone()
    unlabelled[0, 20:28, 20:28] = IGNORE_LABEL
    ignored = InstanceCounts(1, 3)
    ignored(logits_of(labels), unlabelled)
    assert (ignored.tp, ignored.n_pred, ignored.n_true) == (2, 2, 2)


def test_detection_refuses_the_semantic_only_settings(city: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task 'detection' does not take gsd_m, patience"):
        train_semantic(
            city,
            city.with_name("city.truth.gpkg"),
            tmp_path / "d",
            task="detection",
            gsd_m=1.0,
            patience=2,
            **TINY,
        )


def test_validation_scenes_take_a_label_extent(city: Path, tmp_path: Path) -> None:
    extent = _west_half_extent(city, tmp_path / "extent.geojson")
    gpkg = city.with_name("city.truth.gpkg")
    cfg = TrainConfig(val_label_extent=str(extent), **TINY)
    areas = training_areas(
        city, gpkg, city, gpkg, layers=DEFAULT_LAYERS, cfg=cfg, n_classes=3, workdir=tmp_path
    )
    with rasterio.open(areas.val[0].labels) as v, rasterio.open(areas.train[0].labels) as t:
        assert (v.read(1)[:, 130:] == IGNORE_LABEL).all()
        assert not (t.read(1) == IGNORE_LABEL).any()  # the training scene is whole
    with pytest.raises(ConfigError, match="val_label_extent lists 2 files for 1 validation"):
        train_semantic(
            city,
            gpkg,
            tmp_path / "m",
            val_image=city,
            val_labels=gpkg,
            val_label_extent=[str(extent)] * 2,
            **TINY,
        )
    with pytest.raises(ConfigError, match=r"val_label_extent needs validation scenes \(--val"):
        train_semantic(city, gpkg, tmp_path / "m", val_label_extent=str(extent), **TINY)
