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

import contextlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyogrio.errors
import pyproj
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from pyogrio.raw import write as ogr_write
from pyproj.exceptions import CRSError as ProjCRSError
from rasterio.windows import Window

from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError, CRSError, ExportError, OutputExistsError
from terraseg.io.atomic import atomic_output, check_writable_dir
from terraseg.synthetic.layout import CityLayout, TruthFeatures
from terraseg.synthetic.render import ALL_TOUCHED, render_window, render_window_blocks
from terraseg.synthetic.streets import ROAD_CLASSES, CityStyle

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

ProgressCallback = Callable[[int, int], None]

BLOCK_PX = 512
"""Tile size (pixels) of every GeoTIFF written here."""

_CLASS_COLOURS = {0: (0, 0, 0, 0), 1: (230, 80, 60, 255), 2: (160, 160, 160, 255)}
_BAND_NAMES = ("red", "green", "blue", "nir")
_TRUTH_BATCH = 20000
_MAX_PENDING = 1  # windows waiting to be written while the next one renders
_GDAL_CACHE_BYTES = 64 * 2**20  # bounded block cache, so memory does not grow with the scene


@dataclass(frozen=True, slots=True)
class CityScene:
    """What :func:`make_city` wrote, and the grid it wrote it on.

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


# -- validation and georeferencing -------------------------------------------------------
def _norm_shape(size_px: int | tuple[int, int]) -> tuple[int, int]:
    dims = (size_px, size_px) if isinstance(size_px, int | np.integer) else tuple(size_px)
    if len(dims) != 2 or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) for d in dims
    ):
        raise ConfigError(
            f"size_px must be an int or (rows, cols) of ints, got {size_px!r}", size_px=size_px
        )
    rows, cols = int(dims[0]), int(dims[1])
    if rows <= 0 or cols <= 0:
        raise ConfigError(
            f"size_px must be positive, got {size_px!r}; pass e.g. size_px=4096", size_px=size_px
        )
    return rows, cols


def _norm_crs(crs: str | int | pyproj.CRS) -> pyproj.CRS:
    try:
        out = pyproj.CRS.from_user_input(crs)
    except (ProjCRSError, TypeError, ValueError) as exc:
        raise CRSError(
            f"unknown CRS {crs!r}; pass a projected CRS such as 'EPSG:32633' (or 'EPSG:4326')",
            crs=crs,
        ) from exc
    if not (out.is_projected or out.is_geographic) or len(out.axis_info) < 2:
        raise CRSError(
            f"CRS {crs!r} is neither projected nor geographic 2-D; pass e.g. 'EPSG:32633'",
            crs=crs,
        )
    return out


def _crs_string(crs: pyproj.CRS) -> str:
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


def scene_transform(
    crs: str | int | pyproj.CRS, shape: tuple[int, int], gsd_m: float, seed: int = 0
) -> Affine:
    """A north-up transform for a scene of ``shape`` pixels inside ``crs``'s area of use.

    The scene centre is a seed-dependent point in the middle part of the CRS's
    area of use (so for UTM the easting is near the zone's central meridian
    and the northing fits the zone's latitudes), snapped to whole metres.
    For a geographic CRS ``gsd_m`` is converted to degrees at that latitude
    (so pixels are square on the ground, not in degrees).

    Examples
    --------
    >>> t = scene_transform("EPSG:32633", (1000, 1000), 0.5, seed=1)
    >>> 166000 < t.c < 834000 and 0 < t.f < 9_400_000, t.a, t.e
    (True, 0.5, -0.5)
    """
    crs_ = _norm_crs(crs)
    rows, cols = shape
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x6E0])
    lon, lat = 0.0, 0.0
    aou = crs_.area_of_use
    if aou is not None:
        west, south, east, north = aou.bounds
        if east < west:
            east += 360.0
        lon = west + (east - west) * rng.uniform(0.35, 0.65)
        lat = south + (north - south) * rng.uniform(0.35, 0.65)
        lat = min(max(lat, -70.0), 70.0)
        lon = (lon + 180.0) % 360.0 - 180.0
    if crs_.is_geographic:
        phi = math.radians(lat)
        m_lon = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)
        m_lat = 111132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)
        res_x, res_y = gsd_m / m_lon, gsd_m / m_lat
        x0 = round(lon - cols * res_x / 2, 4)
        y0 = round(lat + rows * res_y / 2, 4)
        return Affine(res_x, 0.0, x0, 0.0, -res_y, y0)
    factor = crs_.axis_info[0].unit_conversion_factor or 1.0
    res = gsd_m / factor
    if aou is not None:
        to_crs = pyproj.Transformer.from_crs("EPSG:4326", crs_, always_xy=True)
        cx, cy = to_crs.transform(lon, lat)
    else:
        cx, cy = (
            250_000.0 + 1000.0 * rng.uniform(0, 100),
            4_000_000.0 + 1000.0 * rng.uniform(0, 100),
        )
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise CRSError(f"cannot place a scene in CRS {crs!r}; pass e.g. 'EPSG:32633'", crs=crs)
    x0 = float(round(cx - cols * res / 2)) or 1000.0
    y0 = float(round(cy + rows * res / 2)) or 1000.0
    return Affine(res, 0.0, x0, 0.0, -res, y0)


# -- writing ------------------------------------------------------------------------------
def _profile(
    shape: tuple[int, int], count: int, dtype: str, crs: str, transform: Affine
) -> dict[str, object]:
    return {
        "driver": "GTiff",
        "height": shape[0],
        "width": shape[1],
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": BLOCK_PX,
        "blockysize": BLOCK_PX,
        "compress": "deflate",
        "zlevel": 6,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }


def _windows(shape: tuple[int, int], window_px: int) -> Iterator[PixelWindow]:
    rows, cols = shape
    for r in range(0, rows, window_px):
        for c in range(0, cols, window_px):
            yield PixelWindow(r, c, min(window_px, rows - r), min(window_px, cols - c))


class _TruthWriter:
    """Appends truth features to the three GeoPackage layers in batches."""

    def __init__(self, path: Path, crs: str, metres_per_unit: float) -> None:
        self.path = path
        self.crs = crs
        self.pending: list[TruthFeatures] = []
        self.n_pending = 0
        self.started: set[str] = set()
        self.n_buildings = 0
        self.road_length_m = 0.0
        self.metres_per_unit = metres_per_unit

    def add(self, truth: TruthFeatures) -> None:
        self.pending.append(truth)
        self.n_pending += len(truth.buildings) + len(truth.roads) + len(truth.centerlines)
        if self.n_pending >= _TRUTH_BATCH:
            self.flush()

    def _write(
        self,
        layer: str,
        geoms: NDArray[np.object_],
        fields: dict[str, NDArray[np.generic]],
        gtype: str,
    ) -> None:
        if not len(geoms) and layer in self.started:
            return
        ogr_write(
            str(self.path),
            np.asarray(shapely.to_wkb(geoms), dtype=object) if len(geoms) else np.empty(0, object),
            list(fields.values()),
            list(fields.keys()),
            layer=layer,
            driver="GPKG",
            geometry_type=gtype,
            crs=self.crs,
            append=layer in self.started,
            # GeoPackage 1.2: read without warnings by every GDAL >= 2.2 (Debian's 3.6 too)
            dataset_options=None if self.started else {"VERSION": "1.2"},
        )
        self.started.add(layer)

    def flush(self) -> None:
        t = TruthFeatures.concat(self.pending)
        self.pending, self.n_pending = [], 0
        order = np.argsort(t.building_id, kind="stable")
        self._write(
            "buildings",
            t.buildings[order],
            {"building_id": t.building_id[order].astype(np.int64)},
            "Polygon",
        )
        names = np.asarray(ROAD_CLASSES, dtype=object)
        self._write(
            "roads",
            _as_multi(t.roads),
            {"road_class": names[t.road_class.astype(np.int64)], "width_m": t.road_width_m},
            "MultiPolygon",
        )
        self._write(
            "road_centerlines",
            t.centerlines,
            {"width_m": t.width_m.astype(np.float32)},
            "LineString",
        )
        self.n_buildings += len(t.buildings)
        if len(t.centerlines):
            self.road_length_m += float(shapely.length(t.centerlines).sum()) * self.metres_per_unit


def _as_multi(geoms: NDArray[np.object_]) -> NDArray[np.object_]:
    out = np.empty(len(geoms), dtype=object)
    for k, g in enumerate(geoms):
        out[k] = g if isinstance(g, shapely.MultiPolygon) else shapely.MultiPolygon([g])
    return out


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
    shape = _norm_shape(size_px)
    if bands not in (3, 4):
        raise ConfigError(f"bands must be 3 (RGB) or 4 (RGB+NIR), got {bands!r}", bands=bands)
    if not (isinstance(gsd_m, int | float) and math.isfinite(gsd_m) and gsd_m > 0):
        raise ConfigError(f"gsd_m must be a positive number of metres, got {gsd_m!r}", gsd_m=gsd_m)
    if window_px <= 0 or window_px % BLOCK_PX:
        raise ConfigError(
            f"window_px must be a positive multiple of {BLOCK_PX}, got {window_px!r}",
            window_px=window_px,
        )
    crs_ = _norm_crs(crs)
    transform = scene_transform(crs_, shape, float(gsd_m), seed)
    crs_str = _crs_string(crs_)
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
    layout = CityLayout.from_seed(shape, seed, float(gsd_m), transform=transform)
    metres_per_unit = (
        float(gsd_m) / abs(transform.a)
        if crs_.is_geographic
        else (crs_.axis_info[0].unit_conversion_factor or 1.0)
    )
    windows = list(_windows(shape, window_px))
    total = len(windows)
    try:
        with contextlib.ExitStack() as stack:
            tmp = [stack.enter_context(atomic_output(p, overwrite=overwrite)) for p in outputs]
            writer = _TruthWriter(tmp[1], crs_str, metres_per_unit)
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_BYTES))
            img_profile = _profile(shape, bands, "uint8", crs_str, transform)
            img_profile["photometric"] = "RGB"
            dst = stack.enter_context(rasterio.open(tmp[0], "w", **img_profile))
            dst_cls = stack.enter_context(
                rasterio.open(tmp[2], "w", **_profile(shape, 1, "uint8", crs_str, transform))
            )
            inst_profile = _profile(shape, 1, "uint32", crs_str, transform)
            inst_profile["predictor"] = 2
            dst_inst = stack.enter_context(rasterio.open(tmp[3], "w", **inst_profile))
            dst.descriptions = _BAND_NAMES[:bands]
            dst.update_tags(
                TERRASEG_SYNTHETIC=f"make_city(seed={seed}, gsd_m={gsd_m:g}, size_px={shape})"
            )
            dst_cls.descriptions = ("class",)
            dst_inst.descriptions = ("building_id",)
            dst_cls.write_colormap(1, _CLASS_COLOURS)
            # Rendering (Python, holds the GIL) overlaps with compressing and
            # writing the previous window (GDAL, releases it) in one writer
            # thread; at most one window waits, so memory stays bounded.
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            pending: deque[Future[None]] = deque()
            emitted: set[tuple[int, int]] = set()
            done = 0

            def write(
                img: NDArray[np.uint8],
                cls: NDArray[np.uint8],
                inst: NDArray[np.uint32],
                win: PixelWindow,
            ) -> None:
                rw = Window(win.col_off, win.row_off, win.width, win.height)
                dst.write(img, window=rw)
                dst_cls.write(cls, 1, window=rw)
                dst_inst.write(inst, 1, window=rw)

            def wait_one() -> None:
                nonlocal done
                pending.popleft().result()
                done += 1
                if progress is not None:
                    progress(done, total)

            for win in windows:
                img, cls, inst, blocks = render_window_blocks(layout, win, bands)
                while len(pending) >= _MAX_PENDING:
                    wait_one()
                pending.append(pool.submit(write, img, cls, inst, win))
                for blk in blocks:
                    if blk.key not in emitted:
                        emitted.add(blk.key)
                        writer.add(blk.truth)
            while pending:
                wait_one()
            rows, cols = shape
            for i, j in layout.blocks_near(0, 0, cols, rows, 30.0):
                if (i, j) not in emitted:
                    emitted.add((i, j))
                    writer.add(layout.block(i, j).truth)
            writer.flush()
            for ds in (dst, dst_cls, dst_inst):
                ds.close()
    except (ConfigError, CRSError, ExportError):
        raise
    except OSError as exc:
        raise ExportError(f"cannot write synthetic scene '{image}': {exc}", path=image) from exc
    except (rasterio.errors.RasterioIOError, pyogrio.errors.DataSourceError) as exc:
        raise ExportError(f"cannot write synthetic scene '{image}': {exc}", path=image) from exc
    return CityScene(
        image=image,
        truth_gpkg=gpkg,
        truth_classes=classes_path,
        truth_instances=inst_path,
        shape=shape,
        crs=crs_str,
        transform=transform,
        gsd_m=float(gsd_m),
        seed=int(seed),
        n_buildings=writer.n_buildings,
        road_length_m=writer.road_length_m,
        bands=bands,
    )


def make_xy_image(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    *,
    crs: str | int | pyproj.CRS = "EPSG:32633",
    transform: Affine | None = None,
    dtype: Literal["uint16", "uint32", "int32", "float32", "float64"] | str = "uint16",
    bands: int = 2,
    nodata: float | None = None,
    nodata_border_px: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a coordinate-encoding raster: every pixel holds its own position.

    Band 0 is the global row index, band 1 the global column index, band 2
    (if any) ``row + col`` and bands 3 and up ``row * cols + col`` (the linear
    index), each wrapped to the range of ``dtype``. Tiling such a raster,
    running an identity model and stitching must give it back exactly, so any
    off-by-one or transform error shows (odc-geo's ``gen_test_image_xy``).

    Parameters
    ----------
    path
        Output GeoTIFF (tiled 512 x 512, deflate), written window by window.
    shape
        ``(rows, cols)``.
    crs, transform
        Georeferencing; ``transform`` defaults to :func:`scene_transform` at
        1 m per pixel (a non-zero origin inside the CRS's area of use).
    dtype
        Pixel type; rows and columns must fit in it.
    bands
        At least 1.
    nodata
        Nodata value written to the file's metadata (not to any pixel unless
        ``nodata_border_px`` is set).
    nodata_border_px
        Width of a border of ``nodata`` pixels around the raster.
    overwrite
        Replace an existing ``path``.

    Returns
    -------
    Path
        ``path``.
    """
    rows, cols = _norm_shape(tuple(shape))  # type: ignore[arg-type]
    if bands < 1:
        raise ConfigError(f"bands must be at least 1, got {bands}", bands=bands)
    dt = np.dtype(dtype)
    if dt.kind in "ui" and max(rows, cols) - 1 > np.iinfo(dt).max:
        raise ConfigError(
            f"shape {shape} does not fit dtype {dt.name}; pass dtype='uint32'", dtype=dt.name
        )
    if nodata_border_px and nodata is None:
        raise ConfigError("nodata_border_px needs a nodata value", nodata=nodata)
    crs_ = _norm_crs(crs)
    tr = transform if transform is not None else scene_transform(crs_, (rows, cols), 1.0)
    profile = _profile((rows, cols), bands, dt.name, _crs_string(crs_), tr)
    if nodata is not None:
        profile["nodata"] = nodata
    out = Path(path)
    try:
        with (
            atomic_output(out, overwrite=overwrite) as tmp,
            rasterio.open(tmp, "w", **profile) as dst,
        ):
            for r in range(0, rows, BLOCK_PX):
                h = min(BLOCK_PX, rows - r)
                rr = np.arange(r, r + h, dtype=np.int64)[:, None]
                cc = np.arange(cols, dtype=np.int64)[None, :]
                planes = [rr + 0 * cc, cc + 0 * rr, rr + cc] + [rr * cols + cc] * max(0, bands - 3)
                data = np.stack(planes[:bands])
                if dt.kind in "ui":
                    data = (data % (int(np.iinfo(dt).max) + 1)).astype(dt)
                else:
                    data = data.astype(dt)
                if nodata_border_px:
                    b = nodata_border_px
                    edge = (rr < b) | (rr >= rows - b) | (cc < b) | (cc >= cols - b)
                    data[:, edge] = nodata
                dst.write(data, window=Window(0, r, cols, h))
    except OSError as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"cannot write '{out}': {exc}", path=out) from exc
    return out
