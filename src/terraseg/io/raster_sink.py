"""Raster outputs written window by window and finished as a Cloud-Optimized GeoTIFF.

:class:`RasterSink` never holds a full-scene array: windows go straight into a
tiled, sparse temporary GeoTIFF beside the output, compressed with ZSTD level 1
(:data:`INTERMEDIATE_COMPRESSION`: the copy to the COG decompresses every block
once more, and ZSTD-1 costs a fifth of DEFLATE here, which more than halves the
time to finish a class raster); on success GDAL builds overviews and copies it
to a COG with the final compression (both stream block by block), and the COG
is renamed to the output path. On failure nothing is left behind and a
previous output is untouched.

Colour table, band descriptions, nodata and class names (as GDAL metadata
tags) live inside the COG. GDAL *category names* cannot be stored in a TIFF
(GDAL keeps them in a ``.aux.xml`` sidecar), so when ``class_names`` is given a
small ``<output>.aux.xml`` with ``<CategoryNames>`` is written beside the COG.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from terraseg.core.grid import PixelWindow
from terraseg.errors import ConfigError, ExportError, GridError, TerrasegError
from terraseg.io.atomic import atomic_output, tmp_name

#: Creation options of the temporary tiled GeoTIFF that becomes the COG.
#: Measured on a 4096² class raster of the ``cheap`` model (2 cores): write +
#: overviews + COG copy took 0.68 s with a DEFLATE intermediate, 0.33 s with
#: ZSTD level 1 and 0.24 s uncompressed; ZSTD-1 keeps the temporary file small.
INTERMEDIATE_COMPRESSION: dict[str, Any] = {"compress": "zstd", "zstd_level": 1}
#: GDAL block cache while a scene is predicted and written. GDAL's default is 5 %
#: of RAM (1.2 GB on a 24 GiB machine); the output's dirty blocks filled it as the
#: scene grew, so peak RSS grew with scene size (2.6 GB at 32768²). Blocks are
#: streamed once, so a small cache costs nothing. ``GDAL_CACHEMAX`` in the
#: environment wins.
GDAL_CACHE_BYTES = 128 * 2**20


def bounded_gdal_cache() -> contextlib.AbstractContextManager[Any]:
    """A ``rasterio.Env`` capping GDAL's block cache (:data:`GDAL_CACHE_BYTES`).

    A no-op when the user set ``GDAL_CACHEMAX`` in the environment.
    """
    if "GDAL_CACHEMAX" in os.environ:
        return contextlib.nullcontext()
    env: contextlib.AbstractContextManager[Any] = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)
    return env


#: Compressions GDAL's COG driver accepts for the final file.
_COG_COMPRESSIONS = frozenset(
    {"NONE", "LZW", "JPEG", "DEFLATE", "ZSTD", "WEBP", "LERC", "LERC_DEFLATE", "LERC_ZSTD", "LZMA"}
)

__all__ = [
    "BUILDING_FILTER_TAGS", "CLASS_NAMES_TAG", "RasterSink", "read_building_filters",
    "read_class_names", "validate_cog",
]

#: Dataset and band-1 metadata tag holding ``{"value": "class name"}`` as JSON.
CLASS_NAMES_TAG = "TERRASEG_CLASS_NAMES"
BUILDING_FILTER_TAGS = {
    "min_score": "TERRASEG_BUILDING_MIN_SCORE",
    "min_area_m2": "TERRASEG_BUILDING_MIN_AREA_M2",
    "seed_p": "TERRASEG_BUILDING_SEED_P",
    "landscape": "TERRASEG_BUILDING_LANDSCAPE",
}
"""Tags of a class COG: its model's ``building_min_score``, ``building_min_area_m2``,
``building_seed_p`` and ``building_landscape`` (when not the defaults), read back by
the vectorizer."""
OverviewResampling: TypeAlias = Literal["nearest", "mode", "average", "bilinear", "cubic"]
_COLORMAP_DTYPES = ("uint8", "uint16")


def _grid_of(like: Any) -> tuple[CRS, Affine, tuple[int, int]]:
    """``(crs, transform, (rows, cols))`` of a Scene, a dataset or a rasterio-style profile."""
    if isinstance(like, Mapping):
        crs, transform = like.get("crs"), like.get("transform")
        rows, cols = like.get("shape") or (like.get("height", 0), like.get("width", 0))
    else:
        crs = getattr(like, "crs", None)
        transform = getattr(like, "transform", None)
        rows, cols = getattr(like, "shape", (0, 0))
    if crs is None or not isinstance(transform, Affine) or int(rows) <= 0 or int(cols) <= 0:
        raise ConfigError(
            f"'like' must give a crs, an affine transform and a non-empty shape; got {like!r}",
            like=like,
        )
    return CRS.from_user_input(crs), transform, (int(rows), int(cols))


class RasterSink:
    """Write a georeferenced raster window by window; finish it as a valid COG.

    Parameters
    ----------
    path
        Output GeoTIFF path.
    like
        The grid to write on: a :class:`~terraseg.io.scene.Scene`, an open
        rasterio dataset, or a mapping with ``crs``, ``transform`` and
        ``shape`` (rows, cols) or ``height``/``width``.
    count, dtype, nodata
        Bands, NumPy dtype name and nodata value of the output. Pixels never
        written read back as ``nodata``.
    overwrite
        Replace an existing output. Without it, an existing ``path`` raises
        :class:`~terraseg.errors.OutputExistsError` on enter, before anything
        is written.
    band_names
        One description per band (shown by QGIS and ``gdalinfo``).
    class_names
        ``{pixel value: name}`` of a class raster; stored as the JSON tag
        :data:`CLASS_NAMES_TAG` (dataset and band 1) and as GDAL category names
        in ``<path>.aux.xml``.
    tags
        More dataset tags (``{name: text}``), e.g. :data:`BUILDING_FILTER_TAGS`.
    colormap
        ``{pixel value: (r, g, b)}`` or ``(r, g, b, a)`` colour table for band 1
        (``uint8``/``uint16`` only); QGIS shows it as a paletted raster.
    resampling
        Overview resampling; ``"nearest"`` or ``"mode"`` for class rasters.
    compress
        GDAL compression (``"deflate"``, ``"lzw"``, ``"zstd"``...).
    level
        Compression level of the COG (GDAL's ``LEVEL``). ``None``: 5 for DEFLATE,
        else GDAL's default. On a 4096² class raster DEFLATE level 5 made the COG
        copy 2× faster than GDAL's default 6 (0.085 s against 0.175 s) for a
        10 % larger file.
    blocksize
        COG tile size in pixels.

    Examples
    --------
    >>> names = {0: "background", 1: "building"}
    >>> with RasterSink("out.tif", like=scene, class_names=names) as sink:  # doctest: +SKIP
    ...     for window, labels in results:
    ...         sink.write(window, labels)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        like: Any,
        count: int = 1,
        dtype: str | np.dtype[Any] = "uint8",
        nodata: float | None = 255,
        overwrite: bool = False,
        band_names: Sequence[str] | None = None,
        class_names: Mapping[int, str] | None = None,
        tags: Mapping[str, str] | None = None,
        colormap: Mapping[int, Sequence[int]] | None = None,
        resampling: OverviewResampling = "nearest",
        compress: str = "deflate",
        level: int | None = None,
        blocksize: int = 512,
    ) -> None:
        self.path = Path(path)
        self.crs, self.transform, self.shape = _grid_of(like)
        self.count = int(count)
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        self.overwrite = overwrite
        self.band_names = list(band_names) if band_names is not None else None
        self.class_names = {int(k): str(v) for k, v in (class_names or {}).items()}
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.colormap = {int(k): tuple(int(c) for c in v) for k, v in (colormap or {}).items()}
        self.resampling = resampling
        self.compress = compress
        self.level = 5 if level is None and compress.upper() == "DEFLATE" else level
        self.blocksize = int(blocksize)
        self._validate()
        self._stack: ExitStack | None = None
        self._ds: Any = None
        self._tmp: Path | None = None
        self._final_tmp: Path | None = None
        self._aux_tmp: Path | None = None
        self._lock = threading.Lock()

    def _validate(self) -> None:
        where = f"raster output '{self.path}'"
        if self.count < 1:
            raise ConfigError(f"{where}: count must be >= 1, not {self.count}")
        if self.band_names is not None and len(self.band_names) != self.count:
            raise ConfigError(
                f"{where}: {len(self.band_names)} band_names for {self.count} band(s)"
            )
        if self.colormap and self.dtype.name not in _COLORMAP_DTYPES:
            raise ConfigError(
                f"{where}: a colour table needs dtype uint8 or uint16, not {self.dtype}"
            )
        bad = [k for k, v in self.colormap.items() if len(v) not in (3, 4)]
        if bad:
            raise ConfigError(f"{where}: colormap entries {bad} must be (r, g, b) or (r, g, b, a)")
        if self.nodata is not None and not np.isnan(self.nodata):
            if np.asarray(self.nodata).astype(self.dtype) != self.nodata:
                raise ConfigError(f"{where}: nodata {self.nodata} does not fit dtype {self.dtype}")
        if self.blocksize % 16:
            raise ConfigError(f"{where}: blocksize must be a multiple of 16, not {self.blocksize}")
        try:
            Resampling[self.resampling]
        except KeyError:
            raise ConfigError(f"{where}: unknown resampling {self.resampling!r}") from None
        if self.compress.upper() not in _COG_COMPRESSIONS:
            raise ConfigError(
                f"{where}: unknown compression {self.compress!r}; use one of "
                f"{', '.join(sorted(c.lower() for c in _COG_COMPRESSIONS))}"
            )

    # --------------------------------------------------------------- protocol

    def __enter__(self) -> RasterSink:
        if self._stack is not None:
            raise RuntimeError(f"RasterSink for '{self.path}' is already open")
        stack = ExitStack()
        # Refuses an existing output and checks the folder before anything is written.
        self._final_tmp = stack.enter_context(atomic_output(self.path, overwrite=self.overwrite))
        self._stack = stack
        self._finished = False
        self._tmp = tmp_name(self.path)
        rows, cols = self.shape
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": rows,
            "width": cols,
            "count": self.count,
            "dtype": self.dtype.name,
            "nodata": self.nodata,
            "crs": self.crs,
            "transform": self.transform,
            "tiled": True,
            "blockxsize": self.blocksize,
            "blockysize": self.blocksize,
            **INTERMEDIATE_COMPRESSION,
            "BIGTIFF": "IF_SAFER",
            "SPARSE_OK": "TRUE",
        }
        try:
            self._ds = rasterio.open(self._tmp, "w", **profile)
            self._describe(self._ds)
        except (RasterioError, OSError) as exc:
            self._abort()
            raise ExportError(
                f"cannot create raster output '{self.path}': {exc}; choose a writable "
                "location and a valid dtype/compression",
                path=self.path,
            ) from exc
        return self

    def _describe(self, ds: Any) -> None:
        """Set colour table, band descriptions and class-name tags.

        Done before any pixel is written: GTiff cannot switch to a palette later.
        """
        if self.colormap:
            ds.write_colormap(1, {k: (*v, 255)[:4] for k, v in self.colormap.items()})
        for i, name in enumerate(self.band_names or [], start=1):
            ds.set_band_description(i, name)
        if self.class_names:
            payload = json.dumps({str(k): v for k, v in sorted(self.class_names.items())})
            ds.update_tags(**{CLASS_NAMES_TAG: payload})
            ds.update_tags(1, **{CLASS_NAMES_TAG: payload})
        if self.tags:
            ds.update_tags(**self.tags)

    def write(self, window: PixelWindow, array: npt.ArrayLike) -> None:
        """Write ``array`` ``(band, y, x)`` (or ``(y, x)`` for one band) at ``window``.

        Windows may come in any order; the parts of a window that run outside
        the raster are cropped. Values are cast to the output dtype when no value
        changes: integers that fit (an int64 label array into uint8), floats into
        a float output; floats into an integer output raise :class:`ExportError`.
        """
        if self._ds is None:
            raise RuntimeError(f"RasterSink for '{self.path}' is not open; use it in a with-block")
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] != self.count or arr.shape[1:] != window.shape:
            raise GridError(
                f"array of shape {arr.shape} does not fit window {window} with {self.count} "
                f"band(s); expected {(self.count, *window.shape)}",
                window=window,
            )
        self._check_cast(arr, window)
        rows, cols = self.shape
        r0, r1 = max(window.row_off, 0), min(window.row_stop, rows)
        c0, c1 = max(window.col_off, 0), min(window.col_stop, cols)
        if r0 >= r1 or c0 >= c1:
            raise GridError(
                f"window {window} lies outside the {rows}x{cols} raster '{self.path}'",
                window=window,
            )
        part = arr[
            :, r0 - window.row_off : r1 - window.row_off, c0 - window.col_off : c1 - window.col_off
        ]
        with self._lock:
            try:
                self._ds.write(
                    part.astype(self.dtype, copy=False), window=Window(c0, r0, c1 - c0, r1 - r0)
                )
            except (RasterioError, OSError) as exc:
                raise ExportError(
                    f"cannot write window {window} to '{self.path}': {exc}; check free disk space",
                    path=self.path,
                    window=window,
                ) from exc

    def _check_cast(self, arr: npt.NDArray[Any], window: PixelWindow) -> None:
        """Refuse casts that would change values: float to int, or ints out of range."""
        src, dst = arr.dtype, self.dtype
        if not (np.issubdtype(src, np.integer) or np.issubdtype(src, np.bool_)):
            if np.issubdtype(dst, np.floating) and np.issubdtype(src, np.floating):
                return
            raise ExportError(
                f"cannot write {src} values into {dst} output '{self.path}'; "
                "convert the array first (e.g. scale probabilities to 0-255)",
                path=self.path,
            )
        if np.issubdtype(dst, np.integer) and not np.can_cast(src, dst) and arr.size:
            info = np.iinfo(dst)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise ExportError(
                    f"values {lo}..{hi} at window {window} do not fit the {dst} output "
                    f"'{self.path}'; clip them or choose a wider dtype",
                    path=self.path,
                    window=window,
                )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._abort(exc_type, exc, tb)
            return
        self.finish()
        self._publish()

    def finish(self) -> None:
        """Finish the COG under its temporary name (overviews, COG layout), not yet renamed.

        Lets a caller finish several outputs, then publish them together on
        exit. Called by ``__exit__`` when not called before; idempotent.
        """
        if self._finished:
            return
        try:
            self._finish()
            self._finished = True
        except BaseException as err:
            self._abort(type(err), err, err.__traceback__)
            if isinstance(err, TerrasegError) or not isinstance(err, Exception):
                raise
            raise ExportError(
                f"cannot finish raster output '{self.path}': {err}; check free disk space",
                path=self.path,
            ) from err

    # --------------------------------------------------------------- finishing

    def _finish(self) -> None:
        """Decorate the intermediate, build overviews, copy it to the COG temp file."""
        ds, tmp, final_tmp = self._ds, self._tmp, self._final_tmp
        assert ds is not None and tmp is not None and final_tmp is not None
        resampling = Resampling[self.resampling]
        factors = _overview_factors(self.shape, self.blocksize)
        if factors:
            ds.build_overviews(factors, resampling)
            ds.update_tags(ns="rio_overview", resampling=self.resampling)
        ds.close()
        self._ds = None
        level = {} if self.level is None else {"LEVEL": self.level}
        rasterio.shutil.copy(
            str(tmp),
            str(final_tmp),
            driver="COG",
            **level,
            COMPRESS=self.compress.upper(),
            BLOCKSIZE=self.blocksize,
            OVERVIEW_RESAMPLING=self.resampling.upper(),
            BIGTIFF="IF_SAFER",
            # one thread where the process is told so (OMP_NUM_THREADS: a Dask worker's task)
            NUM_THREADS=os.environ.get("OMP_NUM_THREADS") or "ALL_CPUS",
        )
        _remove(tmp)
        if self.class_names:
            self._aux_tmp = tmp_name(_aux_path(self.path))
            self._aux_tmp.write_bytes(_category_names_xml(self.class_names))

    def _publish(self) -> None:
        """Rename the COG into place (atomic), then its category-names sidecar."""
        stack, self._stack = self._stack, None
        aux_tmp, self._aux_tmp = self._aux_tmp, None
        assert stack is not None
        try:
            stack.__exit__(None, None, None)  # atomic rename of the COG
        except BaseException:
            if aux_tmp is not None:
                _remove(aux_tmp)
            raise
        aux = _aux_path(self.path)
        try:
            if aux_tmp is not None:
                os.replace(aux_tmp, aux)
            elif aux.exists():  # a previous output's sidecar no longer describes this file
                _remove(aux)
        except OSError as exc:
            raise ExportError(
                f"wrote '{self.path}' but not its category names '{aux}': {exc}; "
                "check the folder's permissions",
                path=aux,
            ) from exc

    def _abort(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Close and remove every temporary file; the atomic context removes its own."""
        if self._ds is not None:
            with contextlib.suppress(Exception):
                self._ds.close()
            self._ds = None
        for tmp in (self._tmp, self._final_tmp):
            if tmp is not None:
                _remove(tmp)
        if self._aux_tmp is not None:
            _remove(self._aux_tmp)
            self._aux_tmp = None
        stack, self._stack = self._stack, None
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.__exit__(exc_type or RuntimeError, exc or RuntimeError("aborted"), tb)


def _overview_factors(shape: tuple[int, int], blocksize: int) -> list[int]:
    """Powers of two until the coarsest overview fits in one block.

    Examples
    --------
    >>> _overview_factors((900, 1100), 512)
    [2, 4]
    >>> _overview_factors((300, 500), 512)
    []
    """
    factors, f = [], 2
    while max(shape) / (f // 2) > blocksize:
        factors.append(f)
        f *= 2
    return factors


def _aux_path(path: Path) -> Path:
    return path.with_name(path.name + ".aux.xml")


def _remove(path: Path) -> None:
    """Remove ``path`` and a PAM sidecar GDAL may have written for it."""
    for p in (path, _aux_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _category_names_xml(class_names: Mapping[int, str]) -> bytes:
    """A GDAL PAM document giving band 1 category names (index = pixel value)."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    cats = ET.SubElement(band, "CategoryNames")
    for value in range(max(class_names) + 1):
        ET.SubElement(cats, "Category").text = class_names.get(value, "")
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8")
    return xml + b"\n"


def read_class_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Class names written by :class:`RasterSink` (``{}`` when there are none)."""
    with rasterio.open(path) as ds:
        raw = ds.tags().get(CLASS_NAMES_TAG)
    return {int(k): str(v) for k, v in json.loads(raw).items()} if raw else {}


def read_building_filters(path: str | os.PathLike[str]) -> dict[str, float | str]:
    """The :data:`BUILDING_FILTER_TAGS` a class COG has (``{"min_score": 0.85,
    "landscape": "distance"}``...): numbers, and the landscape's name."""
    with rasterio.open(path) as ds:
        tags = ds.tags()
    return {k: tags[tag] if k == "landscape" else float(tags[tag])
            for k, tag in BUILDING_FILTER_TAGS.items() if tags.get(tag)}


def validate_cog(path: str | os.PathLike[str]) -> list[str]:
    """Problems that keep ``path`` from being a valid Cloud-Optimized GeoTIFF (empty = valid).

    Uses ``rio_cogeo.cogeo.cog_validate`` when rio-cogeo is installed, else a
    basic check: a tiled GeoTIFF that GDAL reports as ``LAYOUT=COG``, with
    overviews when it is larger than 512 pixels.
    """
    try:
        from rio_cogeo.cogeo import cog_validate
    except ImportError:
        return _basic_cog_problems(path)
    try:
        _, errors, _ = cog_validate(os.fspath(path), quiet=True)
    except Exception as exc:  # noqa: BLE001 - report, don't raise
        return [f"cannot validate '{path}': {exc}"]
    return [str(e) for e in errors]


def _basic_cog_problems(path: str | os.PathLike[str]) -> list[str]:
    try:
        with rasterio.open(path) as ds:
            problems = []
            if ds.driver != "GTiff":
                problems.append(f"driver is {ds.driver}, not GTiff")
            bh, bw = ds.block_shapes[0]
            if not (bh == bw or bw != ds.width):
                problems.append(f"not tiled (blocks of {bh}x{bw})")
            if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
                problems.append("GDAL does not report LAYOUT=COG (IFDs/overviews not in COG order)")
            if max(ds.height, ds.width) > 512 and not ds.overviews(1):
                problems.append("no overviews although larger than 512 px")
            return problems
    except (RasterioError, OSError) as exc:
        return [f"cannot open '{path}': {exc}"]
