"""Vectorised rasterization of many small simple shapes (numpy only).

Rectangles, discs, capsules and swept rectangles are tested at pixel centres
in *global* pixel coordinates, so the result for a pixel does not depend on
the window it is rendered in. Used for the image only (cars, paint, trees and
their shadows), where thousands of tiny shapes would cost far more through
GDAL's per-geometry overhead.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "candidates",
    "rect_inside",
    "rect_coverage",
    "capsule_inside",
    "sweep_inside",
    "rect_bounds",
    "last_wins",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def candidates(
    x0: F64, y0: F64, x1: F64, y1: F64, row0: int, col0: int, height: int, width: int
) -> tuple[I64, I64, I64]:
    """Pixels whose centres lie in each box, clipped to a window.

    Boxes are ``[x0, x1] x [y0, y1]`` in global pixel coordinates (``x = col``).
    Returns ``(shape_index, row, col)`` with rows and cols relative to the window.
    """
    ca = np.maximum(np.ceil(x0 - 0.5).astype(np.int64), col0)
    cb = np.minimum(np.floor(x1 - 0.5).astype(np.int64), col0 + width - 1)
    ra = np.maximum(np.ceil(y0 - 0.5).astype(np.int64), row0)
    rb = np.minimum(np.floor(y1 - 0.5).astype(np.int64), row0 + height - 1)
    nw = np.maximum(cb - ca + 1, 0)
    nh = np.maximum(rb - ra + 1, 0)
    counts = nw * nh
    total = int(counts.sum())
    if total == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    k = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    local = np.arange(total, dtype=np.int64) - starts[k]
    nwk = nw[k]
    rows = ra[k] + local // nwk - row0
    cols = ca[k] + local % nwk - col0
    return k, rows, cols


def rect_bounds(frames: F64, pad: float = 0.0) -> tuple[F64, F64, F64, F64]:
    """Bounding boxes of rectangles ``(cx, cy, ax, ay, half_len, half_wid)``."""
    cx, cy, ax, ay, hl, hw = (frames[:, k] for k in range(6))
    ex = np.abs(ax) * hl + np.abs(ay) * hw + pad
    ey = np.abs(ay) * hl + np.abs(ax) * hw + pad
    return cx - ex, cy - ey, cx + ex, cy + ey


def _local(frames: F64, k: I64, px: F64, py: F64) -> tuple[F64, F64]:
    f = frames[k]
    dx, dy = px - f[:, 0], py - f[:, 1]
    return dx * f[:, 2] + dy * f[:, 3], -dx * f[:, 3] + dy * f[:, 2]


def rect_inside(frames: F64, k: I64, px: F64, py: F64) -> NDArray[np.bool_]:
    """Whether points lie inside rectangle ``k`` (pixel centres)."""
    along, across = _local(frames, k, px, py)
    inside: NDArray[np.bool_] = (np.abs(along) <= frames[k, 4]) & (np.abs(across) <= frames[k, 5])
    return inside


def rect_coverage(frames: F64, k: I64, px: F64, py: F64) -> NDArray[np.float32]:
    """Approximate fraction of a unit pixel covered by rectangle ``k`` (anti-aliased)."""
    along, across = _local(frames, k, px, py)
    ca = np.clip(frames[k, 4] + 0.5 - np.abs(along), 0.0, 1.0)
    cw = np.clip(frames[k, 5] + 0.5 - np.abs(across), 0.0, 1.0)
    cw = np.minimum(cw, 2.0 * frames[k, 5])  # thinner than a pixel: partial coverage
    cover: NDArray[np.float32] = (ca * cw).astype(np.float32)
    return cover


def capsule_inside(
    ax: F64, ay: F64, bx: F64, by: F64, r: F64, k: I64, px: F64, py: F64
) -> NDArray[np.bool_]:
    """Points within ``r`` of segment ``a``-``b``."""
    sx, sy = bx[k] - ax[k], by[k] - ay[k]
    dx, dy = px - ax[k], py - ay[k]
    t = np.clip((dx * sx + dy * sy) / np.maximum(sx * sx + sy * sy, 1e-12), 0.0, 1.0)
    ex, ey = dx - t * sx, dy - t * sy
    return ex * ex + ey * ey <= r[k] * r[k]


def sweep_inside(frames: F64, sx: F64, sy: F64, k: I64, px: F64, py: F64) -> NDArray[np.bool_]:
    """Points inside rectangle ``k`` swept along ``(sx, sy)`` (a box's shadow)."""
    along, across = _local(frames, k, px, py)
    f = frames[k]
    sa = sx[k] * f[:, 2] + sy[k] * f[:, 3]
    sb = -sx[k] * f[:, 3] + sy[k] * f[:, 2]
    lo = np.zeros_like(along)
    hi = np.ones_like(along)
    for p, s, half in ((along, sa, f[:, 4]), (across, sb, f[:, 5])):
        # need |p - t s| <= half for some t in [lo, hi]
        small = np.abs(s) < 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (p - half) / s
            t2 = (p + half) / s
        tmin = np.where(small, -np.inf, np.minimum(t1, t2))
        tmax = np.where(small, np.where(np.abs(p) <= half, np.inf, -np.inf), np.maximum(t1, t2))
        lo = np.maximum(lo, tmin)
        hi = np.minimum(hi, tmax)
    return lo <= hi


def last_wins(k: I64, rows: I64, cols: I64, shape: tuple[int, int]) -> NDArray[np.int64]:
    """Raster of ``1 + max(k)`` over the shapes covering each pixel (0 = none).

    Shapes later in the (global) order are drawn over earlier ones.
    """
    out = np.zeros(shape[0] * shape[1], dtype=np.int64)
    if len(k):
        np.maximum.at(out, rows * shape[1] + cols, k + 1)
    return out.reshape(shape)
