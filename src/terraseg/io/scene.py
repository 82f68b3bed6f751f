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
import warnings
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
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import array_bounds
from rasterio.windows import Window

from terraseg.core.grid import PixelWindow
from terraseg.errors import BandError, CRSError, GridError, SceneReadError
from terraseg.io.boundless import PadMode, fill_window, plan_read
from terraseg.io.georef import SomeCRS, check_georeferencing, gsd_xy_m, norm_crs
from terraseg.io.handles import (
    FILE_FIX,
    HANDLES,
    clear_handle_cache,
    failure_reason,
    valid_mask,
)
from terraseg.io.remote import (
    RemoteLayoutWarning,
    is_remote,
    remote_env,
    remote_failure,
    source_stem,
    striped_read_factor,
    to_gdal_path,
)

if TYPE_CHECKING:
    import xarray
    from matplotlib.axes import Axes
    from rasterio.io import DatasetReader


__all__ = [
    "PadMode",
    "Scene",
    "SomeCRS",
    "clear_handle_cache",
    "open_scene",
]

RioChunks: TypeAlias = int | tuple[int, ...] | dict[str, Any] | None
"""Dask chunks as :func:`rioxarray.open_rasterio` takes them."""
XarrayChunks: TypeAlias = Literal["blocks"] | RioChunks
"""``chunks`` of :meth:`Scene.to_xarray`: ``"blocks"`` or what rioxarray accepts."""

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

    def __dask_tokenize__(self) -> tuple[object, ...]:
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
            with remote_env(self.path):
                ds = HANDLES.get(self._key())
                data = ds.read(
                    indexes=unique, out_shape=(len(unique), *out_shape),
                    resampling=Resampling.nearest,
                )
                valid = valid_mask(ds, unique, data, out_shape=out_shape)
        except (RasterioError, OSError) as exc:
            HANDLES.discard(self._key())
            raise SceneReadError(
                f"cannot read scene '{self.path}' for {purpose}: {_reason(self.path, exc)}",
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
        plan = plan_read(window, self.shape, pad)
        selected = self.check_bands(bands)
        unique = list(dict.fromkeys(selected))
        take = [unique.index(b) for b in selected]
        out_t = rasterio.windows.transform(
            Window(window.col_off, window.row_off, window.width, window.height), self.transform
        )
        src = plan.source
        try:
            if src is not None:
                win = Window(src.col_off, src.row_off, src.width, src.height)
                with remote_env(self.path):
                    ds = HANDLES.get(self._key())
                    block = ds.read(indexes=unique, window=win)
                    valid = valid_mask(ds, unique, block, window=win) if with_mask else None
            else:
                block = np.empty((len(unique), 0, 0), dtype=self.dtype)
                valid = np.empty((0, 0), dtype=bool) if with_mask else None
        except (RasterioError, OSError) as exc:
            HANDLES.discard(self._key())
            raise SceneReadError(
                f"cannot read window {window} of scene '{self.path}': "
                f"{_reason(self.path, exc)}",
                path=self.path,
                window=window,
            ) from exc
        fill = 0 if self.nodata is None else self.nodata
        data, valid = fill_window(plan, block[take], valid, fill=fill)
        return data, valid, out_t

    def plot(
        self,
        *,
        bands: Sequence[int] | None = None,
        max_px: int = 1024,
        percentiles: tuple[float, float] = (2.0, 98.0),
        ax: Axes | None = None,
    ) -> Axes:
        """Quick-look plot (matplotlib) from a decimated read with a percentile stretch.

        Reads at most ``max_px`` pixels along the longer side (overviews when
        present), never the full-resolution scene. Returns the matplotlib axes,
        with the extent in CRS units.
        """
        from terraseg.io.quicklook import plot_scene

        return cast(
            "Axes", plot_scene(self, bands=bands, max_px=max_px, percentiles=percentiles, ax=ax)
        )

    def to_xarray(
        self, chunks: XarrayChunks = "blocks", *, target_px: int = 2048
    ) -> xarray.DataArray:
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

        Notes
        -----
        rioxarray reads the blocks later, outside :func:`~terraseg.io.remote.remote_env`:
        for an S3-compatible server set GDAL's own ``AWS_S3_ENDPOINT`` (and
        ``AWS_HTTPS``/``AWS_VIRTUAL_HOSTING``) in the environment, or compute inside
        ``rasterio.Env(**gdal_options(scene.path))``.
        """
        import rioxarray

        if chunks == "blocks":
            chunks = {
                "band": -1,
                "y": _aligned(self.block_shape[0], self.shape[0], target_px),
                "x": _aligned(self.block_shape[1], self.shape[1], target_px),
            }
        with remote_env(self.path):
            da = cast(
                "xarray.DataArray",
                rioxarray.open_rasterio(to_gdal_path(self.path), chunks=chunks, masked=False),
            )
        if self.crs_assumed:
            da = da.rio.write_crs(self.crs)
        return da


def _aligned(block: int, size: int, target: int) -> int:
    """A multiple of ``block`` close to ``target``, at most ``size`` (at least 1 block)."""
    return min(size, max(1, target // max(block, 1)) * max(block, 1))


# --------------------------------------------------------------------------- open


def _is_local(path: str) -> bool:
    return not path.startswith("/vsi") and "://" not in path


def _reason(path: str, exc: BaseException) -> str:
    """``"reason; fix"`` for a failed open or read of ``path`` (local or remote)."""
    if is_remote(path):
        return remote_failure(path, exc)
    return f"{failure_reason(exc)}; {FILE_FIX}"


def open_scene(
    path_or_url: str | os.PathLike[str],
    *,
    assume_crs: SomeCRS | None = None,
    assume_transform: Affine | None = None,
) -> Scene:
    """Open a raster lazily and validate it.

    Parameters
    ----------
    path_or_url
        A local path; an ``http(s)://``, ``s3://`` or ``gs://`` URL, read with
        range requests (see :mod:`terraseg.io.remote` for the settings and the
        AWS environment variables); or a GDAL virtual path (``/vsicurl/...``).
    assume_crs
        CRS to use when the file has none (``"EPSG:32633"``, ``32633``, WKT).
        Ignored when the file has a CRS.
    assume_transform
        Geotransform to use when the file has none (e.g. a STAC item's
        ``proj:transform``). Ignored when the file has one.

    Returns
    -------
    Scene
        Metadata only; no handle is kept in the object. A remote scene keeps its
        URL as :attr:`Scene.path` and pickles like a local one.

    Warns
    -----
    RemoteLayoutWarning
        A remote raster stored in whole-width strips, not tiles: the warning
        gives how many times its size a chunked run downloads.

    Raises
    ------
    SceneReadError
        Missing file, not a raster, truncated/corrupt TIFF (a first and a last
        block are read as a sanity check), zero size, no geotransform, or a
        rotated/sheared (not north-up) geotransform; for a URL also HTTP 403/404
        and a server without range requests.
    CRSError
        The file has no CRS and ``assume_crs`` is not given, or ``assume_crs``
        is unknown.
    """
    path = os.fspath(path_or_url)
    name = path
    assumed = norm_crs(assume_crs) if assume_crs is not None else None
    if _is_local(path) and not os.path.exists(path):
        raise SceneReadError(f"cannot read scene '{name}': file not found; {FILE_FIX}", path=path)
    try:
        with warnings.catch_warnings(), remote_env(path):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(to_gdal_path(path)) as ds:
                meta = _checked_fields(ds, name, assume_transform)
    except SceneReadError:
        raise
    except (RasterioError, OSError) as exc:
        raise SceneReadError(f"cannot read scene '{name}': {_reason(path, exc)}",
                             path=path) from exc
    if is_remote(path):
        _warn_remote_layout(path, meta)
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
        gsd_xy_m=gsd_xy_m(crs, meta["transform"], meta["shape"]),
        **meta,
    )


def _checked_fields(
    ds: DatasetReader, name: str, assume_transform: Affine | None
) -> dict[str, Any]:
    """The Scene fields of an open dataset, after checking its size and georeferencing."""
    if ds.width == 0 or ds.height == 0 or ds.count == 0:
        raise SceneReadError(
            f"cannot read scene '{name}': the raster has zero size "
            f"({ds.height}x{ds.width} px, {ds.count} bands); {FILE_FIX}",
            path=name,
        )
    meta = _scene_fields(ds)
    if assume_transform is not None and ds.transform == Affine.identity() and not ds.gcps[0]:
        meta["transform"] = assume_transform
        if assume_transform.b != 0 or assume_transform.d != 0:
            raise SceneReadError(
                f"scene '{name}': the assumed geotransform {tuple(assume_transform)[:6]} is "
                "rotated or sheared; terraseg needs a north-up raster", path=name,
            )
    else:
        check_georeferencing(ds, name)
    bh, bw = meta["block_shape"]
    if not is_remote(name) or bw < ds.width:
        _sanity_read(ds)  # a remote strip can be the whole file: not read twice at open
    return meta


def _warn_remote_layout(path: str, meta: dict[str, Any]) -> None:
    """Warn when a remote raster's strips make chunked reads download it many times over."""
    chunk_px = 2048
    factor = striped_read_factor(meta["shape"], meta["block_shape"], chunk_px=chunk_px)
    if factor < 1.5:
        return
    rows, cols = meta["shape"]
    nbytes = rows * cols * sum(np.dtype(d).itemsize for d in meta["dtypes"])
    warnings.warn(
        f"scene '{path}' is not cloud-optimized: it is stored in {meta['block_shape'][0]}-row "
        f"strips across its full {cols}-px width, so every window read downloads whole rows; "
        f"predicting it in {chunk_px}-px chunks downloads about {factor:.0f}x its "
        f"{nbytes / 2**20:.0f} MB of pixels ({factor * nbytes / 2**20:.0f} MB); convert it "
        f"once with `gdal_translate -of COG <in> {source_stem(path)}_cog.tif`, or download it",
        RemoteLayoutWarning,
        stacklevel=3,
    )


def _sanity_read(ds: DatasetReader) -> None:
    """Read the first and the last block of every band, so truncated files fail at open."""
    bh, bw = ds.block_shapes[0]
    row_last, col_last = ((ds.height - 1) // bh) * bh, ((ds.width - 1) // bw) * bw
    ds.read(window=Window(0, 0, min(bw, ds.width), min(bh, ds.height)))
    ds.read(window=Window(col_last, row_last, ds.width - col_last, ds.height - row_last))


def _scene_fields(ds: DatasetReader) -> dict[str, Any]:
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

