"""Open a raster lazily, read boundless windows, and view it as xarray.

A :class:`Scene` holds the path and the metadata of a raster, never an open
handle, so it pickles cheaply to Dask workers. Each read opens the file through
a small per-thread cache of rasterio handles (GDAL handles must not be shared
between threads) and reads exactly one window.

Arrays are ``(band, y, x)``; shapes are ``(rows, cols)``; windows are in pixels
of the scene grid; bands are 1-based, as in GDAL and rasterio.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.windows
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import CRSError as RioCRSError
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import array_bounds
from rasterio.windows import Window

from terraseg.core.grid import PixelWindow
from terraseg.errors import BandError, CRSError, GridError, SceneReadError

if TYPE_CHECKING:
    import xarray

__all__ = [
    "Scene",
    "clear_handle_cache",
    "open_scene",
]

SomeCRS: TypeAlias = str | int | CRS
PadMode: TypeAlias = Literal["reflect", "nodata"]
NormalizeMethod: TypeAlias = Literal["meanstd", "minmax", "percentile", "scale"]
_FIX = "check the path or re-download/repair the file"


# --------------------------------------------------------------------------- handles


class _HandleCache:
    """Per-thread LRU of open rasterio datasets, keyed by ``(path, mtime_ns)``.

    Each thread gets its own handles (a GDAL dataset is not thread-safe), and a
    forked child never reuses its parent's handles.
    """

    def __init__(self, maxsize: int = 8) -> None:
        self.maxsize = maxsize
        self._local = threading.local()

    def _handles(self) -> OrderedDict[tuple[str, int | None], Any]:
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            self._local.pid = pid
            self._local.handles = OrderedDict()
        handles: OrderedDict[tuple[str, int | None], Any] = self._local.handles
        return handles

    def get(self, key: tuple[str, int | None]) -> Any:
        handles = self._handles()
        ds = handles.pop(key, None)
        if ds is None or ds.closed:
            ds = rasterio.open(key[0])
        handles[key] = ds
        while len(handles) > self.maxsize:
            _, old = handles.popitem(last=False)
            old.close()
        return ds

    def discard(self, key: tuple[str, int | None]) -> None:
        ds = self._handles().pop(key, None)
        if ds is not None:
            ds.close()

    def clear(self) -> None:
        handles = self._handles()
        while handles:
            handles.popitem()[1].close()


_HANDLES = _HandleCache()


def clear_handle_cache() -> None:
    """Close the raster handles that the calling thread keeps open."""
    _HANDLES.clear()


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class Scene:
    """A georeferenced raster, opened lazily. Create it with :func:`open_scene`.

    Attributes
    ----------
    path
        GDAL path or URL of the raster.
    crs
        Coordinate reference system (the assumed one when the file has none).
    transform
        Affine transform from pixel ``(col, row)`` to CRS coordinates; north-up.
    shape
        ``(rows, cols)`` in pixels.
    count
        Number of bands.
    dtypes
        NumPy dtype name of each band.
    nodata
        Nodata value shared by all bands, or ``None``.
    colorinterp
        GDAL colour interpretation name of each band (``"red"``, ``"alpha"``...).
    block_shape
        ``(rows, cols)`` of the internal blocks (tiles or strips) of band 1.
    band_descriptions
        Description of each band, or ``None``.
    overview_factors
        Decimation factors of the internal/external overviews of band 1.
    crs_assumed
        True when :attr:`crs` came from ``assume_crs`` rather than the file.
    mtime_ns
        Modification time of a local file at open (``None`` for URLs).
    gsd_xy_m
        Ground size of one pixel ``(x, y)`` in metres at the scene centre.
    """

    path: str
    crs: CRS
    transform: Affine
    shape: tuple[int, int]
    count: int
    dtypes: tuple[str, ...]
    nodata: float | None
    colorinterp: tuple[str, ...]
    block_shape: tuple[int, int]
    band_descriptions: tuple[str | None, ...]
    overview_factors: tuple[int, ...]
    crs_assumed: bool
    mtime_ns: int | None
    gsd_xy_m: tuple[float, float]

    @property
    def dtype(self) -> np.dtype[Any]:
        """A dtype that holds every band (the common one for mixed-dtype files)."""
        return np.result_type(*self.dtypes)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units (degrees for a geographic CRS)."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def gsd_m(self) -> float:
        """Ground sample distance in metres: square root of a pixel's ground area.

        Measured at the scene centre, so it is right for geographic CRSs (where
        :attr:`res` is in degrees) and for projections with scale distortion
        such as web Mercator; see :attr:`gsd_xy_m` for the two axes.
        """
        return math.sqrt(self.gsd_xy_m[0] * self.gsd_xy_m[1])

    @property
    def bounds(self) -> BoundingBox:
        """``(left, bottom, right, top)`` in CRS units."""
        return BoundingBox(*array_bounds(self.shape[0], self.shape[1], self.transform))

    @property
    def alpha_band(self) -> int | None:
        """1-based index of the alpha band, or ``None``."""
        return self.colorinterp.index("alpha") + 1 if "alpha" in self.colorinterp else None

    @property
    def has_alpha(self) -> bool:
        """Whether a band is marked as alpha (colour interpretation)."""
        return self.alpha_band is not None

    def __repr__(self) -> str:
        crs = self.crs.to_string() + (" (assumed)" if self.crs_assumed else "")
        return (
            f"Scene({self.path!r}, {self.shape[0]}x{self.shape[1]} px, {self.count} band(s) "
            f"{'/'.join(dict.fromkeys(self.dtypes))}, {crs}, gsd {self.gsd_m:.3g} m, "
            f"nodata={self.nodata}, alpha={self.alpha_band})"
        )

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("terraseg.Scene", self.path, self.mtime_ns, self.crs.to_wkt(), self.transform)

    # ----------------------------------------------------------------- reads

    def _key(self) -> tuple[str, int | None]:
        return (self.path, self.mtime_ns)

    def check_bands(self, bands: Sequence[int] | None) -> list[int]:
        """The 1-based band indexes ``bands`` selects (all bands for ``None``), validated."""
        if bands is None:
            return list(range(1, self.count + 1))
        selected = [int(b) for b in bands]
        if not selected:
            raise BandError(f"no bands selected from scene '{self.path}'", path=self.path)
        bad = [b for b in selected if not 1 <= b <= self.count]
        if bad:
            raise BandError(
                f"band(s) {bad} requested but scene '{self.path}' has {self.count} band(s); "
                f"bands are 1-based, choose from 1..{self.count}",
                path=self.path,
                bands=tuple(selected),
            )
        return selected


    def read_decimated(
        self, bands: Sequence[int] | None, out_shape: tuple[int, int], *, purpose: str = "a preview"
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
        """Read the whole extent decimated to ``out_shape`` ``(rows, cols)`` (nearest).

        GDAL serves the read from overviews where the file has them, so the cost
        depends on ``out_shape``, not on the scene size. Returns ``(band, y, x)``
        data for the distinct selected bands and its validity ``(y, x)`` (nodata,
        alpha and per-band masks applied). ``purpose`` names the read in errors.
        """
        unique = list(dict.fromkeys(self.check_bands(bands)))
        try:
            ds = _HANDLES.get(self._key())
            data = ds.read(
                indexes=unique, out_shape=(len(unique), *out_shape), resampling=Resampling.nearest
            )
            valid = _valid_mask(ds, unique, data, out_shape=out_shape)
        except (RasterioError, OSError) as exc:
            _HANDLES.discard(self._key())
            raise SceneReadError(
                f"cannot read scene '{self.path}' for {purpose}: {_reason(exc)}; {_FIX}",
                path=self.path,
            ) from exc
        return data, valid
    def read_window(
        self,
        window: PixelWindow,
        *,
        bands: Sequence[int] | None = None,
        pad: PadMode = "reflect",
    ) -> tuple[npt.NDArray[Any], Affine]:
        """Read a window that may run outside the raster on any side.

        Parameters
        ----------
        window
            Pixel window in the scene grid; offsets may be negative and the
            window may extend past the last row/column (boundless read).
        bands
            1-based scene bands in the order wanted; repeats are allowed
            (``[1, 1, 1]`` turns a panchromatic band into three). All by default.
        pad
            How pixels outside the raster are filled: ``"reflect"`` mirrors the
            raster about its edge (``np.pad(mode="reflect")``, repeated for pads
            longer than the raster); ``"nodata"`` uses the scene's nodata value
            (0 when it has none).

        Returns
        -------
        array
            ``(band, y, x)`` with ``y, x == window.shape``, in the scene dtype.
        transform
            Affine transform of the window (valid for negative offsets too).

        Raises
        ------
        BandError
            A band index is out of range.
        SceneReadError
            The file cannot be read (names the file and the window).
        """
        data, _, transform = self._read(window, bands, pad, with_mask=False)
        return data, transform

    def read_window_with_mask(
        self,
        window: PixelWindow,
        *,
        bands: Sequence[int] | None = None,
        pad: PadMode = "reflect",
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], Affine]:
        """Like :meth:`read_window`, plus a ``(y, x)`` validity mask.

        A pixel is invalid where ALL selected bands equal nodata (GDAL's
        dataset-mask rule), or any is NaN, where the alpha band or GDAL's dataset
        mask (``.msk``) is 0, and everywhere outside the raster (also where
        ``pad="reflect"`` filled it). Data and mask come from the same open handle and window.
        """
        data, valid, transform = self._read(window, bands, pad, with_mask=True)
        assert valid is not None  # internal invariant (with_mask=True)
        return data, valid, transform

    def _read(
        self,
        window: PixelWindow,
        bands: Sequence[int] | None,
        pad: PadMode,
        *,
        with_mask: bool,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None, Affine]:
        if window.height <= 0 or window.width <= 0:
            raise GridError(f"window {window} is empty; height and width must be positive")
        if pad not in ("reflect", "nodata"):
            raise ValueError(f"pad must be 'reflect' or 'nodata', not {pad!r}")
        selected = self.check_bands(bands)
        unique = list(dict.fromkeys(selected))
        take = [unique.index(b) for b in selected]
        rows_n, cols_n = self.shape
        out_t = rasterio.windows.transform(
            Window(window.col_off, window.row_off, window.width, window.height), self.transform
        )
        r = np.arange(window.row_off, window.row_stop)
        c = np.arange(window.col_off, window.col_stop)
        inside_r = (r >= 0) & (r < rows_n)
        inside_c = (c >= 0) & (c < cols_n)
        if pad == "reflect":
            src_r, src_c = _reflect_index(r, rows_n), _reflect_index(c, cols_n)
        else:
            src_r, src_c = r[inside_r], c[inside_c]
        try:
            if src_r.size and src_c.size:
                r0, r1 = int(src_r.min()), int(src_r.max()) + 1
                c0, c1 = int(src_c.min()), int(src_c.max()) + 1
                ds = _HANDLES.get(self._key())
                win = Window(c0, r0, c1 - c0, r1 - r0)
                block = ds.read(indexes=unique, window=win)
                valid = _valid_mask(ds, unique, block, window=win) if with_mask else None
            else:
                r0 = c0 = 0
                block = np.empty((len(unique), 0, 0), dtype=self.dtype)
                valid = np.empty((0, 0), dtype=bool)
        except (RasterioError, OSError) as exc:
            _HANDLES.discard(self._key())
            raise SceneReadError(
                f"cannot read window {window} of scene '{self.path}': {_reason(exc)}; {_FIX}",
                path=self.path,
                window=window,
            ) from exc
        block = block[take]
        if pad == "reflect":
            fully_inside = bool(inside_r.all() and inside_c.all())
            data = block if fully_inside else block[:, src_r - r0][:, :, src_c - c0]
            if valid is not None and not fully_inside:
                valid = valid[src_r - r0][:, src_c - c0] & inside_r[:, None] & inside_c[None, :]
            return data, valid, out_t
        fill = 0 if self.nodata is None else self.nodata
        data = np.full((len(selected), *window.shape), fill, dtype=block.dtype)
        full_valid = np.zeros(window.shape, dtype=bool) if valid is not None else None
        rs, cs = np.flatnonzero(inside_r), np.flatnonzero(inside_c)
        if rs.size and cs.size:
            ys, xs = slice(rs[0], rs[-1] + 1), slice(cs[0], cs[-1] + 1)
            data[:, ys, xs] = block
            if full_valid is not None and valid is not None:
                full_valid[ys, xs] = valid
        return data, full_valid, out_t

    def plot(
        self,
        *,
        bands: Sequence[int] | None = None,
        max_px: int = 1024,
        percentiles: tuple[float, float] = (2.0, 98.0),
        ax: Any = None,
    ) -> Any:
        """Quick-look plot (matplotlib) from a decimated read with a percentile stretch.

        Reads at most ``max_px`` pixels along the longer side (overviews when
        present), never the full-resolution scene. Returns the matplotlib axes,
        with the extent in CRS units.
        """
        from terraseg.io.quicklook import plot_scene

        return plot_scene(self, bands=bands, max_px=max_px, percentiles=percentiles, ax=ax)

    def to_xarray(self, chunks: Any = "blocks", *, target_px: int = 2048) -> xarray.DataArray:
        """Open the scene as a lazy ``xarray.DataArray`` ``(band, y, x)`` backed by dask.

        Parameters
        ----------
        chunks
            ``"blocks"`` (default): chunks that are whole multiples of the file's
            block shape, about ``target_px`` pixels a side, all bands together.
            Anything else is passed to :func:`rioxarray.open_rasterio`.
        target_px
            Approximate chunk side in pixels for ``chunks="blocks"``.

        Returns
        -------
        xarray.DataArray
            With ``x``/``y`` coordinates of pixel centres, ``spatial_ref`` and
            CRS attached (also when the CRS was assumed), nodata not masked.
        """
        import rioxarray

        if chunks == "blocks":
            chunks = {
                "band": -1,
                "y": _aligned(self.block_shape[0], self.shape[0], target_px),
                "x": _aligned(self.block_shape[1], self.shape[1], target_px),
            }
        da = cast(
            "xarray.DataArray", rioxarray.open_rasterio(self.path, chunks=chunks, masked=False)
        )
        if self.crs_assumed:
            da = da.rio.write_crs(self.crs)
        return da


def _aligned(block: int, size: int, target: int) -> int:
    """A multiple of ``block`` close to ``target``, at most ``size`` (at least 1 block)."""
    return min(size, max(1, target // max(block, 1)) * max(block, 1))


def _reflect_index(idx: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.intp]:
    """Map indices onto ``[0, n)`` by reflection about the edges (``np.pad`` "reflect").

    Examples
    --------
    >>> _reflect_index(np.arange(-3, 7), 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def _valid_mask(
    ds: Any,
    bands: Sequence[int],
    data: npt.NDArray[Any],
    *,
    window: Window | None = None,
    out_shape: tuple[int, int] | None = None,
) -> npt.NDArray[np.bool_]:
    """Validity ``(y, x)`` of ``data`` (read from ``bands`` of ``ds``, same window/shape)."""
    valid = np.ones(data.shape[1:], dtype=bool)
    kw: dict[str, Any] = {"window": window}
    if out_shape is not None:
        kw["out_shape"] = out_shape
        kw["resampling"] = Resampling.nearest
    flags = ds.mask_flag_enums
    per_dataset = [i + 1 for i, f in enumerate(flags) if MaskFlags.per_dataset in f]
    if per_dataset:  # alpha band or .msk: one mask for the whole dataset
        valid &= ds.read_masks(per_dataset[0], **kw) > 0
    nodata = ds.nodata
    if nodata is not None and not np.isnan(nodata) and len(bands):
        # GDAL's dataset-mask rule: a pixel is nodata only where ALL bands hold the
        # nodata value; a dark pixel with one band at 0 is still data.
        nd = np.asarray(nodata).astype(data.dtype)
        valid &= (data[: len(bands)] != nd).any(axis=0)
    for j, band in enumerate(bands):
        band_flags = flags[band - 1]
        if np.issubdtype(data.dtype, np.floating):
            valid &= ~np.isnan(data[j])
        if not ({MaskFlags.all_valid, MaskFlags.per_dataset, MaskFlags.nodata} & set(band_flags)):
            valid &= ds.read_masks(band, **kw) > 0  # a per-band mask
    return valid


# --------------------------------------------------------------------------- open


def _reason(exc: BaseException) -> str:
    """A short reason for a GDAL/rasterio failure."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if "See previous exception" in text and cause is not None:
        text = str(cause)
    low = text.lower()
    if "no such file" in low or "does not exist" in low:
        return "file not found"
    if "not recognized as" in low or "not a supported file format" in low:
        return "not a raster (GDAL does not recognise the format)"
    if "invalid dataset dimensions" in low:
        return "the raster has zero size"
    if "ireadblock failed" in low or "tiffread" in low or "read error" in low:
        return f"the file is truncated or corrupt ({text.strip().splitlines()[0]})"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _norm_crs(crs: SomeCRS) -> CRS:
    """Convert ``"EPSG:32633"``, ``32633``, WKT, PROJ or a CRS to a rasterio CRS."""
    if isinstance(crs, CRS):
        return crs
    import pyproj

    try:
        # pyproj first: it fails quietly, where GDAL would also print "ERROR 1: PROJ: ..."
        parsed = pyproj.CRS.from_user_input(crs)
        return CRS.from_wkt(parsed.to_wkt())
    except (pyproj.exceptions.CRSError, RioCRSError, ValueError, TypeError) as exc:
        raise CRSError(
            f"unknown CRS {crs!r}; pass an EPSG code such as EPSG:32633, or WKT/PROJ text",
            crs=crs,
        ) from exc


def _gsd_xy_m(crs: CRS, transform: Affine, shape: tuple[int, int]) -> tuple[float, float]:
    """Ground size of one pixel ``(x, y)`` in metres at the scene centre."""
    res_x, res_y = abs(transform.a), abs(transform.e)
    # Scene centre (the transform is north-up: no rotation terms).
    cx = transform.c + transform.a * shape[1] / 2.0
    cy = transform.f + transform.e * shape[0] / 2.0
    try:
        import pyproj

        pcrs = pyproj.CRS.from_wkt(crs.to_wkt())
        if pcrs.is_geographic:
            geod = pcrs.get_geod() or pyproj.Geod(ellps="WGS84")
            gx = geod.inv(cx - res_x / 2, cy, cx + res_x / 2, cy)[2]
            gy = geod.inv(cx, cy - res_y / 2, cx, cy + res_y / 2)[2]
            return (float(gx), float(gy))
        unit = float(pcrs.axis_info[0].unit_conversion_factor) if pcrs.axis_info else 1.0
        to_geo = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
        lon, lat = to_geo.transform(cx, cy)
        factors = pyproj.Proj(pcrs).get_factors(lon, lat)
        k, h = float(factors.parallel_scale), float(factors.meridional_scale)
        if not (math.isfinite(k) and math.isfinite(h) and k > 0 and h > 0):
            k = h = 1.0
        return (res_x * unit / k, res_y * unit / h)
    except Exception:  # noqa: BLE001 - engineering/odd CRSs: nominal size in CRS units
        factor = crs.linear_units_factor[1] if not crs.is_geographic else 111_320.0
        return (res_x * factor, res_y * factor)


def _is_local(path: str) -> bool:
    return not path.startswith("/vsi") and "://" not in path


def open_scene(path_or_url: str | os.PathLike[str], *, assume_crs: SomeCRS | None = None) -> Scene:
    """Open a raster lazily and validate it.

    Parameters
    ----------
    path_or_url
        A local path, a GDAL virtual path (``/vsicurl/...``, ``/vsis3/...``) or
        a URL that rasterio accepts.
    assume_crs
        CRS to use when the file has none (``"EPSG:32633"``, ``32633``, WKT).
        Ignored when the file has a CRS.

    Returns
    -------
    Scene
        Metadata only; no handle is kept in the object.

    Raises
    ------
    SceneReadError
        Missing file, not a raster, truncated/corrupt TIFF (a first and a last
        block are read as a sanity check), zero size, no geotransform, or a
        rotated/sheared (not north-up) geotransform.
    CRSError
        The file has no CRS and ``assume_crs`` is not given, or ``assume_crs``
        is unknown.
    """
    path = os.fspath(path_or_url)
    name = path
    assumed = _norm_crs(assume_crs) if assume_crs is not None else None
    if _is_local(path) and not os.path.exists(path):
        raise SceneReadError(f"cannot read scene '{name}': file not found; {_FIX}", path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if ds.width == 0 or ds.height == 0 or ds.count == 0:
                    raise SceneReadError(
                        f"cannot read scene '{name}': the raster has zero size "
                        f"({ds.height}x{ds.width} px, {ds.count} bands); {_FIX}",
                        path=path,
                    )
                _check_georeferencing(ds, name)
                _sanity_read(ds)
                meta = _scene_fields(ds)
    except SceneReadError:
        raise
    except (RasterioError, OSError) as exc:
        raise SceneReadError(
            f"cannot read scene '{name}': {_reason(exc)}; {_FIX}", path=path
        ) from exc
    crs = meta.pop("crs")
    if crs is None:
        if assumed is None:
            raise CRSError(
                f"scene '{name}' has no CRS; pass --assume-crs EPSG:32633 (its EPSG code) "
                "or repair the file",
                path=path,
            )
        crs = assumed
    mtime = os.stat(path).st_mtime_ns if _is_local(path) else None
    return Scene(
        path=path,
        crs=crs,
        crs_assumed=crs is assumed,
        mtime_ns=mtime,
        gsd_xy_m=_gsd_xy_m(crs, meta["transform"], meta["shape"]),
        **meta,
    )


def _check_georeferencing(ds: Any, name: str) -> None:
    t: Affine = ds.transform
    if t == Affine.identity():
        extra = " (it has GCPs: warp it with gdalwarp first)" if ds.gcps[0] else ""
        raise SceneReadError(
            f"scene '{name}' has no geotransform (not georeferenced){extra}; georeference it, "
            f"e.g. gdal_translate -a_srs EPSG:<code> -a_ullr <ulx> <uly> <lrx> <lry> {name} "
            "out.tif",
            path=name,
        )
    if t.b != 0 or t.d != 0:
        raise SceneReadError(
            f"scene '{name}' has a rotated or sheared geotransform {tuple(t)[:6]}; terraseg needs "
            f"a north-up raster: run gdalwarp {name} {name.rsplit('.', 1)[0]}_northup.tif",
            path=name,
        )


def _sanity_read(ds: Any) -> None:
    """Read the first and the last block of every band, so truncated files fail at open."""
    bh, bw = ds.block_shapes[0]
    row_last, col_last = ((ds.height - 1) // bh) * bh, ((ds.width - 1) // bw) * bw
    ds.read(window=Window(0, 0, min(bw, ds.width), min(bh, ds.height)))
    ds.read(window=Window(col_last, row_last, ds.width - col_last, ds.height - row_last))


def _scene_fields(ds: Any) -> dict[str, Any]:
    return {
        "crs": ds.crs if ds.crs else None,
        "transform": ds.transform,
        "shape": (int(ds.height), int(ds.width)),
        "count": int(ds.count),
        "dtypes": tuple(str(d) for d in ds.dtypes),
        "nodata": None if ds.nodata is None else float(ds.nodata),
        "colorinterp": tuple(ci.name for ci in ds.colorinterp),
        "block_shape": tuple(int(v) for v in ds.block_shapes[0]),
        "band_descriptions": tuple(ds.descriptions),
        "overview_factors": tuple(int(f) for f in ds.overviews(1)),
    }

