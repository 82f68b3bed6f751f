"""Boundless window reads as two pure steps: which source block to read, then how to pad it.

A window may run outside the raster on any side. :func:`plan_read` says which
rows and columns of the raster fill it (mirrored about the edge for
``pad="reflect"``, left out for ``pad="nodata"``) and the smallest block that
holds them; :func:`fill_window` turns that block, once read, into the padded
window. A :class:`~terraseg.io.scene.Scene` reads the block from a file, the
lazy xarray path (:mod:`terraseg.engine.lazy`) from a Dask array: both pad the
same way, so both give the same pixels.

Arrays are ``(band, y, x)``; windows are in pixels of the raster grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from terraseg.core.grid import PixelWindow

__all__ = ["PadMode", "ReadPlan", "fill_window", "plan_read", "reflect_index", "values_valid"]

PadMode: TypeAlias = Literal["reflect", "nodata"]


@dataclass(frozen=True, slots=True, eq=False)
class ReadPlan:
    """How a window of a ``shape`` raster is filled (see :func:`plan_read`).

    Attributes
    ----------
    window
        The requested window (may run outside the raster).
    source
        The block of the raster to read, or ``None`` when the window holds no
        raster pixel (``pad="nodata"`` entirely outside).
    src_r, src_c
        Raster row/column feeding each window row/column (``"reflect"``), or the
        rows/columns inside the raster (``"nodata"``).
    inside_r, inside_c
        Which window rows/columns lie inside the raster.
    """

    window: PixelWindow
    pad: PadMode
    source: PixelWindow | None
    src_r: npt.NDArray[np.intp]
    src_c: npt.NDArray[np.intp]
    inside_r: npt.NDArray[np.bool_]
    inside_c: npt.NDArray[np.bool_]


def reflect_index(idx: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.intp]:
    """Map indices onto ``[0, n)`` by reflection about the edges (``np.pad`` "reflect").

    Examples
    --------
    >>> reflect_index(np.arange(-3, 7), 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def plan_read(window: PixelWindow, shape: tuple[int, int], pad: PadMode) -> ReadPlan:
    """Which block of a ``shape`` ``(rows, cols)`` raster fills ``window``, padded by ``pad``.

    With ``pad="reflect"`` the block can reach further into the raster than the
    window itself, when the window hangs out by more than it overlaps.

    Examples
    --------
    >>> plan_read(PixelWindow(-2, 0, 4, 3), (10, 10), "reflect").source
    PixelWindow(row_off=0, col_off=0, height=3, width=3)
    >>> plan_read(PixelWindow(-2, 0, 4, 3), (10, 10), "nodata").source
    PixelWindow(row_off=0, col_off=0, height=2, width=3)
    """
    if pad not in ("reflect", "nodata"):
        raise ValueError(f"pad must be 'reflect' or 'nodata', not {pad!r}")
    rows_n, cols_n = shape
    r = np.arange(window.row_off, window.row_stop)
    c = np.arange(window.col_off, window.col_stop)
    inside_r = (r >= 0) & (r < rows_n)
    inside_c = (c >= 0) & (c < cols_n)
    if pad == "reflect":
        src_r, src_c = reflect_index(r, rows_n), reflect_index(c, cols_n)
    else:
        src_r, src_c = r[inside_r], c[inside_c]
    source = None
    if src_r.size and src_c.size:
        r0, c0 = int(src_r.min()), int(src_c.min())
        source = PixelWindow(r0, c0, int(src_r.max()) + 1 - r0, int(src_c.max()) + 1 - c0)
    return ReadPlan(window, pad, source, src_r, src_c, inside_r, inside_c)


def fill_window(
    plan: ReadPlan,
    block: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_] | None,
    *,
    fill: float = 0,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]:
    """The padded window from ``block`` (the raster over ``plan.source``) and its validity.

    ``fill`` is the value of pixels outside the raster for ``pad="nodata"``;
    with ``"reflect"`` they mirror the raster. Pixels outside the raster are
    invalid either way. ``valid`` may be ``None`` (no mask wanted).
    """
    window = plan.window
    if plan.source is None:
        block = np.empty((block.shape[0], 0, 0), dtype=block.dtype)
        r0 = c0 = 0
    else:
        r0, c0 = plan.source.row_off, plan.source.col_off
    if plan.pad == "reflect":
        fully_inside = bool(plan.inside_r.all() and plan.inside_c.all())
        if fully_inside:
            return block, valid
        data = block[:, plan.src_r - r0][:, :, plan.src_c - c0]
        if valid is not None:
            valid = (valid[plan.src_r - r0][:, plan.src_c - c0]
                     & plan.inside_r[:, None] & plan.inside_c[None, :])
        return data, valid
    data = np.full((block.shape[0], *window.shape), fill, dtype=block.dtype)
    full_valid = np.zeros(window.shape, dtype=bool) if valid is not None else None
    rs, cs = np.flatnonzero(plan.inside_r), np.flatnonzero(plan.inside_c)
    if rs.size and cs.size:
        ys, xs = slice(rs[0], rs[-1] + 1), slice(cs[0], cs[-1] + 1)
        data[:, ys, xs] = block
        if full_valid is not None and valid is not None:
            full_valid[ys, xs] = valid
    return data, full_valid


def values_valid(data: npt.NDArray[Any], nodata: float | None) -> npt.NDArray[np.bool_]:
    """Validity ``(y, x)`` from the values alone: not NaN, and not nodata in every band.

    GDAL's dataset-mask rule: a pixel is nodata only where ALL bands hold the
    nodata value (a dark pixel with one band at 0 is still data).

    Examples
    --------
    >>> values_valid(np.array([[[0, 5]], [[0, 0]]], np.uint8), 0).tolist()
    [[False, True]]
    """
    valid = np.ones(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    if nodata is not None and not np.isnan(nodata) and data.shape[0]:
        nd = np.asarray(nodata).astype(data.dtype)
        valid &= (data != nd).any(axis=0)
    return valid
