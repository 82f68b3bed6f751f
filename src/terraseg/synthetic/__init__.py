"""Synthetic georeferenced city scenes with exact ground truth, streamed window by window.

:func:`make_city` writes an aerial-looking GeoTIFF (RGB or RGB + NIR) of a city
with a street network (grid and curved streets of several widths,
intersections, cul-de-sacs), blocks of detached houses, terraces whose units
touch but keep their own ids, apartments, shops with parking lots, industry and
parks; roofs of several colours and shapes with facet shading; shadows; trees
partly covering roofs and roads; vegetation, soil and paving textures; sensor
noise and a little blur. Beside it go the truth: a GeoPackage of building and
road polygons and road centrelines, a class raster and a building-instance
raster, all on the same grid and in the scene CRS.

Nothing is ever held for the whole scene: the city is a function of the seed
evaluated block by block (:class:`CityLayout`), and each window is rendered
from the blocks near it only (:func:`render_window`), so peak memory does not
depend on the scene size and any window can be regenerated on its own.

:func:`make_xy_image` writes a coordinate-encoding raster whose pixels hold
their own row and column, for exact tests of tiling and stitching.
"""

from __future__ import annotations

import os

import pyproj

from terraseg.synthetic.city import (
    CityScene,
    ProgressCallback,
    check_city_args,
    checked_outputs,
    metres_per_unit,
    truth_paths,
    write_city,
)
from terraseg.synthetic.georef import crs_string, norm_crs, scene_transform
from terraseg.synthetic.geotiff import BLOCK_PX as BLOCK_PX
from terraseg.synthetic.geotiff import pixel_windows
from terraseg.synthetic.layout import CityLayout, TruthFeatures
from terraseg.synthetic.render import ALL_TOUCHED, render_window, render_window_blocks
from terraseg.synthetic.streets import ROAD_CLASSES, CityStyle
from terraseg.synthetic.xy import make_xy_image

__all__ = [
    "ALL_TOUCHED",
    "CityLayout",
    "CityScene",
    "CityStyle",
    "ROAD_CLASSES",
    "TruthFeatures",
    "make_city",
    "make_xy_image",
    "render_window",
    "scene_transform",
    "truth_paths",
]


def make_city(
    path: str | os.PathLike[str],
    size_px: int | tuple[int, int] = 4096,
    seed: int = 0,
    gsd_m: float = 0.5,
    crs: str | int | pyproj.CRS = "EPSG:32633",
    bands: int = 3,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    window_px: int = 1024,
) -> CityScene:
    """Write a synthetic city scene and its ground truth, one window at a time.

    Parameters
    ----------
    path
        Output GeoTIFF. The truth goes beside it (see :func:`truth_paths`):
        ``<stem>.truth.gpkg`` (layers ``buildings``, ``roads``,
        ``road_centerlines``), ``<stem>.truth.tif`` (uint8 classes: 0
        background, 1 building, 2 road) and ``<stem>.instances.tif`` (uint32
        ``building_id``, 0 where there is none).
    size_px
        Scene size in pixels: an int for a square, or ``(rows, cols)``.
    seed
        The city: the same seed gives byte-identical outputs; density, street
        pattern, palette and sun vary with it.
    gsd_m
        Ground sample distance, metres per pixel.
    crs
        Projected CRS (e.g. ``"EPSG:32633"``) or geographic ``"EPSG:4326"``;
        the scene lies inside its area of use (:func:`scene_transform`).
    bands
        3 (red, green, blue) or 4 (red, green, blue, near infrared).
    overwrite
        Replace existing outputs; without it an existing output raises
        :class:`~terraseg.errors.OutputExistsError` before anything is written.
    progress
        Called as ``progress(done, total)`` after each window.
    window_px
        Rendering window, a multiple of 512; peak memory grows with its square
        and not with the scene.

    Returns
    -------
    CityScene

    Raises
    ------
    ConfigError
        Bad size, bands, ground sample distance or window.
    CRSError
        The CRS is unknown or unusable.
    OutputExistsError
        An output exists and ``overwrite`` is false.
    ExportError
        The output folder cannot be written.

    Notes
    -----
    All four files are written under temporary names and renamed at the end;
    on any error none of them is left behind. Truth rasters are rasterized
    from the truth vectors (roads first, then buildings in ascending
    ``building_id``, ``all_touched=ALL_TOUCHED``), so rasterizing the
    GeoPackage on the scene grid reproduces them exactly.
    """
    shape = check_city_args(size_px, bands, gsd_m, window_px)
    crs_ = norm_crs(crs)
    transform = scene_transform(crs_, shape, float(gsd_m), seed)
    crs_str = crs_string(crs_)
    outputs = checked_outputs(path, overwrite)
    layout = CityLayout.from_seed(shape, seed, float(gsd_m), transform=transform)
    writer = write_city(
        outputs,
        layout,
        list(pixel_windows(shape, window_px)),
        shape=shape,
        bands=bands,
        crs=crs_str,
        transform=transform,
        tag=f"make_city(seed={seed}, gsd_m={gsd_m:g}, size_px={shape})",
        to_metres=metres_per_unit(crs_, transform, gsd_m),
        overwrite=overwrite,
        progress=progress,
        render=render_window_blocks,  # looked up on this module at call time (patchable)
    )
    return CityScene(
        image=outputs[0],
        truth_gpkg=outputs[1],
        truth_classes=outputs[2],
        truth_instances=outputs[3],
        shape=shape,
        crs=crs_str,
        transform=transform,
        gsd_m=float(gsd_m),
        seed=int(seed),
        n_buildings=writer.n_buildings,
        road_length_m=writer.road_length_m,
        bands=bands,
    )
