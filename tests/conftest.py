"""Shared fixtures: synthetic georeferenced scenes, layered array -> GeoTIFF.

Like rasterio's ``basic_image`` / ``basic_image_file``: an array fixture first,
then a GeoTIFF in a temporary folder built from the same generator. Scenes use
a real UTM CRS, a non-zero origin and sizes that 512 does not divide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from terraseg.core.grid import PixelWindow
from terraseg.synthetic import (
    CityLayout,
    CityScene,
    make_city,
    make_xy_image,
    render_window,
    scene_transform,
)

CITY_SHAPE = (700, 1100)
"""``(rows, cols)`` of the shared synthetic city: non-square, not a multiple of 512."""
CITY_SEED = 7
CITY_CRS = "EPSG:32633"
CITY_GSD_M = 0.5

XY_SHAPE = (1000, 1300)


@pytest.fixture(scope="session")
def city_layout() -> CityLayout:
    """The layout of the shared city, georeferenced as :func:`make_city` does."""
    transform = scene_transform(CITY_CRS, CITY_SHAPE, CITY_GSD_M, CITY_SEED)
    return CityLayout.from_seed(CITY_SHAPE, CITY_SEED, CITY_GSD_M, transform=transform)


@pytest.fixture(scope="session")
def city_arrays(
    city_layout: CityLayout,
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint32]]:
    """``(image (3, y, x), classes (y, x), instances (y, x))`` of the whole shared city."""
    return render_window(city_layout, PixelWindow(0, 0, *CITY_SHAPE), bands=3)


@pytest.fixture(scope="session")
def city_scene(tmp_path_factory: pytest.TempPathFactory) -> CityScene:
    """The shared city written by :func:`make_city` (image, truth GeoPackage and rasters).

    Session-scoped: treat the files as read-only.
    """
    folder = tmp_path_factory.mktemp("city")
    return make_city(
        folder / "city.tif", size_px=CITY_SHAPE, seed=CITY_SEED, gsd_m=CITY_GSD_M, crs=CITY_CRS
    )


@pytest.fixture
def city_file(city_scene: CityScene) -> Path:
    """Path of the shared city's image GeoTIFF."""
    return city_scene.image


@pytest.fixture
def xy_array() -> NDArray[np.uint16]:
    """Expected contents of :func:`xy_image_file`: band 0 rows, band 1 cols, ``(2, y, x)``."""
    rows, cols = np.indices(XY_SHAPE)
    return np.stack([rows, cols]).astype(np.uint16)


@pytest.fixture
def xy_image_file(tmp_path: Path) -> Path:
    """A coordinate-encoding GeoTIFF of :data:`XY_SHAPE` (UTM, non-zero origin, uint16)."""
    return make_xy_image(tmp_path / "xy.tif", XY_SHAPE, crs=CITY_CRS)
