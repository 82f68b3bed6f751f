"""Unlabelled pixels (IGNORE_LABEL) count in no loss and no validation metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from terraseg.config import TrainConfig
from terraseg.models.card import ModelCard
from terraseg.models.spec import DEFAULT_CLASSES, IGNORE_LABEL, InputSpec
from terraseg.models.task import _task_class, confusion_matrix
from terraseg.models.train import DEMO_ARCHITECTURE, train_semantic
from terraseg.synthetic import make_city


def _task(loss: str, class_weights: list[float] | None = None) -> torch.nn.Module:
    card = ModelCard(
        name="t",
        task="semantic",
        architecture=DEMO_ARCHITECTURE,
        input=InputSpec(bands=(1, 2, 3), scale=255.0),
        classes=DEFAULT_CLASSES,
        gsd_m=0.5,
    )
    return _task_class()(
        terraseg_card=card.model_dump(mode="json"),
        total_steps=1,
        model="unet",
        backbone="resnet18",
        weights=None,
        in_channels=3,
        num_classes=3,
        loss=loss,
        ignore_index=IGNORE_LABEL,
        class_weights=class_weights,
        lr=1e-3,
    )


@pytest.mark.parametrize(
    ("loss", "weights"),
    [
        ("ce", None),
        ("focal", None),
        ("dice", None),
        ("ce+dice", None),
        ("jaccard", None),
        ("lovasz", None),
        ("ce", [0.2, 1.0, 3.0]),
        ("focal", [0.2, 1.0, 3.0]),
        ("ce+dice", [0.2, 1.0, 3.0]),
    ],
)
def test_logits_at_unlabelled_pixels_do_not_change_the_loss(
    loss: str, weights: list[float] | None
) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (2, 16, 16), generator=g)
    y[:, :, 8:] = IGNORE_LABEL
    logits = torch.randn(2, 3, 16, 16, generator=g)
    other = logits.clone()
    other[:, :, :, 8:] = torch.randn(2, 3, 16, 8, generator=g) * 10
    criterion = _task(loss, weights).criterion
    a, b = float(criterion(logits, y)), float(criterion(other, y))
    assert np.isfinite(a) and a > 0
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    # and the labelled half does count
    moved = logits.clone()
    moved[:, :, :, :8] += torch.randn(2, 3, 16, 8, generator=g) * 10
    assert float(criterion(moved, y)) != pytest.approx(a, rel=1e-3)


def test_confusion_matrix_skips_unlabelled_pixels() -> None:
    class Const(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 3, *x.shape[2:])
            out[:, 1] = 1.0  # always "building"
            return out

    mask = torch.full((1, 4, 4), IGNORE_LABEL)
    mask[0, 0, :2] = 1
    batch = {"image": torch.zeros(1, 3, 4, 4), "mask": mask}
    cm = confusion_matrix(Const(), [batch], 3, IGNORE_LABEL)
    assert cm.sum() == 2 and cm[1, 1] == 2


def test_training_on_a_partly_labelled_raster(tmp_path: Path) -> None:
    """A class raster whose eastern half is IGNORE_LABEL trains, and validation skips it."""
    city = tmp_path / "city.tif"
    make_city(city, size_px=256, seed=3)
    with rasterio.open(city.with_name("city.truth.tif")) as src:
        classes = src.read(1)
        profile = src.profile
    classes[:, 128:] = IGNORE_LABEL
    labels = tmp_path / "partial.tif"
    with rasterio.open(labels, "w", **profile) as dst:
        dst.write(classes, 1)
    card = train_semantic(
        city,
        labels,
        tmp_path / "m",
        TrainConfig(max_steps=2, steps_per_epoch=2, batch_size=2, patch_px=64, seed=1),
    )
    assert np.isfinite(card.metrics["val_pixel_accuracy"])


def test_an_image_exactly_one_patch_high_trains(tmp_path: Path) -> None:
    """torchgeo's sampler used to drop an area exactly patch-sized (floating point)."""
    city = tmp_path / "city.tif"
    make_city(city, size_px=512, seed=4)
    truth = city.with_name("city.truth.tif")
    card = train_semantic(
        city,
        truth,
        tmp_path / "m",
        TrainConfig(max_steps=1, steps_per_epoch=1, batch_size=2, patch_px=256, val_fraction=0.5),
    )
    assert card.training is not None and card.training.steps == 1


@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_class_weights_change_the_loss(loss: str) -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (2, 16, 16), generator=g)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    plain = float(_task(loss).criterion(logits, y))
    weighted = float(_task(loss, [1.0, 1.0, 1.0]).criterion(logits, y))
    heavy = float(_task(loss, [0.1, 0.1, 5.0]).criterion(logits, y))
    if loss == "ce":
        assert weighted == pytest.approx(plain, rel=1e-6)  # equal weights: the plain loss
    assert heavy != pytest.approx(weighted, rel=1e-3)


def test_jaccard_is_zero_for_a_perfect_prediction_and_skips_absent_classes() -> None:
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, :4] = 1
    y[0, :, 6:] = IGNORE_LABEL
    logits = torch.nn.functional.one_hot(y.clamp(0, 2) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert float(_task("jaccard").criterion(logits, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(_task("jaccard").criterion(-logits, y)) > 0.5
