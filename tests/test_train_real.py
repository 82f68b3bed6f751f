"""Training for real imagery: augmentation, label extents, the training record, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from terraseg.errors import ConfigError
from terraseg.models.augment import AUGMENTATIONS, PRESETS, augment_names, augment_sample
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


@pytest.mark.parametrize("name", ["brightness", "contrast", "hue", "blur", "noise"])
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


def test_hue_keeps_grey_pixels_grey() -> None:
    x = torch.full((3, 8, 8), 0.4)
    xa, _ = AUGMENTATIONS["hue"](x, torch.zeros(8, 8, dtype=torch.long), np.random.default_rng(1))
    assert torch.allclose(xa, x, atol=1e-6)


def test_augmentation_is_deterministic_from_the_seed() -> None:
    x, y = _coded_sample()
    names = PRESETS["full"]
    a = augment_sample(x, y, names, np.random.default_rng(7))
    b = augment_sample(x, y, names, np.random.default_rng(7))
    c = augment_sample(x, y, names, np.random.default_rng(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_augment_names() -> None:
    assert augment_names("none") == ()
    assert augment_names("full") == tuple(AUGMENTATIONS)
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
