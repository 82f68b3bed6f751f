"""Writing a synthetic city window by window: its outputs, rasters and render loop.

:func:`~terraseg.synthetic.make_city` checks its arguments here
(:func:`check_city_args`, :func:`checked_outputs`) and writes the four
outputs with :func:`write_city`, which renders one window while the previous
one is compressed and written, and hands each block's truth to a
:class:`~terraseg.synthetic.truth.TruthWriter` once. What it wrote is
described by a :class:`CityScene`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import pyogrio.errors
import pyproj
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.windows import Window

from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError, CRSError, ExportError, OutputExistsError
from terraseg.io.atomic import atomic_output, check_writable_dir
from terraseg.synthetic.georef import norm_shape
from terraseg.synthetic.geotiff import BLOCK_PX, geotiff_profile
from terraseg.synthetic.layout import CityLayout, PixelBlock
from terraseg.synthetic.truth import TruthWriter

if TYPE_CHECKING:
    from rasterio.io import DatasetWriter

__all__ = [
    "CityScene",
    "ProgressCallback",
    "RenderBlocks",
    "check_city_args",
    "checked_outputs",
    "metres_per_unit",
    "truth_paths",
    "write_city",
]

ProgressCallback: TypeAlias = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each window."""

RenderBlocks: TypeAlias = Callable[
    [CityLayout, PixelWindow, int],
    tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint32], list[PixelBlock]],
]
"""Renders a window: :func:`~terraseg.synthetic.render.render_window_blocks`."""

_CLASS_COLOURS = {0: (0, 0, 0, 0), 1: (230, 80, 60, 255), 2: (160, 160, 160, 255)}
_BAND_NAMES = ("red", "green", "blue", "nir")
_MAX_PENDING = 1  # windows waiting to be written while the next one renders
_GDAL_CACHE_BYTES = 64 * 2**20  # bounded block cache, so memory does not grow with the scene


@dataclass(frozen=True, slots=True)
class CityScene:
    """What :func:`~terraseg.synthetic.make_city` wrote, and the grid it wrote it on.

    Attributes
    ----------
    image, truth_gpkg, truth_classes, truth_instances
        The four files.
    shape
        ``(rows, cols)`` in pixels.
    crs
        ``"AUTH:CODE"`` where the CRS has one, else WKT.
    transform
        Pixel-to-CRS affine transform (north up).
    gsd_m
        Ground sample distance in metres per pixel.
    seed
        The city's seed.
    n_buildings
        Buildings in the truth (clipped to the scene).
    road_length_m
        Total length of the road centrelines inside the scene, metres.
    """

    image: Path
    truth_gpkg: Path
    truth_classes: Path
    truth_instances: Path
    shape: tuple[int, int]
    crs: str
    transform: Affine
    gsd_m: float
    seed: int
    n_buildings: int
    road_length_m: float
    bands: int = 3

    def layout(self) -> CityLayout:
        """The :class:`CityLayout` this scene was rendered from."""
        return CityLayout.from_seed(self.shape, self.seed, self.gsd_m, transform=self.transform)

    def describe(self) -> str:
        """A few human-readable lines: what was written, size, CRS and counts."""
        rows, cols = self.shape
        t = self.transform
        band_names = "RGB" if self.bands == 3 else "RGB+NIR"
        return "\n".join(
            [
                f"synthetic city, seed {self.seed}: {cols} x {rows} px at {self.gsd_m:g} m/px "
                f"({cols * self.gsd_m / 1000:.2f} x {rows * self.gsd_m / 1000:.2f} km), "
                f"CRS {_short_crs(self.crs)}, origin ({t.c:.6g}, {t.f:.6g})",
                f"  image      {self.image}  ({self.bands} bands, {band_names}, uint8)",
                f"  truth      {self.truth_gpkg}  ({self.n_buildings} buildings, "
                f"{self.road_length_m / 1000:.1f} km of road centrelines)",
                f"  classes    {self.truth_classes}  (0 background, 1 building, 2 road)",
                f"  instances  {self.truth_instances}  (building_id, 0 = none)",
            ]
        )


def _short_crs(crs: str) -> str:
    return crs if len(crs) < 40 else pyproj.CRS.from_user_input(crs).name


def truth_paths(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(<stem>.truth.gpkg, <stem>.truth.tif, <stem>.instances.tif)`` beside ``path``.

    Examples
    --------
    >>> [p.name for p in truth_paths("out/city.tif")]
    ['city.truth.gpkg', 'city.truth.tif', 'city.instances.tif']
    """
    p = Path(path)
    return (
        p.with_name(f"{p.stem}.truth.gpkg"),
        p.with_name(f"{p.stem}.truth.tif"),
        p.with_name(f"{p.stem}.instances.tif"),
    )


def check_city_args(
    size_px: int | tuple[int, int], bands: int, gsd_m: float, window_px: int
) -> tuple[int, int]:
    """The scene ``(rows, cols)``, after checking the arguments of ``make_city``.

    Raises
    ------
    ConfigError
        Bad size, bands, ground sample distance or window.
    """
    shape = norm_shape(size_px)
    if bands not in (3, 4):
        raise ConfigError(f"bands must be 3 (RGB) or 4 (RGB+NIR), got {bands!r}", bands=bands)
    if not (isinstance(gsd_m, int | float) and math.isfinite(gsd_m) and gsd_m > 0):
        raise ConfigError(f"gsd_m must be a positive number of metres, got {gsd_m!r}", gsd_m=gsd_m)
    if window_px <= 0 or window_px % BLOCK_PX:
        raise ConfigError(
            f"window_px must be a positive multiple of {BLOCK_PX}, got {window_px!r}",
            window_px=window_px,
        )
    return shape


def checked_outputs(
    path: str | os.PathLike[str], overwrite: bool
) -> tuple[Path, Path, Path, Path]:
    """The image ``path`` and its :func:`truth_paths`, once checked to be writable.

    Raises
    ------
    OutputExistsError
        One of them exists and ``overwrite`` is false.
    ExportError
        The output folder cannot be written.
    """
    image = Path(path)
    gpkg, classes_path, inst_path = truth_paths(image)
    outputs = (image, gpkg, classes_path, inst_path)
    for out in outputs:
        if out.exists() and not overwrite:
            raise OutputExistsError(
                f"output '{out}' already exists; pass --overwrite (overwrite=True) to replace it",
                path=out,
            )
    check_writable_dir(image.parent)
    return outputs


def metres_per_unit(crs: pyproj.CRS, transform: Affine, gsd_m: float) -> float:
    """Metres per CRS unit, to measure road lengths (at the scene for a geographic CRS)."""
    return (
        float(gsd_m) / abs(transform.a)
        if crs.is_geographic
        else (crs.axis_info[0].unit_conversion_factor or 1.0)
    )


@dataclass(frozen=True, slots=True)
class _CityRasters:
    """The three GeoTIFFs of a city being written: image, classes and instances."""

    image: DatasetWriter
    classes: DatasetWriter
    instances: DatasetWriter

    @classmethod
    def open(
        cls,
        stack: contextlib.ExitStack,
        paths: tuple[Path, Path, Path],
        shape: tuple[int, int],
        bands: int,
        crs: str,
        transform: Affine,
        tag: str,
    ) -> _CityRasters:
        """Create the image, class and instance GeoTIFFs at ``paths``, closed by ``stack``.

        ``tag`` goes to the image's ``TERRASEG_SYNTHETIC`` metadata item.
        """
        img_profile = geotiff_profile(shape, bands, "uint8", crs, transform)
        img_profile["photometric"] = "RGB"
        dst = stack.enter_context(rasterio.open(paths[0], "w", **img_profile))
        dst_cls = stack.enter_context(
            rasterio.open(paths[1], "w", **geotiff_profile(shape, 1, "uint8", crs, transform))
        )
        inst_profile = geotiff_profile(shape, 1, "uint32", crs, transform)
        inst_profile["predictor"] = 2
        dst_inst = stack.enter_context(rasterio.open(paths[2], "w", **inst_profile))
        dst.descriptions = _BAND_NAMES[:bands]
        dst.update_tags(TERRASEG_SYNTHETIC=tag)
        dst_cls.descriptions = ("class",)
        dst_inst.descriptions = ("building_id",)
        dst_cls.write_colormap(1, _CLASS_COLOURS)
        return cls(dst, dst_cls, dst_inst)

    def write(
        self,
        img: NDArray[np.uint8],
        classes: NDArray[np.uint8],
        inst: NDArray[np.uint32],
        win: PixelWindow,
    ) -> None:
        """Write one rendered window into the three rasters."""
        rw = Window(win.col_off, win.row_off, win.width, win.height)
        self.image.write(img, window=rw)
        self.classes.write(classes, 1, window=rw)
        self.instances.write(inst, 1, window=rw)

    def close(self) -> None:
        """Close the three rasters (flushing them)."""
        for ds in (self.image, self.classes, self.instances):
            ds.close()


def _stream_windows(
    layout: CityLayout,
    windows: Sequence[PixelWindow],
    bands: int,
    rasters: _CityRasters,
    truth: TruthWriter,
    pool: ThreadPoolExecutor,
    progress: ProgressCallback | None,
    render: RenderBlocks,
) -> set[tuple[int, int]]:
    """Render and write every window; returns the keys of the blocks whose truth was added.

    Rendering (Python, holds the GIL) overlaps with compressing and writing the
    previous window (GDAL, releases it) in ``pool``, one writer thread; at most
    one window waits, so memory stays bounded. Each block's truth is added to
    ``truth`` the first time a window uses the block.
    """
    total = len(windows)
    pending: deque[Future[None]] = deque()
    emitted: set[tuple[int, int]] = set()
    done = 0

    def wait_one() -> None:
        nonlocal done
        pending.popleft().result()
        done += 1
        if progress is not None:
            progress(done, total)

    for win in windows:
        img, cls, inst, blocks = render(layout, win, bands)
        while len(pending) >= _MAX_PENDING:
            wait_one()
        pending.append(pool.submit(rasters.write, img, cls, inst, win))
        for blk in blocks:
            if blk.key not in emitted:
                emitted.add(blk.key)
                truth.add(blk.truth)
    while pending:
        wait_one()
    return emitted


def _add_remaining_truth(
    layout: CityLayout,
    shape: tuple[int, int],
    emitted: set[tuple[int, int]],
    truth: TruthWriter,
) -> None:
    """Add the truth of the blocks near the scene that no window used (marking them emitted)."""
    rows, cols = shape
    for i, j in layout.blocks_near(0, 0, cols, rows, 30.0):
        if (i, j) not in emitted:
            emitted.add((i, j))
            truth.add(layout.block(i, j).truth)


def write_city(
    outputs: tuple[Path, Path, Path, Path],
    layout: CityLayout,
    windows: Sequence[PixelWindow],
    *,
    shape: tuple[int, int],
    bands: int,
    crs: str,
    transform: Affine,
    tag: str,
    to_metres: float,
    overwrite: bool,
    progress: ProgressCallback | None,
    render: RenderBlocks,
) -> TruthWriter:
    """Write the image, truth GeoPackage, class and instance rasters of ``layout``.

    ``outputs`` are in that order; each is written under a temporary name and
    renamed at the end, so on any error none of them is left behind.
    ``to_metres`` converts CRS units to metres (road lengths). Returns the
    flushed truth writer, which counted the buildings and road length.

    Raises
    ------
    ExportError
        An output cannot be written.
    """
    image = outputs[0]
    try:
        with contextlib.ExitStack() as stack:
            tmp = [stack.enter_context(atomic_output(p, overwrite=overwrite)) for p in outputs]
            writer = TruthWriter(tmp[1], crs, to_metres)
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_BYTES))
            rasters = _CityRasters.open(
                stack, (tmp[0], tmp[2], tmp[3]), shape, bands, crs, transform, tag
            )
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            emitted = _stream_windows(
                layout, windows, bands, rasters, writer, pool, progress, render
            )
            _add_remaining_truth(layout, shape, emitted, writer)
            writer.flush()
            rasters.close()
    except (ConfigError, CRSError, ExportError):
        raise
    except OSError as exc:
        raise ExportError(f"cannot write synthetic scene '{image}': {exc}", path=image) from exc
    except (rasterio.errors.RasterioIOError, pyogrio.errors.DataSourceError) as exc:
        raise ExportError(f"cannot write synthetic scene '{image}': {exc}", path=image) from exc
    return writer
