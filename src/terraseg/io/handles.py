"""Open raster handles: a per-thread cache, validity masks and short failure reasons.

A :class:`~terraseg.io.scene.Scene` keeps no handle; each read takes one from
:data:`HANDLES`, a small per-thread LRU of rasterio datasets (GDAL handles must
not be shared between threads), computes the pixels' validity from the same
handle (:func:`valid_mask`) and, when GDAL fails, names the cause in a few
words (:func:`failure_reason`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window

from terraseg.io.remote import to_gdal_path

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

__all__ = [
    "FILE_FIX",
    "HANDLES",
    "HandleCache",
    "HandleKey",
    "clear_handle_cache",
    "failure_reason",
    "valid_mask",
]

HandleKey: TypeAlias = tuple[str, int | None]
"""A cached handle's ``(path, mtime_ns)``: a rewritten file gets a new handle."""

FILE_FIX = "check the path or re-download/repair the file"
"""The advice that ends every message about an unreadable file."""


class HandleCache:
    """Per-thread LRU of open rasterio datasets, keyed by ``(path, mtime_ns)``.

    Each thread gets its own handles (a GDAL dataset is not thread-safe), and a
    forked child never reuses its parent's handles.
    """

    def __init__(self, maxsize: int = 8) -> None:
        self.maxsize = maxsize
        self._local = threading.local()

    def _handles(self) -> OrderedDict[HandleKey, DatasetReader]:
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            self._local.pid = pid
            self._local.handles = OrderedDict()
        handles: OrderedDict[HandleKey, DatasetReader] = self._local.handles
        return handles

    def get(self, key: HandleKey) -> DatasetReader:
        """The calling thread's open dataset for ``key``, opened (and cached) if needed."""
        handles = self._handles()
        ds = handles.pop(key, None)
        if ds is None or ds.closed:
            ds = rasterio.open(to_gdal_path(key[0]))  # URLs through /vsicurl/, /vsis3/
        handles[key] = ds
        while len(handles) > self.maxsize:
            _, old = handles.popitem(last=False)
            old.close()
        return ds

    def discard(self, key: HandleKey) -> None:
        """Close and forget the calling thread's handle for ``key`` (after a failed read)."""
        ds = self._handles().pop(key, None)
        if ds is not None:
            ds.close()

    def clear(self) -> None:
        """Close every handle of the calling thread."""
        handles = self._handles()
        while handles:
            handles.popitem()[1].close()


HANDLES = HandleCache()
"""The process-wide handle cache every :class:`~terraseg.io.scene.Scene` reads through."""


def clear_handle_cache() -> None:
    """Close the raster handles that the calling thread keeps open."""
    HANDLES.clear()


def valid_mask(
    ds: DatasetReader,
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


def failure_reason(exc: BaseException) -> str:
    """A short reason for a GDAL/rasterio failure.

    Examples
    --------
    >>> failure_reason(OSError("x.tif: No such file or directory"))
    'file not found'
    """
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
